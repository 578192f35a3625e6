"""The filtered fetch path of `EvmSource`: work in proportion to the watched set, not to the chain.

When the watched set (`EvmSource.set_log_filter`: the book's active and revoked keys) holds at most
`filter_max_keys` keys and the node serves `trace_filter` (Erigon, Nethermind, Reth, anvil; probed once
when the source opens), a range of blocks is read as:

- every block's header with its transaction hashes and withdrawals (`eth_getBlockByNumber(n, false)`):
  the hashes and parent links the follower's cursor and reorg checks need, the transaction count, and the
  consensus-layer withdrawals, matched here as on the full path (they come with the block, no trace has them);
- the Transfer logs touching a key: `eth_getLogs` with the keys as topic OR-lists (from in topic 1, then
  to in topic 2), in books of at most `LOG_FILTER_MAX_KEYS` keys, of the configured tokens and, where the
  keys include revoked ones, of any contract (`chains/evm_logs.py`, shared with the full path);
- the ETH a key sends or receives, in a transaction or inside one: `trace_filter` with the keys as
  `fromAddress` and `toAddress` and `mode: union` in one call where the node is seen to take it (probed at
  start on a real call), else one call with `fromAddress` and one with `toAddress` (OpenEthereum-style nodes
  read both lists together as "from and to"); `TRACE_FILTER_SPAN` blocks a call (anvil refuses more), halved
  when the node says an answer is too large;
- receipts (`eth_getTransactionReceipt`) only for the transactions found, for their status;
- with `traces = true` (and a node that serves the call tracer), each transaction where a key is touched
  inside a call is traced alone (`debug_traceTransaction`) and reduced by the rule the full path applies to
  whole blocks' traces, so reverted frames are left out and internal transfers keep the same indices.

The blocks are the full path's for the same watched set: the same transfers in the same order with the
same indices, the same transaction counts. A node that stops serving `trace_filter` or topic filters
during a run sends that range, and the rest of the run, back to the full path.

Measured on the anvil benchmark chain (`python bench/eth_bench.py --filtered`, docs/performance.md,
"Filtered replay").
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable
from depositwatch.chains.evm_decode import (
    _HASH,
    MAX_INDEX,
    MAX_VALUE,
    _address,
    _dict,
    _hash,
    _Invalid,
    _list,
    _Log,
    _make_block,
    _quantity,
    _RawBlock,
    _Revoked,
    _Tx,
    _Watch,
    _withdrawals,
)
from depositwatch.chains.evm_logs import transfer_logs
from depositwatch.chains.evm_receipts import _internal_transfers, _tx_status
from depositwatch.chains.evm_rpc import _GETLOGS_TOO_LARGE, CALL_TRACER, _chunks, _rpc_error, _run_all, _unsupported
from depositwatch.chains.rpc import Call, RpcError
from depositwatch.models import Block

if TYPE_CHECKING:
    from depositwatch.chains.evm import EvmSource

# anvil answers at most this many blocks a trace_filter call ("block range too large" beyond it)
TRACE_FILTER_SPAN = 300
# Blocks a replay step takes on this path where `batch_blocks` is not set: a step costs its requests and its
# commit more than its blocks. On the benchmark chain, 300 a step gave 1.5 times the rate of 20.
REPLAY_STEP = TRACE_FILTER_SPAN
UNION_PROBE_BLOCKS = 16  # where to look for a call to try `mode: union` on, back from the tip
_PROBE_ADDRESS = "0x" + "00" * 20

log = structlog.get_logger(__name__)


class _NoTraceFilter(Exception):
    """The node refused trace_filter as a method (not this call): the full path takes over."""


@dataclass(frozen=True, slots=True)
class _Hit:
    """One trace of `trace_filter`'s answer: a frame whose sender or recipient is a watched key."""

    height: int
    block_hash: str
    tx_hash: str
    top: bool  # the transaction's own frame (traceAddress [])
    native: _Tx | None  # the transaction itself, when its own frame is a plain call carrying value


# --- which path ---------------------------------------------------------------------------------------


def filtered(source: EvmSource, watch: _Watch | None, revoked: _Revoked | None) -> bool:
    """Whether `fetch` takes the filtered path for this watched set."""
    return fetch_path(source, watch, revoked).startswith("filtered")


def fetch_path(source: EvmSource, watch: _Watch | None, revoked: _Revoked | None) -> str:
    """The path, and why: 'filtered: N keys <= limit, node has trace_filter', or 'full scan: ...'."""
    limit = source.filter_max_keys
    if limit == 0:
        return "full scan: filter_max_keys = 0"
    if watch is None:
        return f"full scan: no watched set (a book of more than {source.log_filter_limit} keys is read in full)"
    keys = len(watch.keys)
    if keys > limit:
        return f"full scan: {keys} keys > {limit}"
    if not source.trace_filter:
        return "full scan: node has no trace_filter"
    if not source._node_filter:
        return "full scan: node refused eth_getLogs topic filters"
    if watch.topics is None or (revoked is not None and not revoked.keys <= watch.keys):
        return "full scan: revoked keys outside the watched set"
    return f"filtered: {keys} keys <= {limit}, node has trace_filter"


async def probe_trace_filter(source: EvmSource, tip: int) -> tuple[bool, bool]:
    """Whether the node serves trace_filter (one call over its tip block, for an address nobody uses), and
    whether it takes both directions in one call (`mode: union`; see `_probe_union`)."""
    query = {"fromBlock": hex(tip), "toBlock": hex(tip), "fromAddress": [_PROBE_ADDRESS]}
    try:
        ((result, error),) = await source.rpc.replies([Call("trace_filter", (query,), f"block {tip}")])
        if error is None and isinstance(result, list):
            return True, await _probe_union(source, tip)
    except NodeUnavailable as exc:  # some gateways answer a method they do not serve with an HTTP error
        log.warning("trace_filter probe failed: blocks are read in full", chain=source.name, reason=str(exc))
        return False, False
    reason = _rpc_error(error) if error is not None else f"answer {result!r:.100}"
    if error is not None and not _unsupported(error):
        log.warning("trace_filter probe failed: blocks are read in full", chain=source.name, reason=reason)
    else:
        log.info("trace_filter unavailable: blocks are read in full", chain=source.name, reason=reason)
    return False, False


async def _probe_union(source: EvmSource, tip: int) -> bool:
    """Whether `{fromAddress: A, toAddress: B, mode: "union"}` means from A or to B on this node (Erigon,
    Reth and anvil take the mode; OpenEthereum-style nodes read both lists as from A and to B, which would
    lose transfers). Tried on a real call of a recent block, both ways: its sender with an address nobody uses
    as the recipient must find it, and that address as the sender with its recipient too. Without such a call,
    or with any doubt, each direction gets its own call."""
    first = max(0, tip - UNION_PROBE_BLOCKS + 1)
    query: dict[str, Any] = {"fromBlock": hex(first), "toBlock": hex(tip), "count": 1}
    ((result, error),) = await source.rpc.replies([Call("trace_filter", (query,), f"blocks {first}-{tip}")])
    try:
        if error is not None or not result:
            return False
        entry = _dict(_list(result, "the traces")[0], "a trace")
        action = _dict(entry.get("action"), "the trace's action")
        sender, recipient = _address(action, "from"), _address(action, "to")
        height = _block_number(entry)
    except _Invalid:
        return False
    for side, address, other in (("from", sender, "to"), ("to", recipient, "from")):
        lists = {"fromAddress": [address], "toAddress": [_PROBE_ADDRESS]}
        if side == "to":
            lists = {"fromAddress": [_PROBE_ADDRESS], "toAddress": [address]}
        query = {"fromBlock": hex(height), "toBlock": hex(height), **lists, "mode": "union"}
        ((result, error),) = await source.rpc.replies([Call("trace_filter", (query,), f"block {height}")])
        if error is not None or not isinstance(result, list):
            return False
        if not any(
            isinstance(item, dict)
            and isinstance(item.get("action"), dict)
            and str(item["action"].get(side, "")).lower() == address
            and str(item["action"].get(other, "")).lower() != _PROBE_ADDRESS
            for item in result
        ):
            return False
    return True


# --- the fetch ----------------------------------------------------------------------------------------


async def fetch_filtered(
    source: EvmSource, start: int, stop: int, watch: _Watch, revoked: _Revoked | None
) -> list[Block] | None:
    """Blocks `start` to `stop - 1` (fewer if the tip moved back), or None when the node stopped filtering."""
    tasks = (
        asyncio.ensure_future(_logs(source, start, stop, watch, revoked)),
        asyncio.ensure_future(_headers_and_traces(source, start, stop, watch)),
    )
    try:
        logs, (headers, hits) = await asyncio.gather(*tasks)
    except _NoTraceFilter as exc:
        source.trace_filter = False
        log.warning(
            "the node refused trace_filter: reading blocks in full from here", chain=source.name, error=str(exc)
        )
        source._say_path()
        return None
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if not source._node_filter:  # the node refused a topic filter during the range: logs were read unfiltered
        source._say_path()
    by_height = {header.raw.height: header for header in headers}
    internal = _apply(source, by_height, hits)
    for height in logs:
        if height in by_height:
            by_height[height].expand()
    await _statuses(source, [h.raw for h in headers], logs, watch, internal)
    blocks = []
    for header in headers:
        raw = header.raw
        if raw.txs or raw.withdrawals:  # something may concern the watched set: the full path's assembly
            header.expand()
            blocks.append(_make_block(source.name, source.native, raw, logs.get(raw.height, ()), watch))
        else:  # nothing in this block touches a key: no transfer to build
            blocks.append(Block(raw.height, raw.hash, raw.parent_hash, raw.time, (), tx_count=len(header.hashes)))
    return blocks


def _apply(source: EvmSource, by_height: dict[int, _Header], hits: Sequence[_Hit]) -> list[tuple[_RawBlock, str]]:
    """Put each transaction the traces found into its block; the transactions to trace alone (internal ETH)."""
    internal: dict[tuple[int, str], _RawBlock] = {}
    for hit in hits:
        header = by_height.get(hit.height)
        if header is None:
            continue  # above the tip the node has now; the blocks stop before it
        raw = header.raw
        if hit.block_hash != raw.hash:
            raise BadNodeAnswer(
                f"chain {source.name}: trace_filter for block {hit.height}: trace of block {hit.block_hash}, "
                f"but the block is {raw.hash} (the chain moved during the fetch)"
            )
        position = header.position(hit.tx_hash)
        if position is None:
            raise BadNodeAnswer(
                f"chain {source.name}: trace_filter for block {hit.height}: trace of transaction {hit.tx_hash}, "
                "which is not in the block"
            )
        if hit.native is not None:
            raw.txs[position] = hit.native
        elif not hit.top and source.traces:
            internal[(hit.height, hit.tx_hash)] = raw
    return [(raw, tx_hash) for (_, tx_hash), raw in internal.items()]


@dataclass(slots=True)
class _Header:
    """A block as `eth_getBlockByNumber(n, false)` gives it: its transactions' hashes only. `raw.txs` stays
    empty until something in the block concerns the watched set (most blocks: never)."""

    raw: _RawBlock
    hashes: list[str]

    def expand(self) -> None:
        """Fill `raw.txs` with a stand-in per transaction (no value, no sender) for the traces to complete.

        The hashes are checked here, where they are first used: a block that touches no key uses only their
        count."""
        if len(self.raw.txs) != len(self.hashes):
            txs = []
            for position, item in enumerate(self.hashes):
                if not isinstance(item, str) or not _HASH.match(item):
                    raise BadNodeAnswer(
                        f"eth_getBlockByNumber for block {self.raw.height}: transaction {position} is "
                        f"{item!r:.100}, not a transaction hash"
                    )
                txs.append(_Tx(hash=item.lower(), sender="", to=None, value=0))
            self.raw.txs = txs

    def position(self, tx_hash: str) -> int | None:
        self.expand()
        for n, tx in enumerate(self.raw.txs):
            if tx.hash == tx_hash:
                return n
        return None


async def _logs(
    source: EvmSource, start: int, stop: int, watch: _Watch, revoked: _Revoked | None
) -> dict[int, list[_Log]]:
    if not source.tokens and revoked is None:
        return {}
    return await transfer_logs(source, start, stop, watch, revoked)


async def _statuses(
    source: EvmSource,
    headers: Sequence[_RawBlock],
    logs: dict[int, list[_Log]],
    watch: _Watch,
    internal: Sequence[tuple[_RawBlock, str]],
) -> None:
    """Receipts of the transactions that carry a watched transfer; call traces of those moving ETH inside."""
    calls: list[Call] = []
    wanted: list[tuple[bool, _RawBlock, str]] = []  # (receipt or trace, block, transaction)
    for raw in headers:
        asked = set()
        for tx in raw.txs:
            if tx.value > 0 and tx.to is not None and watch.tx(tx):
                asked.add(tx.hash)
        asked.update(item.tx_hash for item in logs.get(raw.height, ()))
        for tx in raw.txs:  # in block order
            if tx.hash in asked:
                calls.append(Call("eth_getTransactionReceipt", (tx.hash,), f"block {raw.height}"))
                wanted.append((True, raw, tx.hash))
    for raw, tx_hash in internal:
        calls.append(Call("debug_traceTransaction", (tx_hash, CALL_TRACER), f"block {raw.height}"))
        wanted.append((False, raw, tx_hash))
    if not calls:
        return
    results = await source.rpc.batch(calls)
    for call, (receipt, raw, tx_hash), result in zip(calls, wanted, results, strict=True):
        try:
            if receipt:
                _tx_status(raw, tx_hash, result)
            else:
                moved = _internal_transfers(_dict(result, "the trace"))
                if moved:
                    raw.internal[tx_hash] = moved
        except _Invalid as exc:
            raise BadNodeAnswer(f"chain {source.name}: {call.method} for {call.what}: {exc}") from None


# --- headers ------------------------------------------------------------------------------------------


async def _headers_and_traces(
    source: EvmSource, start: int, stop: int, watch: _Watch
) -> tuple[list[_Header], list[_Hit]]:
    """The headers of `start` to `stop - 1` (up to the first the node does not have) and the frames sending
    from or to a watched key there, each once: one JSON-RPC batch, so a range costs one round trip here
    (on the loaded benchmark machine each round trip is what a step waits for, more than any CPU)."""
    heights = range(start, stop)
    calls = [Call("eth_getBlockByNumber", (hex(h), False), f"block {h}") for h in heights]
    addresses = sorted(watch.hex)
    spans = []
    if watch.keys:
        for chunk in _chunks(start, stop, TRACE_FILTER_SPAN):
            first, last = chunk.start, chunk.stop - 1
            what = f"block {first}" if first == last else f"blocks {first}-{last}"
            for side in ("union",) if source.trace_union else ("fromAddress", "toAddress"):
                calls.append(Call("trace_filter", (_trace_query(first, last, side, addresses),), what))
                spans.append((first, last, side))
    replies = await source.rpc.replies(calls)
    headers = _headers(source, heights, calls, replies)
    parts = []
    retry = []
    for (first, last, side), (result, error) in zip(spans, replies[len(heights) :], strict=True):
        if error is not None:  # not served, or too large: the single-call path decides
            retry.append(_trace_range(source, first, last, side, addresses))
            continue
        try:
            parts.append(_parse_traces(result, first, last, frozenset(addresses), side))
        except _Invalid as exc:
            what = f"block {first}" if first == last else f"blocks {first}-{last}"
            raise BadNodeAnswer(f"chain {source.name}: trace_filter for {what}: {exc}") from None
    parts.extend(await _run_all(retry))
    seen: set[tuple[str, tuple[int, ...]]] = set()
    hits: list[_Hit] = []
    for part in parts:
        for key, hit in part:
            if key not in seen:
                seen.add(key)
                hits.append(hit)
    return headers, hits


def _headers(
    source: EvmSource, heights: range, calls: Sequence[Call], replies: Sequence[tuple[Any, RpcError | None]]
) -> list[_Header]:
    headers: list[_Header] = []
    for height, call, (result, error) in zip(heights, calls, replies, strict=False):
        if error is not None:
            raise BadNodeAnswer(f"chain {source.name}: {call.label}: {_rpc_error(error)}")
        if result is None:  # above the node's tip (it moved back since we asked): stop at the gap
            break
        try:
            headers.append(_parse_header(result, height))
        except _Invalid as exc:
            raise BadNodeAnswer(f"chain {source.name}: eth_getBlockByNumber for block {height}: {exc}") from None
    return headers


def _parse_header(raw: Any, height: int) -> _Header:
    """A block with its transactions' hashes only (checked when used: `_Header.expand`)."""
    block = _dict(raw, "the block")
    number = _quantity(block, "number")
    if number != height:
        raise _Invalid(f"the node answered with block {number}")
    hashes = _list(block.get("transactions"), "transactions")
    raw_block = _RawBlock(
        height=number,
        hash=_hash(block, "hash"),
        parent_hash=_hash(block, "parentHash"),
        time=_quantity(block, "timestamp"),
        txs=[],
        withdrawals=_withdrawals(block.get("withdrawals")),
    )
    return _Header(raw_block, hashes)


# --- traces -------------------------------------------------------------------------------------------


async def _trace_range(
    source: EvmSource, first: int, last: int, side: str, addresses: list[str]
) -> list[tuple[tuple[str, tuple[int, ...]], _Hit]]:
    what = f"block {first}" if first == last else f"blocks {first}-{last}"
    query = _trace_query(first, last, side, addresses)
    ((result, error),) = await source.rpc.replies([Call("trace_filter", (query,), what)])
    if error is not None:
        if _unsupported(error):
            raise _NoTraceFilter(_rpc_error(error))
        if first < last and _GETLOGS_TOO_LARGE.search(error.message):
            middle = (first + last) // 2
            low, high = await _run_all(
                [
                    _trace_range(source, first, middle, side, addresses),
                    _trace_range(source, middle + 1, last, side, addresses),
                ]
            )
            return low + high
        raise BadNodeAnswer(f"chain {source.name}: trace_filter for {what}: {_rpc_error(error)}")
    try:
        return _parse_traces(result, first, last, frozenset(addresses), side)
    except _Invalid as exc:
        raise BadNodeAnswer(f"chain {source.name}: trace_filter for {what}: {exc}") from None


def _trace_query(first: int, last: int, side: str, addresses: list[str]) -> dict[str, Any]:
    """trace_filter's parameter: from a key (`fromAddress`), to a key (`toAddress`), or either (`union`)."""
    if side == "union":
        return {
            "fromBlock": hex(first),
            "toBlock": hex(last),
            "fromAddress": addresses,
            "toAddress": addresses,
            "mode": "union",
        }
    return {"fromBlock": hex(first), "toBlock": hex(last), side: addresses}


def _block_number(entry: dict[str, Any]) -> int:
    """A trace's block number: a JSON number in the parity format (anvil, Erigon), a hex quantity in some nodes."""
    value = entry.get("blockNumber")
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_INDEX:
            raise _Invalid(f"blockNumber is {value}, outside 0..{MAX_INDEX}")
        return value
    return _quantity(entry, "blockNumber")


def _parse_traces(
    result: Any, first: int, last: int, addresses: frozenset[str], side: str
) -> list[tuple[tuple[str, tuple[int, ...]], _Hit]]:
    found = []
    for item in _list(result, "the traces"):
        entry = _dict(item, "a trace")
        if entry.get("transactionHash") is None:
            continue  # a block or uncle reward: no transaction, no transfer on this path or the full one
        height = _block_number(entry)
        if not first <= height <= last:
            raise _Invalid(f"a trace of block {height}, outside the range asked")
        tx_hash = _hash(entry, "transactionHash")
        where = _list(entry.get("traceAddress"), "traceAddress")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in where):
            raise _Invalid(f"traceAddress {where!r:.100} is not a list of positions")
        kind = entry.get("type")
        if not isinstance(kind, str):
            raise _Invalid(f"trace type is {kind!r:.50}")
        action = _dict(entry.get("action"), "the trace's action")
        native = None
        if not where and kind == "call" and action.get("callType", "call") == "call":
            sender, to = _address(action, "from"), _address(action, "to")
            asked = {"fromAddress": (sender,), "toAddress": (to,)}.get(side, (sender, to))
            if not any(address in addresses for address in asked):
                raise _Invalid(f"a trace of {sender} to {to}, which the filter did not ask for")
            value = _quantity(action, "value", MAX_VALUE)
            if value > 0:
                native = _Tx(hash=tx_hash, sender=sender, to=to, value=value)
        hit = _Hit(height, _hash(entry, "blockHash"), tx_hash, not where, native)
        found.append(((tx_hash, tuple(where)), hit))
    return found
