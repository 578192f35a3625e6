"""Retention: settled outbox history pruned in batches (whole alerts, revisions never reused), matches
kept unless configured; `db prune [--dry-run]` once, and the daemon periodically with a metric."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from depositwatch.cli import main
from depositwatch.config import RetentionConfig
from depositwatch.models import BlockRef
from depositwatch.store import SqlStore, open_store
from depositwatch.store.retention import DAY, PruneResult, prune_once
from tests.daemon.test_daemon import Setup, sqlite_setup, stop, wait_until_async
from tests.receivers import AlertMaker
from tests.store.rigs import _reset_logging  # noqa: F401 (_reset_logging: an autouse fixture)

__all__ = ["sqlite_setup"]  # the daemon fixture, shared


async def settled_history(store: SqlStore) -> AlertMaker:
    """Alerts 1 and 2 detected and confirmed 40 days ago (1 delivered, 2 one delivered one dead);
    alert 3 detected then too but still pending."""
    maker = AlertMaker(store, confirmations=2)
    await maker.block([(1, 10), (2, 20)])
    await maker.block([(3, 30)])  # confirms 1 and 2
    planned = await store.outbox.unplanned(100)
    await store.outbox.plan({m.seq: ["hook"] for m in planned}, time.time())
    for message in planned:
        if message.order_key.endswith(maker_address(2)) and message.event == "confirmed":
            await store.outbox.failed(message.seq, "hook", "HTTP 400", None)
        elif not message.order_key.endswith(maker_address(3)):
            await store.outbox.delivered(message.seq, "hook", time.time())
    async with store.db.transaction() as conn:
        await conn.execute("UPDATE outbox SET created_at = created_at - $1", 40 * DAY)
    return maker


def maker_address(i: int) -> str:
    return "0x" + (0x2200000000000000000000000000000000000000 + i).to_bytes(20, "big").hex()


async def test_prune_removes_settled_alerts_in_batches_and_never_reuses_a_revision(store: SqlStore) -> None:
    maker = await settled_history(store)
    assert (await store.outbox.counts())["pending"] == 1
    kept_seq = next(m.seq for m in await store.outbox.messages(status="pending"))
    retention = RetentionConfig(outbox_days=30, batch=1)
    assert await prune_once(store, retention, dry_run=True) == PruneResult(4, 0)
    assert len(await store.outbox.messages(limit=100)) == 5  # a dry run removes nothing
    pruned: list[tuple[str, int]] = []
    result = await prune_once(store, retention, on_pruned=lambda t, n: pruned.append((t, n)))
    assert result == PruneResult(4, 0)
    assert pruned == [("outbox", 2), ("outbox", 2)]  # one alert (two messages) per batch of 1
    assert [m.seq for m in await store.outbox.messages(limit=100)] == [kept_seq]
    async with store.db.read() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM deliveries") == 1
        assert await conn.fetchval("SELECT COUNT(*) FROM matches") == 3  # kept: matches_days = 0
    assert await prune_once(store, RetentionConfig(outbox_days=60)) == PruneResult(0, 0)  # younger than 60 days

    # A reorg retracts the pruned alerts: their next messages take revision 3, not a key already seen.
    cursor = await store.get_cursor("live:eth")
    assert cursor is not None
    await store.rewind(maker.scope, cursor, maker.policy, BlockRef(0, "h0"))
    retractions = await store.outbox.messages(limit=100)
    revs = {m.order_key.rsplit(":", 1)[1]: m.rev for m in retractions if m.event == "retracted"}
    assert revs == {maker_address(1): 3, maker_address(2): 3, maker_address(3): 2}


async def test_matches_go_only_when_configured(store: SqlStore) -> None:
    await settled_history(store)
    async with store.db.transaction() as conn:
        await conn.execute("UPDATE matches SET updated_at = updated_at - $1", 40 * DAY)
    assert (await prune_once(store, RetentionConfig(outbox_days=0))).matches == 0
    result = await prune_once(store, RetentionConfig(outbox_days=0, matches_days=30, batch=1))
    assert result == PruneResult(0, 2)  # the two confirmed; the one only seen is not settled
    async with store.db.read() as conn:
        assert await conn.fetchval("SELECT status FROM matches") == "seen"


async def test_db_prune_command(capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    """`db prune --dry-run` counts, `db prune` removes; the flags override the config."""
    store = await open_store(store_url, migrate=True)
    try:
        await settled_history(store)
    finally:
        await store.close()
    code = await asyncio.to_thread(main, ["db", "prune", "--dry-run", "--store", store_url])
    assert (code, capsys.readouterr().out) == (
        0,
        "would remove 4 outbox message(s) older than 30 days and 0 match(es) older than 0 days;"
        " matches kept (retention.matches_days = 0)\n",
    )
    code = await asyncio.to_thread(main, ["db", "prune", "--outbox-days", "50", "--store", store_url])
    assert code == 0 and capsys.readouterr().out.startswith("removed 0 outbox message(s) older than 50 days")
    code = await asyncio.to_thread(main, ["db", "prune", "--store", store_url])
    assert code == 0 and capsys.readouterr().out.startswith("removed 4 outbox message(s)")
    with pytest.raises(SystemExit) as refused:
        main(["db", "prune", "--outbox-days", "-1", "--store", store_url])
    assert refused.value.code == 2 and "0..36500" in capsys.readouterr().err


async def test_the_daemon_prunes_and_counts(sqlite_setup: Setup, tmp_path: Path) -> None:
    """With [retention] set the running daemon prunes settled history and counts it in /metrics."""
    store = await open_store(sqlite_setup.store_url, migrate=True)
    try:
        await settled_history(store)
    finally:
        await store.close()
    config = sqlite_setup.config()
    config.write_text(config.read_text() + "\n[retention]\noutbox_days = 30\ninterval = 1\nbatch = 1\n")
    daemon = await sqlite_setup.start(config)
    async with aiohttp.ClientSession() as http:

        async def pruned() -> float | None:
            async with http.get(f"{daemon.http}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith('depositwatch_pruned_rows_total{table="outbox"}'):
                        return float(line.rsplit(" ", 1)[1])
            return None

        # The pending one is delivered by the daemon's dispatcher first, then old and settled too.
        await wait_until_async(pruned, lambda v: v == 5)
    assert await stop(daemon) == 0
    store = await open_store(sqlite_setup.store_url)
    try:
        assert await store.outbox.messages(limit=100) == []
    finally:
        await store.close()
