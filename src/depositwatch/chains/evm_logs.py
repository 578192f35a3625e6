"""The Transfer logs of a range of blocks over `eth_getLogs`, for both fetch paths of `EvmSource` (the full
one in `chains/evm_full.py`, the filtered one in `chains/evm_filtered.py`).

A watched set of at most `LOG_FILTER_MAX_KEYS` keys goes to the node as topic OR-lists (Transfer from a
key, then Transfer to a key), until a node refuses such a filter: then the source stops sending them and
filters here. Revoked keys widen the query to every contract (`EvmSource.set_revoked`); an unlisted
contract's asset is named by `chains/evm_tokens.py`. Ranges are split every `getlogs_max_range` blocks and
halved again when the node says the answer is too large; the same log coming in two answers is kept once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import structlog

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.evm_decode import TRANSFER_TOPIC, _Invalid, _Log, _parse_logs, _Revoked, _Watch
from depositwatch.chains.evm_rpc import _GETLOGS_TOO_LARGE, _chunks, _rpc_error, _run_all
from depositwatch.chains.rpc import Call

if TYPE_CHECKING:
    from depositwatch.chains.evm import EvmSource

log = structlog.get_logger(__name__)


async def transfer_logs(  # noqa: C901 - one read per filter shape, each branch one way a node answers
    source: EvmSource, start: int, stop: int, watch: _Watch | None = None, revoked: _Revoked | None = None
) -> dict[int, list[_Log]]:
    """Transfer logs in [start, stop), by height: the configured tokens' (those touching `watch`),
    and any contract's touching `revoked` (see `EvmSource.set_revoked`)."""
    if watch is not None and not watch.keys:
        return {}  # an empty book: no token transfer can concern it
    chunks = _chunks(start, stop, source.config.getlogs_max_range)
    queries: list[Awaitable[list[_Log]]] = []
    for chunk in chunks:
        first, last = chunk.start, chunk.stop - 1
        if watch is not None and watch.topics is not None and source._node_filter:
            # The watched keys include the revoked ones: the same topic lists serve every contract.
            queries.extend(
                _filtered_logs_range(source, first, last, book, any_contract=revoked is not None)
                for book in watch.topics
            )
        elif revoked is not None and (revoked.topics is None or not source._node_filter):
            queries.append(_logs_range(source, first, last, any_contract=True))
        else:
            if source.tokens:
                queries.append(_logs_range(source, first, last))
            if revoked is not None:
                assert revoked.topics is not None
                queries.append(_filtered_logs_range(source, first, last, revoked.topics, any_contract=True))
    parts = await _run_all(queries)
    by_height: dict[int, list[_Log]] = {}
    seen: dict[tuple[int, int], _Log] = {}
    unlisted: set[str] = set()
    for part in parts:
        for item in part:
            key = (item.height, item.index)
            other = seen.get(key)
            if other is not None:
                if other != item:  # the same log may come in two answers (two queries), never two logs
                    raise BadNodeAnswer(
                        f"chain {source.name}: eth_getLogs for block {item.height}: log index {item.index} twice"
                    )
                continue
            seen[key] = item
            if item.asset.listed:
                if watch is None or watch.log(item):
                    by_height.setdefault(item.height, []).append(item)
            elif revoked is not None and revoked.log(item):
                by_height.setdefault(item.height, []).append(item)
                unlisted.add(item.contract)
    if unlisted:
        assets = await source.unlisted.assets(unlisted)
        for height, items in by_height.items():
            by_height[height] = [
                item if item.asset.listed else dataclasses.replace(item, asset=assets[item.contract]) for item in items
            ]
    return by_height


async def _filtered_logs_range(
    source: EvmSource, first: int, last: int, topics: list[str], *, any_contract: bool = False
) -> list[_Log]:
    """Transfers from a key, then to a key (a log between two keys comes in both: kept once).

    With `any_contract` the contracts are not named: every contract's Transfer logs touching a key
    (the configured ones among them keep their configured asset)."""
    try:
        sent, received = await _run_all(
            [
                _logs_range(source, first, last, [TRANSFER_TOPIC, topics], any_contract=any_contract),
                _logs_range(source, first, last, [TRANSFER_TOPIC, None, topics], any_contract=any_contract),
            ]
        )
    except BadNodeAnswer as exc:
        if not source._node_filter:
            raise
        source._node_filter = False
        log.warning(
            "the node refused an eth_getLogs topic filter; filtering Transfer logs here instead",
            chain=source.name,
            error=str(exc),
        )
        return await _logs_range(source, first, last, any_contract=any_contract)
    found = {(item.height, item.index): item for item in sent}
    for item in received:
        other = found.setdefault((item.height, item.index), item)
        if other != item:
            raise BadNodeAnswer(
                f"chain {source.name}: eth_getLogs for block {item.height}: log index {item.index} differs "
                "between two answers"
            )
    return sorted(found.values(), key=lambda item: (item.height, item.index))


async def _logs_range(
    source: EvmSource, first: int, last: int, topics: list[Any] | None = None, *, any_contract: bool = False
) -> list[_Log]:
    what = f"block {first}" if first == last else f"blocks {first}-{last}"
    query: dict[str, Any] = {"fromBlock": hex(first), "toBlock": hex(last)}
    if not any_contract:
        query["address"] = list(source.tokens)
    query["topics"] = topics or [TRANSFER_TOPIC]
    params = [query]
    ((result, error),) = await source.rpc.replies([Call("eth_getLogs", tuple(params), what)])
    if error is not None:
        message = error.message
        if first < last and _GETLOGS_TOO_LARGE.search(message) and not (topics and "topic" in message.lower()):
            middle = (first + last) // 2
            low, high = await _run_all(
                [
                    _logs_range(source, first, middle, topics, any_contract=any_contract),
                    _logs_range(source, middle + 1, last, topics, any_contract=any_contract),
                ]
            )
            return low + high
        raise BadNodeAnswer(f"chain {source.name}: eth_getLogs for {what}: {_rpc_error(error)}")
    try:
        return _parse_logs(source.tokens, result, first, last, any_contract)
    except _Invalid as exc:
        raise BadNodeAnswer(f"chain {source.name}: eth_getLogs for {what}: {exc}") from None
