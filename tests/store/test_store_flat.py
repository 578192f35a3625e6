"""A replay's commits cost the same at any length of the store; scratch settings only where nothing must survive."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from bench.store_flat_bench import CHAIN, WATCH_CSV, make_block, templates

from depositwatch.addressbook import ChainDirectory, ChainInfo, read_book_csv
from depositwatch.commands.trees import import_book
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.matcher import match_block
from depositwatch.pipeline import make_policy
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, Cursor, Scope, SqlStore, open_store
from depositwatch.store.drivers import CACHE_KIB, SqliteDriver


async def _pragma(store: SqlStore, name: str) -> object:
    async with store.db.read() as conn:
        return await conn.fetchval(f"PRAGMA {name}")


async def test_the_daemons_sqlite_store_syncs_every_commit(tmp_path: Path) -> None:
    """The store the daemon (and a configured replay) opens keeps FULL sync and WAL; only its cache grows."""
    store = await open_store(f"sqlite:///{tmp_path}/depositwatch.db", migrate=True)
    try:
        assert await _pragma(store, "synchronous") == 2  # FULL
        assert await _pragma(store, "journal_mode") == "wal"
        assert await _pragma(store, "cache_size") == -CACHE_KIB
        assert await _pragma(store, "foreign_keys") == 1
    finally:
        await store.close()


async def test_a_scratch_store_skips_fsync(tmp_path: Path) -> None:
    """An ad-hoc replay's temporary store (`scratch`) is written without fsync, and says so in its settings."""
    store = await open_store(f"sqlite:///{tmp_path}/replay.db", migrate=True, scratch=True)
    try:
        assert await _pragma(store, "synchronous") == 0  # OFF
        assert await _pragma(store, "cache_size") == -CACHE_KIB
    finally:
        await store.close()
    assert "synchronous=FULL" in SqliteDriver(":memory:").pragmas()
    assert "synchronous=OFF" in SqliteDriver(":memory:", scratch=True).pragmas()


async def replay_commits(store: SqlStore, blocks: int, work: Callable[[], Awaitable[int]]) -> dict[int, int]:
    """Commit `blocks` blocks of five matches into a replay scope 20 at a time, reading each batch back as
    replay does; `work()` after each batch is that batch's work (what the caller counts)."""
    rows = read_book_csv(WATCH_CSV, ChainDirectory({CHAIN: ChainInfo("evm", None)}), source="watch")
    await import_book(store, rows, dry_run=False)
    chain = ChainConfig(name=CHAIN, kind="evm", network="adhoc", chain_id=1, rpc_urls=["http://127.0.0.1:1"])
    policy = make_policy(chain, AlertsConfig())
    scope = Scope.replay("flat", False)
    book = (await AddressRegistry.load(store, [CHAIN])).book(CHAIN)
    cursor = Cursor(scope.name, CHAIN, 0, make_block(0, []).hash, 1, 10_000)
    await store.set_cursor(cursor)
    kinds = templates(5)
    done: dict[int, int] = {}
    await work()
    for first in range(1, blocks + 1, 20):
        effects = []
        for height in range(first, first + 20):
            block = make_block(height, kinds)
            effects.append(BlockEffects(block, match_block(CHAIN, block, book)))
        cursor = await store.commit_blocks(scope, cursor, policy, effects, 10_000)
        found = await store.matches(scope, heights=(first, first + 19))
        done[first + 19] = await work()
        assert [row["block_height"] for row in found] == [h for h in range(first, first + 20) for _ in range(5)]
    return done


def assert_flat(work: dict[int, int], early: range, late: range, slack: int = 0) -> None:
    """The median work of the batches ending at the `late` heights is at most 1.3 times that at the
    `early` ones (plus `slack`, for counts that are near zero)."""
    first, last = sorted(work[h] for h in early), sorted(work[h] for h in late)
    assert last[len(last) // 2] <= 1.3 * first[len(first) // 2] + slack, (first, last)


async def test_replay_commit_work_does_not_grow_with_the_store(tmp_path: Path) -> None:
    """The SQLite work of one replay commit (20 blocks, 5 matches each) and of its read-back is the same
    after 100 blocks as after 4,000: counted in SQLite VM steps, not in time. A commit that searched every
    earlier match (the confirmation by height, the read-back without the chain) grew with the store."""
    store = await open_store(f"sqlite:///{tmp_path}/replay.db", migrate=True, scratch=True)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    async def taken() -> int:
        n, steps[0] = steps[0], 0
        return n

    try:
        assert isinstance(store.db, SqliteDriver) and store.db._db is not None
        await store.db._db.set_progress_handler(count, 100)
        work = await replay_commits(store, 4_000, taken)
    finally:
        await store.close()
    # medians: a B-tree one level deeper costs a little; a scan of the matches so far costs 8 times more here
    assert_flat(work, range(100, 601, 20), range(3_500, 4_001, 20))


async def server_counts(store: SqlStore, stats: asyncpg.Connection, sql: str) -> int:
    """A sum over the server's statistics views (`sql`), once the store's connection reported its counts."""
    async with store.db.read() as conn:  # the pool's one connection: its counts reach the server now
        await conn.fetchval("SELECT pg_stat_force_next_flush()")
    return int(await stats.fetchval(sql) or 0)


def counted_since(count: Callable[[], Awaitable[int]]) -> Callable[[], Awaitable[int]]:
    """`count()`'s growth since the last call."""
    previous = [0]

    async def since() -> int:
        now = await count()
        taken, previous[0] = now - previous[0], now
        return taken

    return since


async def test_postgres_plans_follow_the_matches_as_they_grow(pg_url: str) -> None:
    """The rows PostgreSQL reads for a replay commit and its read-back are as few after 4,000 blocks as
    after 100 (counted by the server, not timed). Without statistics (a fresh store, never analyzed: this
    server runs no autovacuum) the planner took the scope for 0.5 % of `matches` and each commit's lookup
    of known ids read the scope's every row through an index beginning with it: a million-block replay
    into a fresh store fell from 1,281 to 204 blocks/s within 30,000 blocks. The store now analyzes the
    table as it writes it (`store/statistics.py`)."""
    store = await open_store(pg_url, migrate=True)
    stats = await asyncpg.connect(pg_url)
    rows_read = (
        "SELECT (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes WHERE relname = 'matches'"
        " AND schemaname = current_schema()) + (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables"
        " WHERE relname = 'matches' AND schemaname = current_schema())"
    )
    try:
        work = await replay_commits(store, 4_000, counted_since(lambda: server_counts(store, stats, rows_read)))
        assert store.statistics.analyzed >= 3
    finally:
        await stats.close()
        await store.close()
    assert_flat(work, range(100, 601, 20), range(3_500, 4_001, 20), slack=20)


async def test_postgres_forgets_old_blocks_in_pages_that_do_not_grow(pg_url: str) -> None:
    """Each commit forgets the block hashes too deep for a reorg: on PostgreSQL a delete leaves dead
    index entries until a vacuum (none on a server without autovacuum, a minute's worth with it), and a
    delete of every row below the bound walked all of them again at every commit, so the index pages it
    touched grew with the run (the million-block replay's PostgreSQL backend spent most of its time there
    by block 250,000). The delete starts where no row can be left."""
    store = await open_store(pg_url, migrate=True)
    stats = await asyncpg.connect(pg_url)
    pages = (
        "SELECT coalesce(sum(idx_blks_hit + idx_blks_read), 0) FROM pg_statio_user_indexes"
        " WHERE relname = 'blocks' AND schemaname = current_schema()"
    )
    try:
        work = await replay_commits(store, 6_000, counted_since(lambda: server_counts(store, stats, pages)))
    finally:
        await stats.close()
        await store.close()
    assert_flat(work, range(300, 801, 20), range(5_500, 6_001, 20), slack=5)
