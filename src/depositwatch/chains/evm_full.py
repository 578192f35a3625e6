"""The full fetch path of `EvmSource`: every block of a range in full, with the receipts and traces its
transfers need.

A range is read as JSON-RPC batches of `batch_blocks` `eth_getBlockByNumber(n, true)` calls, at most
`max_in_flight` requests at a time, beside the range's Transfer logs (`chains/evm_logs.py`); then, per
batch, one batch of `eth_getBlockReceipts` for the blocks that need statuses (a value-carrying transaction
or a token log touching the watched set), or `eth_getTransactionReceipt` for just those transactions
when the node lacks `eth_getBlockReceipts`, and `debug_traceBlockByNumber` for every block with
transactions when traces are on. The answers are read by `chains/evm_decode.py` (blocks, logs) and
`chains/evm_receipts.py` (receipts, traces). The filtered path (`chains/evm_filtered.py`) hands a range
back here when the node stops filtering.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.evm_decode import (
    _Invalid,
    _Log,
    _make_block,
    _parse_block,
    _RawBlock,
    _Revoked,
    _Watch,
)
from depositwatch.chains.evm_logs import transfer_logs
from depositwatch.chains.evm_receipts import _block_statuses, _needs_receipts, _traces, _tx_status
from depositwatch.chains.evm_rpc import CALL_TRACER, _chunks, _run_all
from depositwatch.chains.rpc import Call
from depositwatch.models import Block

if TYPE_CHECKING:
    from depositwatch.chains.evm import EvmSource


async def fetch_full(
    source: EvmSource, start: int, stop: int, watch: _Watch | None, revoked: _Revoked | None = None
) -> list[Block]:
    """Blocks `start` to `stop - 1` (at most; fewer if the node's tip moved back below them), read in full."""
    logs_task: asyncio.Future[dict[int, list[_Log]]] | None = None
    if (source.tokens or revoked is not None) and (watch is None or watch.keys):
        logs_task = asyncio.ensure_future(transfer_logs(source, start, stop, watch, revoked))
    try:
        parts = await _run_all(
            _fetch_chunk(source, chunk, logs_task, watch) for chunk in _chunks(start, stop, source.config.batch_blocks)
        )
        logs = await logs_task if logs_task is not None else {}
    finally:
        if logs_task is not None and not logs_task.done():
            logs_task.cancel()
            await asyncio.gather(logs_task, return_exceptions=True)
    return _assemble(source, start, parts, logs, watch)


def _assemble(
    source: EvmSource,
    start: int,
    parts: list[list[_RawBlock]],
    logs: dict[int, list[_Log]],
    watch: _Watch | None = None,
) -> list[Block]:
    blocks: list[Block] = []
    expected = start
    for part in parts:
        for raw in part:
            if raw.height != expected:  # a chunk stopped short: the tip moved back; stop at the gap
                return blocks
            blocks.append(_make_block(source.name, source.native, raw, logs.get(raw.height, ()), watch))
            expected += 1
    return blocks


async def _fetch_chunk(
    source: EvmSource,
    heights: range,
    logs_task: asyncio.Future[dict[int, list[_Log]]] | None,
    watch: _Watch | None = None,
) -> list[_RawBlock]:
    calls = [Call("eth_getBlockByNumber", (hex(h), True), f"block {h}") for h in heights]
    results = await source.rpc.batch(calls)
    blocks: list[_RawBlock] = []
    for height, result in zip(heights, results, strict=True):
        if result is None:  # above the node's tip (it moved back since we asked)
            break
        try:
            blocks.append(_parse_block(result, height, watch))
        except _Invalid as exc:
            raise BadNodeAnswer(f"chain {source.name}: eth_getBlockByNumber for block {height}: {exc}") from None
    logs = await asyncio.shield(logs_task) if logs_task is not None else {}
    need = [b for b in blocks if _needs_receipts(b, logs, watch) or (source.traces and b.txs)]
    if need:
        await _statuses(source, need, logs, watch)
    return blocks


async def _statuses(
    source: EvmSource, blocks: list[_RawBlock], logs: dict[int, list[_Log]], watch: _Watch | None = None
) -> None:
    """Fill each block's receipt statuses (and internal transfers, with traces) in one batch.

    With traces on, every block with transactions is traced: value moves inside a plain ETH send
    to a contract (its receive() forwarding it), inside a creation (a constructor forwarding it)
    and inside any call, so no cheaper test on the transaction says which blocks can be left out.
    A trace's top frame carries the transaction's failure, so traces need no receipts of their own.
    """
    calls: list[Call] = []
    wanted: list[tuple[str, _RawBlock, str | None]] = []  # (kind, block, tx hash)
    for block in blocks:
        if not _needs_receipts(block, logs, watch):
            pass
        elif source.block_receipts:
            calls.append(Call("eth_getBlockReceipts", (hex(block.height),), f"block {block.height}"))
            wanted.append(("receipts", block, None))
        else:
            with_logs = {item.tx_hash for item in logs.get(block.height, ())}
            for tx in block.txs:
                if (tx.value > 0 and tx.to is not None and (watch is None or watch.tx(tx))) or tx.hash in with_logs:
                    calls.append(Call("eth_getTransactionReceipt", (tx.hash,), f"block {block.height}"))
                    wanted.append(("receipt", block, tx.hash))
        if source.traces and block.txs:
            calls.append(Call("debug_traceBlockByNumber", (hex(block.height), CALL_TRACER), f"block {block.height}"))
            wanted.append(("trace", block, None))
    results = await source.rpc.batch(calls)
    for call, (kind, block, tx_hash), result in zip(calls, wanted, results, strict=True):
        try:
            if kind == "receipts":
                _block_statuses(block, result)
            elif kind == "receipt":
                assert tx_hash is not None
                _tx_status(block, tx_hash, result)
            else:
                _traces(block, result)
        except _Invalid as exc:
            raise BadNodeAnswer(f"chain {source.name}: {call.method} for {call.what}: {exc}") from None
