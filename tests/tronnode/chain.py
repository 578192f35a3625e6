"""Builds TRON blocks and transaction infos in the HTTP API's exact JSON shapes (`visible=false`).

Everything hashed is real: `raw_data_hex` is the protobuf of `Transaction.raw`, the txID is its
sha256, `txTrieRoot` is the merkle root over whole transactions (results included) and the block id is
recomputed from the canonical header bytes, exactly as a java-tron node computes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from depositwatch.chains import tron_wire as wire

TRANSFER_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
SYMBOL = "95d89b41"  # symbol()
DECIMALS = "313ce567"  # decimals()
_TYPE_NAMES = {1: "TransferContract", 2: "TransferAssetContract", 31: "TriggerSmartContract"}


def account(n: int) -> bytes:
    """A deterministic 20-byte account for tests."""
    return hashlib.sha256(b"tron-account-%d" % n).digest()[:20]


def node_hex(key: bytes) -> str:
    """The node's hex form: `41` + 20 bytes."""
    return "41" + key.hex()


@dataclass
class Tx:
    """One transaction to put into a block, with its result and (optionally) its info."""

    contract_type: int
    parameter: dict[str, Any]  # JSON form, visible=false
    result: str = "SUCCESS"
    logs: list[dict[str, Any]] = field(default_factory=list)
    internal: list[dict[str, Any]] = field(default_factory=list)
    receipt_result: str | None = None
    nonce: int = 0

    def raw(self) -> bytes:
        value = self.parameter
        if self.contract_type == 1:
            inner = (
                wire.encode_bytes(1, bytes.fromhex(value["owner_address"]))
                + wire.encode_bytes(2, bytes.fromhex(value["to_address"]))
                + wire.encode_int(3, value["amount"])
            )
        elif self.contract_type == 2:
            inner = (
                wire.encode_bytes(1, bytes.fromhex(value["asset_name"]))
                + wire.encode_bytes(2, bytes.fromhex(value["owner_address"]))
                + wire.encode_bytes(3, bytes.fromhex(value["to_address"]))
                + wire.encode_int(4, value["amount"])
            )
        else:
            inner = (
                wire.encode_bytes(1, bytes.fromhex(value["owner_address"]))
                + wire.encode_bytes(2, bytes.fromhex(value["contract_address"]))
                + wire.encode_int(3, value.get("call_value", 0))
                + wire.encode_bytes(4, bytes.fromhex(value.get("data", "")))
            )
        type_url = f"type.googleapis.com/protocol.{_TYPE_NAMES[self.contract_type]}".encode()
        any_message = wire.encode_bytes(1, type_url) + wire.encode_bytes(2, inner)
        contract = wire.encode_int(1, self.contract_type) + wire.encode_bytes(2, any_message)
        return (
            wire.encode_bytes(1, b"\x00\x01")
            + wire.encode_bytes(4, self.nonce.to_bytes(8, "big"))
            + wire.encode_int(8, 1_700_000_060_000)
            + wire.encode_repeated(11, [contract])
            + wire.encode_int(14, 1_700_000_000_000 + self.nonce)
        )


def trx(sender: bytes, recipient: bytes, sun: int, **extra: Any) -> Tx:
    """A TRX transfer."""
    value = {"owner_address": node_hex(sender), "to_address": node_hex(recipient), "amount": sun}
    return Tx(1, value, **extra)


def trc10(sender: bytes, recipient: bytes, token_id: str, amount: int, **extra: Any) -> Tx:
    """A TRC-10 transfer; `asset_name` is the token id's text, hex-encoded as the API writes it."""
    value = {
        "owner_address": node_hex(sender),
        "to_address": node_hex(recipient),
        "asset_name": token_id.encode().hex(),
        "amount": amount,
    }
    return Tx(2, value, **extra)


def trc20(
    sender: bytes, recipient: bytes, contract: bytes, amount: int, *, emitter: bytes | None = None, **extra: Any
) -> Tx:
    """A TRC-20 `transfer(address,uint256)` call and the Transfer log its contract (or `emitter`) emits."""
    data = "a9059cbb" + ("41" + recipient.hex()).rjust(64, "0") + f"{amount:064x}"
    value = {"owner_address": node_hex(sender), "contract_address": node_hex(contract), "data": data}
    log = {
        "address": (emitter or contract).hex(),
        "topics": [TRANSFER_TOPIC, sender.hex().rjust(64, "0"), recipient.hex().rjust(64, "0")],
        "data": f"{amount:064x}",
    }
    extra.setdefault("receipt_result", "SUCCESS")
    return Tx(31, value, logs=[log], **extra)


def transaction_json(tx: Tx) -> dict[str, Any]:
    """A transaction as `/wallet/getblockbynum` shows it (visible=false)."""
    raw = tx.raw()
    type_name = _TYPE_NAMES[tx.contract_type]
    return {
        "ret": [{"contractRet": tx.result}],
        "signature": [hashlib.sha256(raw + b"sig").hexdigest() * 2 + "1b"],
        "txID": wire.tx_id(raw).hex(),
        "raw_data": {
            "contract": [
                {
                    "parameter": {"value": tx.parameter, "type_url": f"type.googleapis.com/protocol.{type_name}"},
                    "type": type_name,
                }
            ],
        },
        "raw_data_hex": raw.hex(),
    }


def block_json(height: int, parent: str, txs: list[Tx], *, timestamp: int = 1_700_000_061_000) -> dict[str, Any]:
    """A block with real identities: txIDs, the trie root over whole transactions, the block id."""
    items = [transaction_json(tx) for tx in txs]
    leaves = []
    for item in items:
        raw = bytes.fromhex(item["raw_data_hex"])
        results = [wire.encode_result(wire.ContractResult[r["contractRet"]]) for r in item["ret"]]
        signatures = [bytes.fromhex(s) for s in item["signature"]]
        leaves.append(hashlib.sha256(wire.transaction_bytes(raw, signatures, results)).digest())
    witness = "41" + account(999_999).hex()
    header = wire.HeaderFields(
        timestamp=timestamp,
        tx_trie_root=wire.merkle_root(leaves),
        parent_hash=bytes.fromhex(parent),
        number=height,
        witness_id=0,
        witness_address=bytes.fromhex(witness),
        version=31,
        account_state_root=b"",
    )
    raw_header = {
        "number": height,
        "txTrieRoot": header.tx_trie_root.hex(),
        "witness_address": witness,
        "parentHash": parent,
        "version": 31,
        "timestamp": timestamp,
    }
    body: dict[str, Any] = {
        "blockID": wire.block_id(height, wire.header_raw_bytes(header)).hex(),
        "block_header": {"raw_data": raw_header, "witness_signature": "00" * 65},
    }
    if items:
        body["transactions"] = items
    return body


def infos_json(height: int, txs: list[Tx], *, timestamp: int = 1_700_000_061_000) -> list[dict[str, Any]]:
    """`/wallet/gettransactioninfobyblocknum` for the block: an info per transaction that has one."""
    infos = []
    for tx in txs:
        info: dict[str, Any] = {
            "id": wire.tx_id(tx.raw()).hex(),
            "blockNumber": height,
            "blockTimeStamp": timestamp,
            "receipt": {"net_usage": 268},
        }
        if tx.receipt_result is not None:
            info["receipt"]["result"] = tx.receipt_result
        if tx.logs:
            info["log"] = tx.logs
        if tx.internal:
            info["internal_transactions"] = tx.internal
        infos.append(info)
    return infos


def _visible(block: dict[str, Any]) -> dict[str, Any]:
    """The `visible=true` form: accounts in base58 (`T...`) instead of `41`-hex; signed bytes unchanged."""
    from depositwatch.addresses.tron import tron_address

    def b58(text: str) -> str:
        return tron_address(bytes.fromhex(text)[1:])

    out = json.loads(json.dumps(block))
    header = out["block_header"]["raw_data"]
    header["witness_address"] = b58(header["witness_address"])
    for tx in out.get("transactions", []):
        value = tx["raw_data"]["contract"][0]["parameter"]["value"]
        for name in ("owner_address", "to_address", "contract_address"):
            if name in value:
                value[name] = b58(value[name])
        if "asset_name" in value:
            value["asset_name"] = bytes.fromhex(value["asset_name"]).decode()
    return out


@dataclass
class Contract:
    """What a deployed contract answers to constant calls, by 4-byte selector (hex).

    `returns`: the return data; `reverts`: the data of a REVERT; `fails`: a VM exception's message (an
    invalid opcode, energy run out). A selector in none of them reverts with no data, as a contract
    without that function and with no fallback does.
    """

    returns: dict[str, bytes] = field(default_factory=dict)
    reverts: dict[str, bytes] = field(default_factory=dict)
    fails: dict[str, str] = field(default_factory=dict)


def abi_string(text: str) -> bytes:
    """An ABI-encoded `string` return value."""
    data = text.encode()
    padded = data + bytes(-len(data) % 32)
    return (32).to_bytes(32, "big") + len(data).to_bytes(32, "big") + padded


def token_contract(symbol: str, decimals: int) -> Contract:
    """A TRC-20 whose `symbol()` and `decimals()` answer as a standard token's do."""
    return Contract(returns={SYMBOL: abi_string(symbol), DECIMALS: decimals.to_bytes(32, "big")})


@dataclass
class _Stored:
    block: dict[str, Any]
    infos: list[dict[str, Any]]


class TronChain:
    """A TRON chain in memory: blocks with real identities, reorgs, and the node's internal-tx setting."""

    SOLIDIFY_DEPTH = 19

    def __init__(
        self, first_height: int = 1000, *, save_internal: bool = True, start_time: int = 1_700_000_000_000
    ) -> None:
        self.first_height = first_height
        self.save_internal = save_internal
        self.start_time = start_time
        self.blocks: list[_Stored] = []
        self.contracts: dict[bytes, Contract] = {}  # deployed contracts by their 20 bytes
        self._nonce = 0
        # block 0 identifies the network (its id differs per chain id, as mainnet's and Nile's do)
        self.genesis = _Stored(block_json(0, "00" * 32, [], timestamp=start_time - 10**9), [])
        self.mine()

    @property
    def tip(self) -> int:
        return self.first_height + len(self.blocks) - 1

    def next_nonce(self) -> int:
        self._nonce += 1
        return self._nonce

    def mine(self, txs: list[Tx] | None = None, count: int = 1) -> list[dict[str, Any]]:
        """Append `count` blocks; the first carries `txs`. Returns the new blocks."""
        made = []
        for n in range(count):
            height = self.first_height + len(self.blocks)
            parent = self.blocks[-1].block["blockID"] if self.blocks else f"{height - 1:016x}" + "ab" * 24
            body = list(txs or []) if n == 0 else []
            stamp = self.start_time + 3000 * (height - self.first_height)
            block = block_json(height, parent, body, timestamp=stamp)
            self.blocks.append(_Stored(block, infos_json(height, body, timestamp=stamp)))
            made.append(block)
        return made

    def reorg(self, depth: int, txs: list[Tx] | None = None, count: int | None = None) -> None:
        """Drop the last `depth` blocks and mine `count` (default depth + 1) new ones, the first with `txs`."""
        if depth >= len(self.blocks):
            raise ValueError("cannot reorg the first block")
        del self.blocks[-depth:]
        self.start_time += 1  # new timestamps, so the new branch has new ids even when empty
        self.mine(txs, count if count is not None else depth + 1)

    def stored(self, height: int) -> _Stored | None:
        if height == 0:
            return self.genesis
        index = height - self.first_height
        return self.blocks[index] if 0 <= index < len(self.blocks) else None

    def block(self, height: int, *, visible: bool = False) -> dict[str, Any]:
        """`getblockbynum`: the block, or `{}` above the tip (java-tron's answer)."""
        stored = self.stored(height)
        if stored is None:
            return {}
        return _visible(stored.block) if visible else stored.block

    def infos(self, height: int) -> list[dict[str, Any]]:
        """`gettransactioninfobyblocknum`; internal transactions only when the node saves them."""
        stored = self.stored(height)
        if stored is None:
            return []
        if self.save_internal:
            return stored.infos
        return [{k: v for k, v in info.items() if k != "internal_transactions"} for info in stored.infos]
