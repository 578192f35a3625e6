"""Store operations of the lease table: take, renew, give back, and the fence check of every write.

Times are the database's own (`expires_at` in unix seconds of the server's clock): instances need not
agree on the time, and a frozen instance's clock cannot extend its lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import structlog

from depositwatch.store.base import Fence, LeaseLost

if TYPE_CHECKING:
    from depositwatch.store.drivers import Conn, Driver

# The database's clock, in unix seconds with a fraction: PostgreSQL's wall clock now (not the
# transaction's start), SQLite's julian day converted.
DB_NOW = {
    "postgres": "EXTRACT(EPOCH FROM clock_timestamp())::float8",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
# A PostgreSQL session, named so that a new backend reusing the pid is not taken for the old one.
PG_SESSION = "pid::text || ':' || (EXTRACT(EPOCH FROM backend_start) * 1000000)::bigint::text"
MY_PG_SESSION = f"SELECT {PG_SESSION} FROM pg_stat_activity WHERE pid = pg_backend_pid()"

log = structlog.get_logger(__name__)
LOCK_WAIT_MS = 1000  # how long an attempt to take a lease waits for its row; the caller retries


@dataclass(frozen=True, slots=True)
class LeaseRow:
    """A lease as the table shows it (for health, the CLI and tests)."""

    name: str
    holder: str
    epoch: int
    expires_in: float  # seconds of database time; negative once expired
    session: str | None


# The PostgreSQL `application_name` of a holder's fenced transactions (at most 63 bytes), computed by the
# server from its database and schema as well as the holder: deployments sharing a server (other schemas,
# other databases) with an instance of the same name are never taken for this one.
FENCED_NAME = "'depositwatch lease ' || left(md5(current_database() || '/' || current_schema() || '/' || $1), 24)"


async def limit_idle(conn: Conn, dialect: str, ttl: float, holder: str) -> None:
    """Bound what a holder frozen in the middle of a transaction (SIGSTOP, a stalled VM) can keep
    locked, the lease row among it: PostgreSQL ends the session once the transaction sits idle for
    `ttl` seconds, and the transaction is named after its holder, so that a standby taking over an
    expired lease can end it too when the server is still busy with it (a frozen client in the middle
    of a pipelined statement is not idle)."""
    if dialect == "postgres":
        await conn.execute(f"SET LOCAL idle_in_transaction_session_timeout = {max(1000, int(ttl * 1000))}")
        await conn.execute(f"SELECT set_config('application_name', {FENCED_NAME}, true)", holder)


async def check_fence(conn: Conn, dialect: str, fence: Fence | None) -> None:
    """Raise LeaseLost unless the lease row still shows `fence`'s holder and epoch (None: unfenced).

    On PostgreSQL the row is share-locked until the transaction ends, so a takeover waits for this
    write to commit and can never slip between the check and the commit. SQLite's write transactions
    are exclusive already.
    """
    if fence is None:
        return
    await limit_idle(conn, dialect, fence.ttl, fence.holder)
    lock = " FOR SHARE" if dialect == "postgres" else ""
    row = await conn.fetchrow(f"SELECT holder, epoch FROM leases WHERE name = $1{lock}", fence.name)
    if row is None or (row["holder"], int(row["epoch"])) != (fence.holder, fence.epoch):
        now = "none" if row is None else f"{row['holder']} at epoch {row['epoch']}"
        raise LeaseLost(
            f"lease {fence.name} taken over (held by {now}, not {fence.holder} at epoch {fence.epoch}): nothing written"
        )


class Leases:
    """The lease table (`SqlStore.leases`)."""

    def __init__(self, db: Driver) -> None:
        self.db = db

    async def acquire(
        self, name: str, holder: str, ttl: float, session: str | None = None, *, exclusive: bool = False
    ) -> Fence | None:
        """Take the lease `name` for `ttl` seconds, or None while another holder has it.

        A holder that still has the row keeps its epoch. Another holder's lease is taken (epoch + 1)
        once it expired, at once when its database session is gone (it died), and always with
        `exclusive` (SQLite: the store's lock file already makes this the only instance).
        """
        try:
            return await self._acquire(name, holder, ttl, session, exclusive)
        except asyncpg.exceptions.LockNotAvailableError:
            return None  # the holder is inside a write on this lease: still alive, or ended once expired

    async def _acquire(self, name: str, holder: str, ttl: float, session: str | None, exclusive: bool) -> Fence | None:
        async with self.db.transaction() as conn:
            return await self.take_in(conn, name, holder, ttl, session, exclusive=exclusive)

    async def take_in(
        self, conn: Conn, name: str, holder: str, ttl: float, session: str | None, *, exclusive: bool = False
    ) -> Fence | None:
        """`acquire` inside the caller's transaction (which also claims what the lease guards, such
        as a replay shard); PostgreSQL raises LockNotAvailableError while the holder is inside a write."""
        now = DB_NOW[self.db.dialect]
        lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
        await self._end_expired(conn, name, holder, exclusive)
        await limit_idle(conn, self.db.dialect, ttl, holder)
        if self.db.dialect == "postgres":  # never wait on a frozen holder's lock: come back instead
            await conn.execute(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
        row = await conn.fetchrow(
            f"SELECT holder, epoch, expires_at - {now} AS remaining, session FROM leases WHERE name = $1{lock}",
            name,
        )
        if row is None:  # two instances starting together: one inserts, the other stands by
            inserted = await conn.execute(
                "INSERT INTO leases (name, holder, epoch, expires_at, session, acquired_at)"
                f" VALUES ($1, $2, 1, {now} + $3, $4, {now}) ON CONFLICT (name) DO NOTHING",
                name,
                holder,
                float(ttl),
                session,
            )
            return Fence(name, holder, 1, ttl) if inserted == 1 else None
        epoch = int(row["epoch"])
        if row["holder"] == holder:
            await conn.execute(
                f"UPDATE leases SET expires_at = {now} + $1, session = $2 WHERE name = $3",
                float(ttl),
                session,
                name,
            )
            return Fence(name, holder, epoch, ttl)
        free = exclusive or row["remaining"] <= 0 or not await self._session_alive(conn, row["session"])
        if not free:
            return None
        await conn.execute(
            f"UPDATE leases SET holder = $1, epoch = $2, expires_at = {now} + $3, session = $4,"
            f" acquired_at = {now} WHERE name = $5",
            holder,
            epoch + 1,
            float(ttl),
            session,
            name,
        )
        return Fence(name, holder, epoch + 1, ttl)

    async def _end_expired(self, conn: Conn, name: str, holder: str, exclusive: bool) -> None:
        """PostgreSQL: when another holder's lease has expired, end its transactions still under way
        (they are fenced and would hold the lease row locked for as long as that holder stays frozen);
        read without a lock, so this never waits for them."""
        if self.db.dialect != "postgres" or exclusive:
            return
        row = await conn.fetchrow(
            f"SELECT holder, expires_at - {DB_NOW['postgres']} AS remaining FROM leases WHERE name = $1", name
        )
        if row is None or row["holder"] == holder or row["remaining"] > 0:
            return
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE application_name = {FENCED_NAME} AND datname = current_database() AND pid <> pg_backend_pid()",
            row["holder"],
        )
        if ended:
            log.warning(
                "ended the transactions of an expired lease holder", lease=name, holder=row["holder"], count=ended
            )

    async def _session_alive(self, conn: Conn, session: str | None) -> bool:
        """Whether the holder's database session still exists (unknown: assume it does)."""
        if session is None or self.db.dialect != "postgres":
            return True
        return bool(
            await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE {PG_SESSION} = $1)", session)
        )

    async def renew(self, fence: Fence, ttl: float, session: str | None = None) -> bool:
        """Extend the lease by `ttl` seconds from now; False when it has been taken over (lost)."""
        now = DB_NOW[self.db.dialect]
        async with self.db.transaction() as conn:
            await limit_idle(conn, self.db.dialect, ttl, fence.holder)
            changed = await conn.execute(
                f"UPDATE leases SET expires_at = {now} + $1, session = $2"
                " WHERE name = $3 AND holder = $4 AND epoch = $5",
                float(ttl),
                session,
                fence.name,
                fence.holder,
                fence.epoch,
            )
        return bool(changed == 1)

    async def holds(self, fence: Fence) -> bool:
        """Whether the lease row still shows this holder and epoch (expired or not)."""
        async with self.db.read() as conn:
            try:
                await check_fence(conn, "read", fence)
            except LeaseLost:
                return False
        return True

    async def release(self, fence: Fence) -> bool:
        """Give the lease back: it expires now, so a standby takes it without waiting."""
        now = DB_NOW[self.db.dialect]
        async with self.db.transaction() as conn:
            await limit_idle(conn, self.db.dialect, fence.ttl, fence.holder)
            changed = await conn.execute(
                f"UPDATE leases SET expires_at = {now} - 1, session = NULL"
                " WHERE name = $1 AND holder = $2 AND epoch = $3",
                fence.name,
                fence.holder,
                fence.epoch,
            )
        return bool(changed == 1)

    async def rows(self) -> list[LeaseRow]:
        """Every lease row, by name."""
        now = DB_NOW[self.db.dialect]
        async with self.db.read() as conn:
            rows = await conn.fetch(
                f"SELECT name, holder, epoch, expires_at - {now} AS remaining, session FROM leases ORDER BY name"
            )
        return [LeaseRow(r["name"], r["holder"], int(r["epoch"]), float(r["remaining"]), r["session"]) for r in rows]
