"""TRON node answers to `Block` records, checked against the signed bytes before anything is matched.

Input: a `/wallet/getblockbynum` answer (`visible=false`: accounts as `41`-hex) and the matching
`/wallet/gettransactioninfobyblocknum` list. Every identity recomputes (block id, txIDs, the
transaction trie root, which covers each transaction's result codes), the contract fields are read from
the signed `raw_data_hex` and must agree with the JSON beside them, and a transaction info must name a
transaction of this block. A mismatch is a `BadNodeAnswer`, never a match.

The transactions are checked by `tron_txs`; this module checks the block around them (its id, the
trie root over their leaves, the transaction infos) and builds the transfers. Where the extension is
built, the infos of the node's usual shape are checked and the transfers to build picked in one
compiled call (`_tronscan.transfers`); anything else is read info by info (`_infos`, `_transfers`),
which decides and names what is wrong, and the tests hold both to the same answers.

Transfers produced:
- TRX: `TransferContract` (sun, 6 decimals); TRC-10: `TransferAssetContract` (`asset_name` is the token
  id; configured ids get their symbol and decimals, others are reported under their id with 0 decimals);
- TRC-20: `Transfer(address,address,uint256)` logs with exactly three topics, emitted by a configured
  token contract (anyone can emit the event; only the token's own contract counts); and, given
  `revoked` keys, such logs of any other contract whose `from` or `to` is revoked, with an asset of
  `listed = False` named `PLACEHOLDER_SYMBOL` until the source asks the contract (`tron_tokens`). A log
  of another contract that is not ERC-20-shaped (address words with upper bytes set, data of another
  length) is skipped: any contract can emit anything, and it must never fail the block;
- internal TRX: `internal_transactions` (`callValueInfo` without `tokenId`, not `rejected`), present only
  where the node saves them.
All of them only from transactions that succeeded. `index` is None for TRX and TRC-10, the log's index
within its transaction for TRC-20, and for internal TRX the internal transaction's position n written as
-(n + 1), as EVM internal transfers are, so that it never shares a match id with a log of the same
transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from depositwatch.addresses.tron import tron_address
from depositwatch.chains import tron_wire as wire
from depositwatch.chains.evm_tokens import PLACEHOLDER_SYMBOL
from depositwatch.chains.tron_json import _account, _dict, _fail, _hex, _hex_of, _int, _list, _node_account
from depositwatch.chains.tron_txs import _transactions, _Tx
from depositwatch.models import Asset, Block, Transfer

TRX = Asset(symbol="TRX", decimals=6)
TRANSFER_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
_UINT256_MAX = 2**256 - 1
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
    return _built(asset, amount, txid, index, sender, recipient)


def _built(asset: Asset, amount: int, txid: str, index: int | None, sender: bytes, recipient: bytes) -> Transfer:
    """The transfer, with its accounts' base58 text."""
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


def _signed_account(raw: bytes, height: int, txid: str, name: str) -> bytes:
    if len(raw) != 21 or raw[0] != 0x41:
        raise _fail(height, f"{txid} {name} in the signed bytes is not a 21-byte 0x41 account")
    return raw[1:]


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
    block: Any,
    infos: Any,
    height: int,
    tokens: TronTokens,
    *,
    internal: bool = True,
    watch: Watch = None,
    revoked: Watch = None,
) -> Block:
    """Check and decode one block; `height` is the number that was asked for.

    Every identity is checked whatever `watch` says; with `watch`, only transfers from or to one of its
    keys are built. With `revoked`, Transfer logs of unlisted contracts from or to one of its keys are
    built too (asset `listed = False`, placeholder name).
    """
    block = _dict(block, height, "the block")
    header = _dict(_dict(block.get("block_header"), height, "block_header").get("raw_data"), height, "header")
    number, block_id, parent, time = decode_header(block, height)
    txs, leaves = _transactions(_list(block.get("transactions"), height, "transactions"), height)
    if wire.merkle_root(leaves) != bytes.fromhex(header["txTrieRoot"]):
        raise _fail(height, "txTrieRoot does not recompute from the transactions")
    trc20 = tokens.trc20
    hits = (
        None
        if _usual_transfers is None or type(trc20) is not dict
        else _usual_transfers(txs, infos, height, trc20, watch, revoked, internal)
    )
    if hits is not None:
        transfers = _hit_transfers(hits, height, tokens, watch)
    else:  # not the usual shape: checked info by info and read transfer by transfer, naming what is wrong
        transfers = _transfers(
            txs, _infos(infos, height, txs), height, tokens, internal=internal, watch=watch, revoked=revoked
        )
    return Block(
        height=number,
        hash=block_id,
        parent_hash=parent,
        time=time,
        transfers=tuple(transfers),
        tx_count=len(txs),
    )


def _infos(infos: Any, height: int, txs: Mapping[str, _Tx]) -> dict[str, dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for position, info in enumerate(_list(infos, height, "transaction infos")):
        if type(info) is not dict:  # the names in messages are built only when they are needed
            raise _fail(height, f"transaction info {position} is not an object")
        txid = info.get("id")
        if not isinstance(txid, str) or txid not in txs:
            raise _fail(height, f"transaction info {position} names a transaction that is not in this block")
        number = info.get("blockNumber", height)
        if (type(number) is not int or number != height) and _int(
            number, height, f"transaction info {position}.blockNumber"
        ) != height:
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
    if type(receipt) is not dict:
        raise _fail(height, f"{txid} receipt is not an object")
    result = receipt.get("result")
    return result is None or result == "SUCCESS"


def _transfers(
    txs: Mapping[str, _Tx],
    infos: Mapping[str, dict[str, Any]],
    height: int,
    tokens: TronTokens,
    *,
    internal: bool,
    watch: Watch,
    revoked: Watch = None,
) -> list[Transfer]:
    transfers: list[Transfer] = []
    trc20 = tokens.trc20
    plain = trc20 if type(trc20) is dict else None  # what `_usual_logs` takes
    usual_logs = _usual_logs if plain is not None else None
    for txid, (fields, success) in txs.items():
        info = infos.get(txid)
        if not success:
            continue
        if info is not None:
            receipt = info.get("receipt")  # `_receipt_ok`, inline: this runs for most transactions
            if type(receipt) is dict:
                result = receipt.get("result")
                if result is not None and result != "SUCCESS":
                    continue
            elif not _receipt_ok(info, height, txid):
                continue
        if fields[0] in _NATIVE and fields[4]:
            native = _native(fields, txid, height, tokens, watch)
            if native is not None:
                transfers.append(native)
        if info is None:
            continue
        hits = None if usual_logs is None or plain is None else usual_logs(info, plain, watch, revoked)
        if hits is None:  # not the usual shape: read log by log, which decides and names what is wrong
            transfers.extend(_token_logs(info, txid, height, tokens, watch, revoked))  # id checked by `_infos`
        elif hits:
            transfers.extend(_log_transfers(hits, txid, trc20))
        if internal and info.get("internal_transactions") is not None:
            transfers.extend(_internal(info, txid, height, watch))
    return transfers


def info_transfers(
    info: Any, height: int, tokens: TronTokens, *, internal: bool = True, watch: Watch = None, revoked: Watch = None
) -> list[Transfer]:
    """The TRC-20 and internal TRX transfers of one transaction info (its transaction succeeded)."""
    info = _dict(info, height, "transaction info")
    txid = info.get("id")
    if not isinstance(txid, str) or len(txid) != 64:
        raise _fail(height, "transaction info without a 32-byte id")
    transfers = _token_logs(info, txid, height, tokens, watch, revoked)
    if internal and info.get("internal_transactions") is not None:
        transfers.extend(_internal(info, txid, height, watch))
    return transfers


_NATIVE = frozenset({int(wire.ContractType.TRANSFER), int(wire.ContractType.TRANSFER_ASSET)})


def _native(fields: wire.SignedFields, txid: str, height: int, tokens: TronTokens, watch: Watch) -> Transfer | None:
    kind, signed_owner, signed_to, _, amount, token, _ = fields
    owner = _signed_account(signed_owner, height, txid, "owner_address")
    to = _signed_account(signed_to or b"", height, txid, "to_address")
    asset = TRX
    if kind == wire.ContractType.TRANSFER_ASSET:
        token_id = (token or b"").decode("ascii", "replace")
        asset = tokens.trc10.get(token_id) or Asset(symbol=token_id, decimals=0)
    return _transfer(asset, amount, txid, None, owner, to, watch)


def _topic_account(topic: Any, height: int, where: str) -> bytes:
    word = _hex(topic, height, where, 32)
    if any(word[:12]):
        raise _fail(height, f"{where}: the upper 12 bytes of an address topic are not zero")
    return word[12:]


_ZERO_WORD_HEAD = "0" * 24  # the upper 12 bytes of an address topic, as the node writes them


def _usual_account(topic: Any) -> bytes | None:
    """`_topic_account` for the node's lowercase hex with zero upper bytes; None: `_topic_account` decides."""
    if type(topic) is not str or len(topic) != 64 or not topic.startswith(_ZERO_WORD_HEAD):
        return None
    try:
        key = bytes.fromhex(topic[24:])
    except ValueError:
        return None
    return key if len(key) == 20 else None


@lru_cache(maxsize=4096)
def unlisted_asset(contract: bytes) -> Asset:
    """An unlisted contract's asset until the source has asked the contract for its names."""
    return Asset(PLACEHOLDER_SYMBOL, 0, tron_address(contract), listed=False)


def _unlisted_log(
    entry: dict[str, Any], key: bytes, txid: str, position: int, revoked: Container[bytes]
) -> Transfer | None:
    """A Transfer log of an unlisted contract, when it is ERC-20-shaped and touches a revoked key."""
    topics = entry["topics"]
    sender, recipient = _usual_account(topics[1]), _usual_account(topics[2])
    if sender is None or recipient is None or (sender not in revoked and recipient not in revoked):
        return None
    word = _hex_of(entry.get("data"), 32)
    if word is None:
        return None
    return _transfer(unlisted_asset(key), int.from_bytes(word, "big"), txid, position, sender, recipient, None)


def _token_logs(
    info: dict[str, Any], txid: str, height: int, tokens: TronTokens, watch: Watch, revoked: Watch = None
) -> list[Transfer]:
    transfers: list[Transfer] = []
    trc20 = tokens.trc20
    logs = info.get("log")
    for position, entry in enumerate(logs if type(logs) is list else _list(logs, height, f"{txid} log")):
        if type(entry) is not dict:  # the names in messages are built only when they are needed
            raise _fail(height, f"{txid} log {position} is not an object")
        topics = entry.get("topics")
        if type(topics) is not list:
            topics = _list(topics, height, f"{txid} log {position}.topics")
        if len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
            continue  # not an ERC-20-shaped Transfer (ERC-721 has four topics)
        address = entry.get("address")
        key = _hex_of(address, 20) or _hex(address, height, f"{txid} log {position}.address", 20)
        asset = trc20.get(key)
        if asset is None:
            # anyone can emit a Transfer event: only the configured contract's count, and any contract's
            # touching a revoked key
            if revoked is not None:
                unlisted = _unlisted_log(entry, key, txid, position, revoked)
                if unlisted is not None:
                    transfers.append(unlisted)
            continue
        sender = _usual_account(topics[1]) or _topic_account(topics[1], height, f"{txid} log {position}.topics[1]")
        recipient = _usual_account(topics[2]) or _topic_account(topics[2], height, f"{txid} log {position}.topics[2]")
        data = entry.get("data")
        word = _hex_of(data, 32) or _hex(data, height, f"{txid} log {position}.data", 32)
        if watch is not None and sender not in watch and recipient not in watch:
            continue  # `_transfer` would give None
        transfer = _transfer(asset, int.from_bytes(word, "big"), txid, position, sender, recipient, watch)
        if transfer is not None:
            transfers.append(transfer)
    return transfers


_LogHit = tuple[int, bytes, bytes, bytes, bytes, bool]  # position, contract, sender, recipient, amount word, listed
_usual_logs: Callable[[Any, dict[bytes, Asset], Watch, Watch], list[_LogHit] | None] | None = (
    wire.compiled.logs if wire.compiled is not None and wire._USE_EXTENSION else None
)
"""`_token_logs` for the node's usual JSON in one compiled call (`_tronscan.logs`): the logs to build
transfers for, or None for anything else (then `_token_logs` reads them and decides)."""


def _log_transfers(hits: list[_LogHit], txid: str, trc20: Mapping[bytes, Asset]) -> list[Transfer]:
    """The transfers of the logs `_usual_logs` picked, as `_token_logs` builds them."""
    return [
        _built(
            trc20[contract] if listed else unlisted_asset(contract),
            int.from_bytes(word, "big"),
            txid,
            position,
            sender,
            recipient,
        )
        for position, contract, sender, recipient, word, listed in hits
    ]


_usual_transfers: Callable[[dict[str, _Tx], Any, int, dict[bytes, Asset], Watch, Watch, bool], Any] | None = (
    wire.compiled.transfers if wire.compiled is not None and wire._USE_EXTENSION else None
)
"""`_infos` and `_transfers` for the node's usual JSON in one compiled call (`_tronscan.transfers`): what to
build the block's transfers from, or None for anything else (then `_infos` and `_transfers` decide)."""


def _hit_transfers(hits: list[tuple[Any, ...]], height: int, tokens: TronTokens, watch: Watch) -> list[Transfer]:
    """The transfers `_usual_transfers` picked, as `_transfers` builds them, in its order."""
    transfers: list[Transfer] = []
    for hit in hits:
        if hit[0] == 1:
            transfers.extend(_log_transfers([hit[2:]], hit[1], tokens.trc20))
        elif hit[0] == 0:
            native = _native(hit[2], hit[1], height, tokens, watch)
            if native is not None:
                transfers.append(native)
        else:
            transfers.extend(_internal(hit[2], hit[1], height, watch))
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
        for given in _list(entry.get("callValueInfo"), height, f"{where}.callValueInfo"):
            value = _dict(given, height, f"{where}.callValueInfo")
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
