"""TRON node answers to `Block` records, checked against the signed bytes before anything is matched.

Input: a `/wallet/getblockbynum` answer (`visible=false`: accounts as `41`-hex) and the matching
`/wallet/gettransactioninfobyblocknum` list. Every identity recomputes (block id, txIDs, the
transaction trie root, which covers each transaction's result codes), the contract fields are read from
the signed `raw_data_hex` and must agree with the JSON beside them, and a transaction info must name a
transaction of this block. A mismatch is a `BadNodeAnswer`, never a match.

Transfers produced:
- TRX: `TransferContract` (sun, 6 decimals); TRC-10: `TransferAssetContract` (`asset_name` is the token
  id; configured ids get their symbol and decimals, others are reported under their id with 0 decimals);
- TRC-20: `Transfer(address,address,uint256)` logs with exactly three topics, emitted by a configured
  token contract (anyone can emit the event; only the token's own contract counts);
- internal TRX: `internal_transactions` (`callValueInfo` without `tokenId`, not `rejected`), present only
  where the node saves them.
All of them only from transactions that succeeded. `index` is None for TRX and TRC-10, the log's index
within its transaction for TRC-20, and for internal TRX the internal transaction's position n written as
-(n + 1), as EVM internal transfers are, so that it never shares a match id with a log of the same
transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from depositwatch.addresses.common import AddressError
from depositwatch.addresses.tron import parse_tron_address, tron_address
from depositwatch.chains import tron_wire as wire
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.models import Asset, Block, Transfer

TRX = Asset(symbol="TRX", decimals=6)
TRANSFER_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
_INT64_MAX = 2**63 - 1
_UINT256_MAX = 2**256 - 1
_BASE58_LENGTH = 34
Watch = Container[bytes] | None  # the keys to build transfers for; None: every transfer
_MAX_INTERNAL = 10_000  # per transaction: far above what the energy limit allows


@dataclass(frozen=True, slots=True)
class TronTokens:
    """What a TRON chain is configured to watch besides TRX."""

    trc20: Mapping[bytes, Asset] = field(default_factory=dict)  # 20-byte contract -> asset
    trc10: Mapping[str, Asset] = field(default_factory=dict)  # token id -> asset


def _transfer(
    asset: Asset, amount: int, txid: str, index: int | None, sender: bytes, recipient: bytes, watch: Watch
) -> Transfer | None:
    """A transfer, built only when it touches a watched key (address text is the costly part)."""
    if watch is not None and sender not in watch and recipient not in watch:
        return None
    return Transfer(
        asset=asset,
        amount=amount,
        txid=txid,
        index=index,
        to_key=recipient,
        from_key=sender,
        from_address=tron_address(sender),
        to_address=tron_address(recipient),
    )


def _fail(height: int, what: str) -> BadNodeAnswer:
    return BadNodeAnswer(f"TRON block {height}: {what}")


def _dict(value: Any, height: int, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(height, f"{what} is not an object")
    return value


def _list(value: Any, height: int, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(height, f"{what} is not a list")
    return value


def _int(value: Any, height: int, what: str, maximum: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise _fail(height, f"{what} is not an integer in 0..{maximum}")
    return value


def _hex(value: Any, height: int, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise _fail(height, f"{what} is not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _fail(height, f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise _fail(height, f"{what} is {len(raw)} bytes, expected {size}")
    return raw


def _account(value: Any, height: int, what: str) -> bytes:
    """A 21-byte node account (`41` + 20 bytes) to its 20 bytes."""
    raw = _hex(value, height, what, 21)
    if raw[0] != 0x41:
        raise _fail(height, f"{what} has version byte 0x{raw[0]:02x}, expected 0x41")
    return raw[1:]


def _node_account(value: Any, height: int, what: str) -> bytes:
    """An account as either API form gives it: `41`-hex (visible=false) or base58 (visible=true), as 21 bytes."""
    if isinstance(value, str) and len(value) == _BASE58_LENGTH and value.startswith("T"):
        try:
            return b"\x41" + parse_tron_address(value).key
        except AddressError:
            raise _fail(height, f"{what} is not a TRON address") from None
    return _hex(value, height, what)


def _signed_account(raw: bytes, height: int, what: str) -> bytes:
    if len(raw) != 21 or raw[0] != 0x41:
        raise _fail(height, f"{what} in the signed bytes is not a 21-byte 0x41 account")
    return raw[1:]


@dataclass(frozen=True, slots=True)
class _Tx:
    txid: str
    contract: wire.SignedContract
    success: bool


def decode_header(block: Any, height: int | None = None) -> tuple[int, str, str, int]:
    """`(number, block id, parent id, time in seconds)` of a block answer, its id recomputed.

    With `height`, the answer must be that block.
    """
    where = -1 if height is None else height
    block = _dict(block, where, "the block")
    header = _dict(_dict(block.get("block_header"), where, "block_header").get("raw_data"), where, "header")
    fields = _header_fields(header, where)
    if height is not None and fields.number != height:
        raise _fail(height, f"the node answered block {fields.number}")
    block_id = wire.block_id(fields.number, wire.header_raw_bytes(fields)).hex()
    if block.get("blockID") != block_id:
        raise _fail(fields.number, "blockID does not recompute from the header")
    return fields.number, block_id, fields.parent_hash.hex(), fields.timestamp // 1000


def _header_fields(header: dict[str, Any], height: int) -> wire.HeaderFields:
    return wire.HeaderFields(
        timestamp=_int(header.get("timestamp", 0), height, "timestamp"),
        tx_trie_root=_hex(header.get("txTrieRoot", ""), height, "txTrieRoot", 32),
        parent_hash=_hex(header.get("parentHash", ""), height, "parentHash", 32),
        number=_int(header.get("number", 0), height, "number"),
        witness_id=_int(header.get("witness_id", 0), height, "witness_id"),
        witness_address=_node_account(header.get("witness_address", ""), height, "witness_address"),
        version=_int(header.get("version", 0), height, "version", 2**31 - 1),
        account_state_root=_hex(header.get("accountStateRoot", ""), height, "accountStateRoot"),
    )


def needs_infos(block: Any) -> bool:
    """Whether a block has smart-contract calls, the only transactions with logs or internal transfers.

    TRX and TRC-10 transfers either succeed or are not in a block at all, and their result code is
    in the trie root: blocks without contract calls need no `gettransactioninfobyblocknum` request.
    """
    if not isinstance(block, dict):
        return True
    for tx in block.get("transactions") or ():
        contracts = tx.get("raw_data", {}).get("contract") if isinstance(tx, dict) else None
        if not isinstance(contracts, list) or any(
            not isinstance(c, dict) or c.get("type") not in ("TransferContract", "TransferAssetContract")
            for c in contracts
        ):
            return True
    return False


def decode_block(
    block: Any, infos: Any, height: int, tokens: TronTokens, *, internal: bool = True, watch: Watch = None
) -> Block:
    """Check and decode one block; `height` is the number that was asked for.

    Every identity is checked whatever `watch` says; with `watch`, only transfers from or to one of its
    keys are built.
    """
    block = _dict(block, height, "the block")
    header = _dict(_dict(block.get("block_header"), height, "block_header").get("raw_data"), height, "header")
    number, block_id, parent, time = decode_header(block, height)
    txs, leaves = _transactions(_list(block.get("transactions"), height, "transactions"), height)
    if wire.merkle_root(leaves) != bytes.fromhex(header["txTrieRoot"]):
        raise _fail(height, "txTrieRoot does not recompute from the transactions")
    transfers = _transfers(txs, _infos(infos, height, txs), height, tokens, internal=internal, watch=watch)
    return Block(
        height=number,
        hash=block_id,
        parent_hash=parent,
        time=time,
        transfers=tuple(transfers),
        tx_count=len(txs),
    )


# The usual `ret` entry, `{"contractRet": NAME}` with no fee, encoded once per name.
_RESULT_BYTES = {name: wire.encode_result(code) for name, code in wire.ContractResult.__members__.items()}
_SUCCESSFUL = frozenset({wire.ContractResult.SUCCESS, wire.ContractResult.DEFAULT})


def _results(tx: dict[str, Any], height: int, where: str) -> tuple[list[bytes], str | None]:
    """The encoded `Transaction.Result` messages and the first result's name."""
    encoded: list[bytes] = []
    first: str | None = None
    for ret in _list(tx.get("ret"), height, f"{where}.ret"):
        ret = _dict(ret, height, f"{where}.ret")
        name = ret.get("contractRet", "DEFAULT")
        plain = _RESULT_BYTES.get(name) if isinstance(name, str) else None
        if plain is None:
            raise _fail(height, f"{where}: unknown contractRet {str(name)[:40]!r}")
        if first is None:
            first = name
        fee = ret.get("fee", 0)
        encoded.append(
            plain if not fee else wire.encode_result(wire.ContractResult[name], _int(fee, height, f"{where}.ret.fee"))
        )
    return encoded, first


def _transactions(items: list[Any], height: int) -> tuple[dict[str, _Tx], list[bytes]]:
    txs: dict[str, _Tx] = {}
    leaves: list[bytes] = []
    sha256 = hashlib.sha256
    for position, item in enumerate(items):
        where = f"transaction {position}"
        tx = _dict(item, height, where)
        raw = _hex(tx.get("raw_data_hex"), height, f"{where}.raw_data_hex")
        txid = sha256(raw).hexdigest()
        if tx.get("txID") != txid:
            raise _fail(height, f"{where}: txID is not sha256(raw_data_hex)")
        signatures = [_hex(s, height, f"{where}.signature") for s in _list(tx.get("signature"), height, where)]
        results, first = _results(tx, height, where)
        leaves.append(sha256(wire.transaction_bytes(raw, signatures, results)).digest())
        try:
            contract = wire.decode_contract(raw)
        except wire.WireError as exc:
            raise _fail(height, f"{where}: {exc}") from None
        _agrees(tx, contract, height, where)
        code = wire.ContractResult[first] if first is not None else None
        if contract.type == wire.ContractType.TRIGGER_SMART_CONTRACT:
            success = code is wire.ContractResult.SUCCESS
        else:
            success = code is None or code in _SUCCESSFUL
        txs[txid] = _Tx(txid=txid, contract=contract, success=success)
    return txs, leaves


_JSON_FIELDS = {
    "owner_address": "owner",
    "to_address": "to",
    "contract_address": "contract",
    "amount": "amount",
    "call_value": "amount",
    "data": "data",
    "asset_name": "asset",
}


def _agrees(tx: dict[str, Any], contract: wire.SignedContract, height: int, where: str) -> None:
    """The JSON's contract must say what the signed bytes say, for every field the watcher reads."""
    raw_data = _dict(tx.get("raw_data"), height, f"{where}.raw_data")
    entries = _list(raw_data.get("contract"), height, f"{where}.raw_data.contract")
    if len(entries) != 1:
        raise _fail(height, f"{where}: {len(entries)} contracts in the JSON, expected 1")
    parameter = _dict(_dict(entries[0], height, where).get("parameter"), height, f"{where}.parameter")
    value = _dict(parameter.get("value"), height, f"{where}.parameter.value")
    for name, shown in value.items():
        attribute = _JSON_FIELDS.get(name)
        if attribute is None:
            continue
        signed = getattr(contract, attribute)
        if isinstance(signed, int):
            same = shown == signed
        elif signed is None or not isinstance(shown, str):
            same = False
        elif shown == signed.hex():  # visible=false: the node's hex, lowercase
            same = True
        elif name.endswith("_address"):  # visible=true: base58
            same = _node_account(shown, height, f"{where}.{name}") == signed
        else:  # hex in another case, or a TRC-10 token id as text (visible=true)
            same = shown.lower() == signed.hex() or shown == signed.decode("latin-1")
        if not same:
            raise _fail(height, f"{where}: {name} in the JSON differs from the signed bytes")


def _infos(infos: Any, height: int, txs: Mapping[str, _Tx]) -> dict[str, dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for position, item in enumerate(_list(infos, height, "transaction infos")):
        info = _dict(item, height, f"transaction info {position}")
        txid = info.get("id")
        if not isinstance(txid, str) or txid not in txs:
            raise _fail(height, f"transaction info {position} names a transaction that is not in this block")
        if _int(info.get("blockNumber", height), height, f"transaction info {position}.blockNumber") != height:
            raise _fail(height, f"transaction info {position} names another block")
        if txid in by_id:
            raise _fail(height, f"transaction info {position} repeats a transaction")
        by_id[txid] = info
    return by_id


def _receipt_ok(info: dict[str, Any] | None, height: int, txid: str) -> bool:
    """No info, or no `result` (plain TRX transfers), or `SUCCESS`."""
    if info is None:
        return True
    receipt = info.get("receipt")
    if receipt is None:
        return True
    result = _dict(receipt, height, f"{txid} receipt").get("result")
    return result is None or result == "SUCCESS"


def _transfers(
    txs: Mapping[str, _Tx],
    infos: Mapping[str, dict[str, Any]],
    height: int,
    tokens: TronTokens,
    *,
    internal: bool,
    watch: Watch,
) -> list[Transfer]:
    transfers: list[Transfer] = []
    for txid, tx in txs.items():
        info = infos.get(txid)
        if not tx.success or not _receipt_ok(info, height, txid):
            continue
        contract = tx.contract
        if contract.type in (wire.ContractType.TRANSFER, wire.ContractType.TRANSFER_ASSET) and contract.amount:
            native = _native(contract, txid, height, tokens, watch)
            if native is not None:
                transfers.append(native)
        if info is None:
            continue
        transfers.extend(info_transfers(info, height, tokens, internal=internal, watch=watch))
    return transfers


def info_transfers(
    info: Any, height: int, tokens: TronTokens, *, internal: bool = True, watch: Watch = None
) -> list[Transfer]:
    """The TRC-20 and internal TRX transfers of one transaction info (its transaction succeeded)."""
    info = _dict(info, height, "transaction info")
    txid = info.get("id")
    if not isinstance(txid, str) or len(txid) != 64:
        raise _fail(height, "transaction info without a 32-byte id")
    transfers = _token_logs(info, txid, height, tokens, watch)
    if internal:
        transfers.extend(_internal(info, txid, height, watch))
    return transfers


def _native(contract: wire.SignedContract, txid: str, height: int, tokens: TronTokens, watch: Watch) -> Transfer | None:
    owner = _signed_account(contract.owner, height, f"{txid} owner_address")
    to = _signed_account(contract.to or b"", height, f"{txid} to_address")
    asset = TRX
    if contract.type == wire.ContractType.TRANSFER_ASSET:
        token_id = (contract.asset or b"").decode("ascii", "replace")
        asset = tokens.trc10.get(token_id) or Asset(symbol=token_id, decimals=0)
    return _transfer(asset, contract.amount, txid, None, owner, to, watch)


def _topic_account(topic: Any, height: int, where: str) -> bytes:
    word = _hex(topic, height, where, 32)
    if any(word[:12]):
        raise _fail(height, f"{where}: the upper 12 bytes of an address topic are not zero")
    return word[12:]


def _token_logs(info: dict[str, Any], txid: str, height: int, tokens: TronTokens, watch: Watch) -> list[Transfer]:
    transfers: list[Transfer] = []
    for position, item in enumerate(_list(info.get("log"), height, f"{txid} log")):
        where = f"{txid} log {position}"
        entry = _dict(item, height, where)
        topics = _list(entry.get("topics"), height, f"{where}.topics")
        if len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
            continue  # not an ERC-20-shaped Transfer (ERC-721 has four topics)
        asset = tokens.trc20.get(_hex(entry.get("address"), height, f"{where}.address", 20))
        if asset is None:
            continue  # anyone can emit a Transfer event: only the configured contract's count
        sender = _topic_account(topics[1], height, f"{where}.topics[1]")
        recipient = _topic_account(topics[2], height, f"{where}.topics[2]")
        amount = int.from_bytes(_hex(entry.get("data"), height, f"{where}.data", 32), "big")
        transfer = _transfer(asset, amount, txid, position, sender, recipient, watch)
        if transfer is not None:
            transfers.append(transfer)
    return transfers


def _internal(info: dict[str, Any], txid: str, height: int, watch: Watch) -> list[Transfer]:
    transfers: list[Transfer] = []
    items = _list(info.get("internal_transactions"), height, f"{txid} internal_transactions")
    if len(items) > _MAX_INTERNAL:
        raise _fail(height, f"{txid}: {len(items)} internal transactions")
    for position, item in enumerate(items):
        where = f"{txid} internal transaction {position}"
        entry = _dict(item, height, where)
        if entry.get("rejected") is True:
            continue
        amount = 0
        for value in _list(entry.get("callValueInfo"), height, f"{where}.callValueInfo"):
            value = _dict(value, height, f"{where}.callValueInfo")
            if "tokenId" not in value:
                amount += _int(value.get("callValue", 0), height, f"{where}.callValue")
        if not amount:
            continue
        sender = _account(entry.get("caller_address"), height, f"{where}.caller_address")
        recipient = _account(entry.get("transferTo_address"), height, f"{where}.transferTo_address")
        transfer = _transfer(TRX, amount, txid, -(position + 1), sender, recipient, watch)
        if transfer is not None:
            transfers.append(transfer)
    return transfers
