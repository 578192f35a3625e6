"""The SQLite driver's transactions when they end badly: a wait for the write lock cancelled, a commit
refused. The connection must come out of each with no transaction open, or every later write of the
process fails ("cannot start a transaction within a transaction")."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from depositwatch.store.drivers import SqliteDriver


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SqliteDriver, SqliteDriver]]:
    """Two drivers on one file, as two processes of a parallel replay hold it."""
    path = str(tmp_path / "store.db")
    ours, theirs = SqliteDriver(path), SqliteDriver(path)
    await ours.open()
    await theirs.open()
    async with ours.transaction() as conn:
        await conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    try:
        yield ours, theirs
    finally:
        await ours.close()
        await theirs.close()


async def test_a_wait_for_the_write_lock_cancelled_leaves_no_transaction_open(
    pair: tuple[SqliteDriver, SqliteDriver],
) -> None:
    """The other connection holds the write lock; ours waits in BEGIN (its busy timeout) and is cancelled
    there, as a task group cancels a worker's lease renewal. The connection's thread still runs the
    BEGIN once the lock is free: the driver must roll that transaction back, and the next one works."""
    ours, theirs = pair
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with theirs.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES (1)")
            held.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await held.wait()
    entered = asyncio.Event()

    async def write() -> None:
        async with ours.transaction() as conn:
            entered.set()
            await conn.execute("INSERT INTO t VALUES (2)")

    waiting = asyncio.create_task(write())
    await asyncio.sleep(0.2)  # in BEGIN IMMEDIATE, waiting for the lock
    assert not entered.is_set()
    waiting.cancel()  # its roll-back waits behind the BEGIN, which waits for the lock
    release.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with ours.transaction() as conn:
        await conn.execute("INSERT INTO t VALUES (3)")
    async with ours.read() as conn:
        assert [r[0] for r in await conn.fetch("SELECT n FROM t ORDER BY n")] == [1, 3]


async def test_a_commit_refused_rolls_back_and_the_next_transaction_works(
    pair: tuple[SqliteDriver, SqliteDriver],
) -> None:
    """A deferred constraint fails at COMMIT, which leaves SQLite's transaction open: the driver rolls it
    back, raises the refusal, and nothing of it is stored."""
    ours, _ = pair
    async with ours.transaction() as conn:
        await conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        await conn.execute("CREATE TABLE child (id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")

    async def orphan() -> None:
        async with ours.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES (7)")
            await conn.execute("INSERT INTO child VALUES (42)")  # no parent 42: refused at COMMIT

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
        await orphan()
    async with ours.transaction() as conn:
        await conn.execute("INSERT INTO t VALUES (8)")
    async with ours.read() as conn:
        assert [r[0] for r in await conn.fetch("SELECT n FROM t")] == [8]


async def test_a_body_cancelled_mid_statement_rolls_back(pair: tuple[SqliteDriver, SqliteDriver]) -> None:
    """Cancelled while a statement of the body runs in the connection's thread: rolled back behind it."""
    ours, _ = pair
    started = asyncio.Event()

    async def write() -> None:
        async with ours.transaction() as conn:
            await conn.execute("INSERT INTO t VALUES (5)")
            started.set()
            await conn.execute(
                "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 300000)"
                " INSERT INTO t SELECT x + 10 FROM r"
            )

    task = asyncio.create_task(write())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with ours.transaction() as conn:
        await conn.execute("INSERT INTO t VALUES (6)")
    async with ours.read() as conn:
        assert [r[0] for r in await conn.fetch("SELECT n FROM t")] == [6]
