"""Store operations of a parallel replay: a run's shards, claimed by workers through the lease table.

A shard is claimed in one transaction: its row is picked with `FOR UPDATE SKIP LOCKED` (PostgreSQL;
SQLite's write transactions are exclusive already) among those not done whose lease is free (absent,
expired, ours, or held by a database session that is gone), and the lease of the same name is taken
there, through the lease code of store/leases.py. The worker then commits the shard's blocks under
that lease's fence, renews it while it makes progress (leadership.py), and marks the shard done,
fenced too: a worker that lost its shard to another (frozen past the lease, or dead) writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from depositwatch.store.base import Fence, StoreError
from depositwatch.store.leases import DB_NOW, PG_SESSION, check_fence
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.store.sql import SqlStore


@dataclass(frozen=True, slots=True)
class ReplayRun:
    """A parallel replay run as the store holds it."""

    run_id: str
    chain: str
    start: int
    stop: int
    shard_blocks: int
    send_alerts: bool

    @property
    def scope_name(self) -> str:
        """The scope every shard of the run writes its matches to (that of a single-worker run)."""
        return f"replay:{self.run_id}"

    def shard_name(self, shard: int) -> str:
        """A shard's cursor and lease name."""
        return f"replay:{self.run_id}:{shard}"

    def carried_name(self, shard: int) -> str:
        """The cursor and lease name of a Bitcoin shard read again for earlier shards' outputs."""
        return f"replay:{self.run_id}:{shard}:carried"


@dataclass(frozen=True, slots=True)
class Shard:
    """One contiguous sub-range of a run, and what its worker recorded once it was done."""

    run_id: str
    index: int
    first: int
    last: int
    anchor_hash: str | None = None
    last_hash: str | None = None
    blocks: int = 0
    transfers: int = 0
    done: bool = False
    done_by: str | None = None


def cut(start: int, stop: int, shard_blocks: int) -> list[tuple[int, int]]:
    """`start..stop` (inclusive) as contiguous ranges of `shard_blocks` blocks (the last may be shorter)."""
    if shard_blocks < 1:
        raise ValueError("a shard holds at least one block")
    return [(first, min(stop, first + shard_blocks - 1)) for first in range(start, stop + 1, shard_blocks)]


def _shard(r: Any) -> Shard:
    """A shard from a driver row."""
    return Shard(
        run_id=r["run_id"],
        index=int(r["shard"]),
        first=int(r["first_height"]),
        last=int(r["last_height"]),
        anchor_hash=r["anchor_hash"],
        last_hash=r["last_hash"],
        blocks=int(r["blocks"]),
        transfers=int(r["transfers"]),
        done=r["done_at"] is not None,
        done_by=r["done_by"],
    )


class ShardStore:
    """The replay_runs and replay_shards tables of one store."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.db = store.db

    async def create_run(self, run: ReplayRun) -> ReplayRun:
        """Record the run and its shards, or return the run already recorded under its id (which keeps
        the shard size it was cut with: a resumed run goes on with the same shards)."""
        async with self.db.transaction() as conn:
            row = await conn.fetchrow("SELECT * FROM replay_runs WHERE run_id = $1", run.run_id)
            if row is not None:
                return _run(row)
            inserted = await conn.execute(
                "INSERT INTO replay_runs (run_id, chain, range_start, range_stop, shard_blocks, send_alerts,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING",
                run.run_id,
                run.chain,
                run.start,
                run.stop,
                run.shard_blocks,
                int(run.send_alerts),
                now(),
            )
            if inserted != 1:
                raise StoreError(f"replay run {run.run_id} was created at the same time by another worker: start again")
            await conn.executemany(
                "INSERT INTO replay_shards (run_id, shard, first_height, last_height) VALUES ($1, $2, $3, $4)",
                [
                    (run.run_id, index, first, last)
                    for index, (first, last) in enumerate(cut(run.start, run.stop, run.shard_blocks))
                ],
            )
        return run

    async def run(self, run_id: str) -> ReplayRun | None:
        """The run recorded under this id, if any."""
        async with self.db.read() as conn:
            row = await conn.fetchrow("SELECT * FROM replay_runs WHERE run_id = $1", run_id)
        return None if row is None else _run(row)

    async def shards(self, run_id: str) -> list[Shard]:
        """Every shard of the run, in block order."""
        async with self.db.read() as conn:
            rows = await conn.fetch("SELECT * FROM replay_shards WHERE run_id = $1 ORDER BY shard", run_id)
        return [_shard(r) for r in rows]

    async def claim(self, run: ReplayRun, holder: str, ttl: float, session: str | None) -> tuple[Shard, Fence] | None:
        """Take the first shard not done whose lease is free, with its lease; None when there is none now
        (every open shard is held by a live worker, or all are done)."""
        dialect = self.db.dialect
        clock = DB_NOW[dialect]
        gone = (
            " OR (l.session IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM pg_stat_activity WHERE {PG_SESSION} = l.session))"
            if dialect == "postgres"
            else ""
        )
        lock = " FOR UPDATE OF s SKIP LOCKED" if dialect == "postgres" else ""
        select = (
            "SELECT s.* FROM replay_shards s LEFT JOIN leases l ON l.name = $2 || CAST(s.shard AS TEXT)"
            " WHERE s.run_id = $1 AND s.done_at IS NULL"
            f" AND (l.name IS NULL OR l.holder = $3 OR l.expires_at <= {clock}{gone})"
        )
        passed: list[int] = []
        try:
            async with self.db.transaction() as conn:
                while True:
                    # A shard can look free and its lease be taken all the same: on PostgreSQL another
                    # claim may commit its lease between this statement's snapshot and its row lock. The
                    # lease decides; the next free-looking shard is tried.
                    others = f" AND s.shard NOT IN ({', '.join(map(str, passed))})" if passed else ""
                    row = await conn.fetchrow(
                        f"{select}{others} ORDER BY s.shard LIMIT 1{lock}", run.run_id, f"replay:{run.run_id}:", holder
                    )
                    if row is None:
                        return None
                    shard = _shard(row)
                    name = run.shard_name(shard.index)
                    fence = await self.store.leases.take_in(conn, name, holder, ttl, session)
                    if fence is not None:
                        return shard, fence
                    passed.append(shard.index)
        except asyncpg.exceptions.LockNotAvailableError:
            return None  # its old holder is inside a write right now: looked at again on the next round

    async def set_anchor(self, run: ReplayRun, shard: int, anchor_hash: str, fence: Fence) -> None:
        """Record the parent hash of the shard's first block, as the node gave it (fenced)."""
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            await conn.execute(
                "UPDATE replay_shards SET anchor_hash = $1 WHERE run_id = $2 AND shard = $3",
                anchor_hash,
                run.run_id,
                shard,
            )

    async def finish(
        self, run: ReplayRun, shard: int, last_hash: str, blocks: int, transfers: int, fence: Fence
    ) -> None:
        """Mark the shard done (fenced: LeaseLost, and nothing written, once another worker took it)."""
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            await conn.execute(
                "UPDATE replay_shards SET last_hash = $1, blocks = blocks + $2, transfers = transfers + $3,"
                " done_at = $4, done_by = $5 WHERE run_id = $6 AND shard = $7 AND done_at IS NULL",
                last_hash,
                blocks,
                transfers,
                now(),
                fence.holder,
                run.run_id,
                shard,
            )

    async def add_progress(self, run: ReplayRun, shard: int, blocks: int, transfers: int, fence: Fence) -> None:
        """Count blocks and transfers committed by a worker that then lost the shard or stopped (fenced)."""
        async with self.db.transaction() as conn:
            await check_fence(conn, self.db.dialect, fence)
            await conn.execute(
                "UPDATE replay_shards SET blocks = blocks + $1, transfers = transfers + $2"
                " WHERE run_id = $3 AND shard = $4",
                blocks,
                transfers,
                run.run_id,
                shard,
            )

    async def delete_run(self, run_id: str) -> None:
        """Forget the run's shards, their cursors, blocks and leases (its matches go with its scope), and
        those of the shards read again for earlier outputs (Bitcoin)."""
        prefix = f"replay:{run_id}:"
        async with self.db.transaction() as conn:
            shards = [int(r[0]) for r in await conn.fetch("SELECT shard FROM replay_shards WHERE run_id = $1", run_id)]
            names = [prefix + str(shard) + carried for shard in shards for carried in ("", ":carried")]
            for name in names:
                await conn.execute("DELETE FROM blocks WHERE cursor = $1", name)
                await conn.execute("DELETE FROM cursors WHERE name = $1", name)
                await conn.execute("DELETE FROM leases WHERE name = $1", name)
            await conn.execute("DELETE FROM replay_shards WHERE run_id = $1", run_id)
            await conn.execute("DELETE FROM replay_runs WHERE run_id = $1", run_id)


def _run(r: Any) -> ReplayRun:
    """A run from a driver row."""
    return ReplayRun(
        run_id=r["run_id"],
        chain=r["chain"],
        start=int(r["range_start"]),
        stop=int(r["range_stop"]),
        shard_blocks=int(r["shard_blocks"]),
        send_alerts=bool(r["send_alerts"]),
    )
