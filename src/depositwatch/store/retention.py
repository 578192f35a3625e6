"""Retention: settled history pruned in small batches, once (`db prune`) or periodically (the daemon)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from depositwatch.config import RetentionConfig
from depositwatch.store.sql import SqlStore
from depositwatch.timeutil import now

log = structlog.get_logger(__name__)

DAY = 86_400


@dataclass(frozen=True, slots=True)
class PruneResult:
    """Rows removed (or, for a dry run, that would be) per table."""

    outbox: int
    matches: int


async def prune_once(
    store: SqlStore,
    retention: RetentionConfig,
    *,
    at: int | None = None,
    dry_run: bool = False,
    on_pruned: Callable[[str, int], None] | None = None,
) -> PruneResult:
    """One pass: batches until nothing older than the configured ages is left. Each batch is its own
    transaction, so the dispatcher and the followers never wait long for the store."""
    stamp = now() if at is None else at
    counts = {"outbox": 0, "matches": 0}
    ages = {"outbox": retention.outbox_days, "matches": retention.matches_days}
    for table, days in ages.items():
        if not days:
            continue  # 0 keeps everything
        before = stamp - int(days * DAY)
        prune = store.outbox.prune if table == "outbox" else store.prune_matches
        if dry_run:
            counts[table] = await prune(before, retention.batch, dry_run=True)
            continue
        while True:
            removed = await prune(before, retention.batch)
            counts[table] += removed
            if on_pruned is not None and removed:
                on_pruned(table, removed)
            if removed == 0:
                break
            await asyncio.sleep(0)  # let the other tasks in between batches
    return PruneResult(counts["outbox"], counts["matches"])


async def run_retention(
    store: SqlStore,
    retention: RetentionConfig,
    stopping: asyncio.Event,
    on_pruned: Callable[[str, int], None] | None = None,
) -> None:
    """The daemon's task: a pass at start, then one every `interval` seconds, until `stopping`."""
    while not stopping.is_set():
        try:
            result = await prune_once(store, retention, on_pruned=on_pruned)
            if result.outbox or result.matches:
                log.info("retention pruned settled history", outbox=result.outbox, matches=result.matches)
        except Exception as exc:  # a store hiccup must not stop the daemon; the next pass retries
            log.error("retention pass failed; will retry", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), retention.interval)
