"""EVM node answers to `Block` records: every field validated, then decoded. No I/O: the fetch
paths (`chains/evm_full.py`, `chains/evm_filtered.py`) ask the node, this module reads the answers.

What counts as a transfer:

- native: a transaction with value > 0, a recipient (not a contract creation) and receipt status 1
  (pre-Byzantium receipts carry `root` and no `status`: they count as success); `index` is None;
- token: a log of a configured contract with topic0 = Transfer(address,address,uint256), exactly
  three topics (an ERC-721 Transfer has four: skipped) and 32 bytes of data; `index` is the log index.
  Logs with `removed: true`, and logs of a transaction whose receipt says it failed, are dropped;
- internal (only with `traces = true` and a node that serves `debug_traceBlockByNumber` with the call
  tracer): value moved by a CALL, CREATE, CREATE2 or SELFDESTRUCT frame inside a successful
  transaction, outside any reverted frame. Their `index` is negative, -1, -2, ... in call order, so
  they never collide with the transaction's own transfer (None) or its logs (>= 0);
- withdrawal: a block's consensus-layer withdrawal (from Shanghai on) of more than 0: no sender, the
  synthetic transaction id `withdrawal_txid(index)`, and the withdrawal index as `index`.

A malformed field raises `_Invalid`, which the caller turns into `BadNodeAnswer` naming the method and
block; `_make_block` raises `BadNodeAnswer` itself when the block's logs and receipts do not agree with it.

Receipts and traces are read by `chains/evm_receipts.py`, into the parsed block's statuses and internal
transfers, before `_make_block` builds the `Block`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from depositwatch.addresses import ethereum_checksum_address
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.evm_tokens import PLACEHOLDER_SYMBOL
from depositwatch.models import Asset, Block, Transfer

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
GWEI = 10**9
MAX_WITHDRAWALS = 1024  # a block carries at most 16 today; more is a hostile answer


def withdrawal_txid(index: int) -> str:
    """The synthetic transaction id of consensus-layer withdrawal `index` (it has no transaction).

    The withdrawal index is unique over the whole chain, so the id (and the alert id made from it)
    stays the same when a reorg puts the withdrawal in another block.
    """
    return f"withdrawal:{index}"


_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*\Z")
# Field domains: heights, times and indices fit the store's signed 64-bit columns; values are uint256
# (the quantity pattern's 64 hex digits already bound them). Anything wider is a hostile answer.
MAX_INDEX = 2**63 - 1
MAX_VALUE = 2**256 - 1


class _Invalid(Exception):
    """A field of an answer is missing or malformed; turned into BadNodeAnswer with context."""


@lru_cache(maxsize=65536)
def _checksum(key: bytes) -> str:
    return ethereum_checksum_address(key)


# --- field validation --------------------------------------------------------------------------------


def _quantity(obj: dict[str, Any], name: str, maximum: int = MAX_INDEX) -> int:
    """A hex quantity within 0..`maximum` (heights, times and indices by default; MAX_VALUE for values)."""
    value = obj.get(name)
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise _Invalid(f"{name} is {value!r:.100}, not a hex quantity")
    number = int(value, 16)
    if number > maximum:
        raise _Invalid(f"{name} is {value}, above its largest possible value {maximum}")
    return number


def _word_address(topic: str, name: str) -> bytes:
    """The address in a 32-byte topic word: its upper 12 bytes must be zero (ABI encoding of `address`)."""
    if topic[2:26].strip("0"):
        raise _Invalid(f"{name} {topic} is not an address word (its upper 12 bytes are not zero)")
    return bytes.fromhex(topic[-40:])


def _hash(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not _HASH.match(value):
        raise _Invalid(f"{name} is {value!r}, not a 32-byte hex hash")
    return value.lower()


def _address(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise _Invalid(f"{name} is {value!r}, not a 20-byte hex address")
    return value.lower()


def _optional_address(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "0x":  # some nodes write a contract creation's recipient as "0x"
        return None
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise _Invalid(f"{name} is {value!r}, not a 20-byte hex address or null")
    return value.lower()


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} is {type(value).__name__}, not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} is {type(value).__name__}, not a list")
    return value


# --- parsed pieces -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tx:
    hash: str
    sender: str
    to: str | None
    value: int


@dataclass(slots=True)
class _RawBlock:
    height: int
    hash: str
    parent_hash: str
    time: int
    txs: list[_Tx]
    withdrawals: list[tuple[int, str, int]] = field(default_factory=list)  # (index, address, amount in wei)
    statuses: dict[str, bool] = field(default_factory=dict)
    internal: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Watch:
    """The keys given to `set_log_filter`, in the forms the fetch path compares."""

    keys: frozenset[bytes]
    hex: frozenset[str]  # "0x" + lower-case hex, as transactions carry them
    # 32-byte topics for the node, when there are few enough keys: books of at most LOG_FILTER_MAX_KEYS
    topics: tuple[list[str], ...] | None

    def tx(self, tx: _Tx) -> bool:
        return tx.sender in self.hex or tx.to in self.hex

    def log(self, item: _Log) -> bool:
        return item.sender in self.keys or item.recipient in self.keys


@dataclass(frozen=True, slots=True)
class _Revoked:
    """The keys given to `set_revoked`: Transfer logs of any contract touching them are kept."""

    keys: frozenset[bytes]
    topics: list[str] | None  # 32-byte topics for the node, when there are few enough keys

    def log(self, item: _Log) -> bool:
        return item.sender in self.keys or item.recipient in self.keys


@dataclass(frozen=True, slots=True)
class _Log:
    height: int
    block_hash: str
    tx_hash: str
    index: int
    asset: Asset
    contract: str  # lower-case hex
    sender: bytes
    recipient: bytes
    amount: int


@lru_cache(maxsize=4096)
def _provisional(contract: str) -> Asset:
    """An unlisted contract's asset until its metadata is known."""
    return Asset(PLACEHOLDER_SYMBOL, 0, _checksum(bytes.fromhex(contract[2:])), listed=False)


def _unwatched(tx: dict[str, Any], keys: frozenset[str]) -> bool:
    """Neither end of the transaction is a watched key (the keys are valid lower-case hex: a field that
    lower-cases into one is a valid address, anything else, well formed or not, is no key of ours)."""
    sender, to = tx.get("from"), tx.get("to")
    return not (isinstance(sender, str) and sender.lower() in keys) and not (isinstance(to, str) and to.lower() in keys)


def _parse_block(raw: Any, height: int, watch: _Watch | None = None) -> _RawBlock:
    """The block's header fields and transactions. With `watch`, a transaction touching no watched key
    keeps only its hash (which receipts and logs are checked against): its sender, recipient and value
    are neither used nor validated, and it reads as sending nothing."""
    block = _dict(raw, "the block")
    number = _quantity(block, "number")
    if number != height:
        raise _Invalid(f"the node answered with block {number}")
    block_hash = _hash(block, "hash")
    txs_raw = _list(block.get("transactions"), "transactions")
    txs = []
    number_hex = hex(number)
    for position, tx in enumerate(txs_raw):
        if not isinstance(tx, dict):  # a bare hash here means the node ignored `true`
            _dict(tx, f"transaction {position}")
        if tx.get("blockHash", block_hash) != block_hash or tx.get("blockNumber", number_hex) != number_hex:
            _same_block(tx, f"transaction {position}", number, block_hash)  # else the fields are this block's
        if watch is not None and _unwatched(tx, watch.hex):
            txs.append(_Tx(hash=_hash(tx, "hash"), sender="", to=None, value=0))
            continue
        to = _optional_address(tx, "to")
        txs.append(
            _Tx(
                hash=_hash(tx, "hash"),
                sender=_address(tx, "from"),
                to=to,
                value=_quantity(tx, "value", MAX_VALUE),
            )
        )
    return _RawBlock(
        height=number,
        hash=block_hash,
        parent_hash=_hash(block, "parentHash"),
        time=_quantity(block, "timestamp"),
        txs=txs,
        withdrawals=_withdrawals(block.get("withdrawals")),
    )


def _withdrawals(raw: Any) -> list[tuple[int, str, int]]:
    """A block's consensus-layer withdrawals (absent before Shanghai): (index, address, amount in wei)."""
    if raw is None:
        return []
    items = _list(raw, "withdrawals")
    if len(items) > MAX_WITHDRAWALS:
        raise _Invalid(f"{len(items)} withdrawals, more than {MAX_WITHDRAWALS}")
    found = []
    for position, item in enumerate(items):
        entry = _dict(item, f"withdrawal {position}")
        gwei = _quantity(entry, "amount", 2**64 - 1)  # a uint64 of Gwei
        found.append((_quantity(entry, "index"), _address(entry, "address"), gwei * GWEI))
    return found


def _same_block(item: dict[str, Any], what: str, height: int, block_hash: str) -> None:
    """A transaction, receipt or log that names its block must name this one (nodes may leave the fields out)."""
    if item.get("blockHash") is not None and _hash(item, "blockHash") != block_hash:
        raise _Invalid(f"{what} names block {item.get('blockHash')}, but it came in block {block_hash}")
    if item.get("blockNumber") is not None and _quantity(item, "blockNumber") != height:
        raise _Invalid(f"{what} names block number {item.get('blockNumber')}, but it came in block {height}")


# --- logs ------------------------------------------------------------------------------------------


def _parse_logs(
    tokens: Mapping[str, Asset], result: Any, first: int, last: int, any_contract: bool = False
) -> list[_Log]:
    """An eth_getLogs answer's ERC-20 Transfer logs of blocks `first` to `last`, assets from `tokens` (contract:
    asset); with `any_contract`, another contract's logs get a provisional unlisted asset."""
    found: list[_Log] = []
    for item in _list(result, "the logs"):
        entry = _dict(item, "a log")
        removed = entry.get("removed", False)
        if not isinstance(removed, bool):
            raise _Invalid(f"removed is {removed!r}")
        height = _quantity(entry, "blockNumber")
        if not first <= height <= last:
            raise _Invalid(f"a log of block {height}, outside the range asked")
        contract = _address(entry, "address")
        asset = tokens.get(contract)
        if asset is None:
            if not any_contract:
                raise _Invalid(f"a log of contract {entry.get('address')}, which was not asked for")
            asset = _provisional(contract)
        topics = _list(entry.get("topics"), "topics")
        for topic in topics:
            if not isinstance(topic, str) or not _HASH.match(topic):
                raise _Invalid(f"topic {topic!r} is not 32 bytes of hex")
        if not topics or topics[0].lower() != TRANSFER_TOPIC:
            raise _Invalid(f"a log with topics {topics!r:.200}, not a Transfer")
        data = entry.get("data")
        if not isinstance(data, str) or not _DATA.match(data):
            raise _Invalid(f"data is {data!r:.100}, not hex")
        block_hash, tx_hash, index = (
            _hash(entry, "blockHash"),
            _hash(entry, "transactionHash"),
            _quantity(entry, "logIndex"),
        )
        if removed or len(topics) != 3 or len(data) != 66:
            continue  # reorged away; ERC-721 (four topics) or not an ERC-20 amount
        found.append(
            _Log(
                height=height,
                block_hash=block_hash,
                tx_hash=tx_hash,
                index=index,
                asset=asset,
                contract=contract,
                sender=_word_address(topics[1], "topic 1 (from)"),
                recipient=_word_address(topics[2], "topic 2 (to)"),
                amount=int(data, 16),
            )
        )
    return found


# --- blocks ----------------------------------------------------------------------------------------


def _make_block(  # noqa: C901 - one pass over a block's answers, each branch one field's check
    chain: str, native: Asset, raw: _RawBlock, logs: Sequence[_Log], watch: _Watch | None = None
) -> Block:
    """The `Block` of a parsed block and its Transfer logs (statuses and internal transfers filled in): chain
    `chain`, native asset `native`; with `watch`, only the transfers touching a watched key."""
    by_tx: dict[str, list[_Log]] = {}
    for item in logs:
        if item.block_hash != raw.hash:
            raise BadNodeAnswer(
                f"chain {chain}: eth_getLogs for block {raw.height}: log of block {item.block_hash}, "
                f"but the block is {raw.hash} (the chain moved during the fetch)"
            )
        by_tx.setdefault(item.tx_hash, []).append(item)
    known = {tx.hash for tx in raw.txs}
    for tx_hash in by_tx:
        if tx_hash not in known:
            raise BadNodeAnswer(
                f"chain {chain}: eth_getLogs for block {raw.height}: log of transaction {tx_hash}, "
                "which is not in the block"
            )
    transfers: list[Transfer] = []
    for tx in raw.txs:
        status = raw.statuses.get(tx.hash)
        if tx.value > 0 and tx.to is not None and (watch is None or watch.tx(tx)):
            if status is None:
                raise BadNodeAnswer(f"chain {chain}: block {raw.height}: no receipt for {tx.hash}")
            if status:
                sender, recipient = bytes.fromhex(tx.sender[2:]), bytes.fromhex(tx.to[2:])
                transfers.append(
                    Transfer(
                        asset=native,
                        amount=tx.value,
                        txid=tx.hash,
                        index=None,
                        to_key=recipient,
                        from_key=sender,
                        from_address=_checksum(sender),
                        to_address=_checksum(recipient),
                    )
                )
        if status is not False and tx.hash in raw.internal:  # a failed transaction's trace has none
            for n, (frm, to, value) in enumerate(raw.internal[tx.hash]):
                sender, recipient = bytes.fromhex(frm[2:]), bytes.fromhex(to[2:])
                if watch is not None and sender not in watch.keys and recipient not in watch.keys:
                    continue
                transfers.append(
                    Transfer(
                        asset=native,
                        amount=value,
                        txid=tx.hash,
                        index=-(n + 1),
                        to_key=recipient,
                        from_key=sender,
                        from_address=_checksum(sender),
                        to_address=_checksum(recipient),
                    )
                )
        tx_logs = by_tx.get(tx.hash)
        if tx_logs:
            if status is None:
                raise BadNodeAnswer(f"chain {chain}: block {raw.height}: no receipt for {tx.hash}")
            if not status:  # a failed transaction has no logs; a node that says otherwise is not believed
                continue
            transfers.extend(
                Transfer(
                    asset=item.asset,
                    amount=item.amount,
                    txid=tx.hash,
                    index=item.index,
                    to_key=item.recipient,
                    from_key=item.sender,
                    from_address=_checksum(item.sender),
                    to_address=_checksum(item.recipient),
                )
                for item in sorted(tx_logs, key=lambda entry: entry.index)
            )
    for index, address, amount in raw.withdrawals:
        if amount == 0 or (watch is not None and address not in watch.hex):
            continue
        recipient = bytes.fromhex(address[2:])
        transfers.append(
            Transfer(
                asset=native,
                amount=amount,
                txid=withdrawal_txid(index),
                index=index,
                to_key=recipient,
                to_address=_checksum(recipient),
            )
        )
    return Block(
        height=raw.height,
        hash=raw.hash,
        parent_hash=raw.parent_hash,
        time=raw.time,
        transfers=tuple(transfers),
        tx_count=len(raw.txs),
    )
