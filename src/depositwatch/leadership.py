"""Who follows what: one leader per chain through PostgreSQL advisory locks; SQLite runs one instance."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import asyncpg
import structlog

if TYPE_CHECKING:
    from depositwatch.store import SqlStore

log = structlog.get_logger(__name__)


class AlreadyRunning(Exception):
    """Another instance already uses this SQLite store."""


class Leases(Protocol):
    """Exclusive right to follow a chain (or run the dispatcher), one holder among all instances."""

    async def try_acquire(self, name: str) -> bool:
        """Take the lease if it is free; True while held."""

    async def still_held(self, name: str) -> bool:
        """False once the lease is lost (its connection died)."""

    async def release_all(self) -> None:
        """Give every lease back."""


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a lease name."""
    return int.from_bytes(hashlib.sha256(f"depositwatch:{name}".encode()).digest()[:8], "big", signed=True)


class PostgresLeases:
    """Session advisory locks, each on a connection of its own: if this process dies, its locks go with it."""

    def __init__(self, dsn: str, password: str | None = None) -> None:
        self.dsn = dsn
        self.password = password
        self._held: dict[str, asyncpg.Connection] = {}

    async def try_acquire(self, name: str) -> bool:
        if name in self._held:
            return await self.still_held(name)
        conn = await asyncpg.connect(self.dsn, password=self.password)
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(name))
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._held[name] = conn
        log.info("lease acquired", lease=name)
        return True

    async def still_held(self, name: str) -> bool:
        conn = self._held.get(name)
        if conn is None:
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), 5)
            return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            self._held.pop(name, None)
            conn.terminate()
            log.error("lease lost", lease=name)
            return False

    async def release_all(self) -> None:
        for conn in self._held.values():
            try:
                await conn.close(timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()
        self._held.clear()


class SingleInstance:
    """SQLite: one instance per store file, enforced with a lock file beside it; every lease is ours."""

    def __init__(self, db_path: str) -> None:
        self.path = Path(db_path + ".lock") if db_path != ":memory:" else None
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the store or raise AlreadyRunning naming the other process."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another depositwatch instance (pid {other}) is running on the SQLite store "
                f"{self.path.with_suffix('')}; "
                "SQLite runs a single instance: use PostgreSQL to run several"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    async def try_acquire(self, name: str) -> bool:
        return True

    async def still_held(self, name: str) -> bool:
        return True

    async def release_all(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def take_dispatcher(store: SqlStore, password: str | None = None) -> Leases:
    """The right to deliver alerts from this store, for a dispatcher running outside the daemon.

    Raises AlreadyRunning when the daemon (or another dispatcher) delivers from the same store: two
    dispatchers would send every message twice (same keys, but twice the noise).
    """
    from depositwatch.store.drivers import PostgresDriver, SqliteDriver

    if isinstance(store.db, PostgresDriver):
        leases = PostgresLeases(store.db.url, password)
        if not await leases.try_acquire("dispatcher"):
            raise AlreadyRunning("another instance delivers alerts from this PostgreSQL store (the daemon?)")
        return leases
    assert isinstance(store.db, SqliteDriver)
    single = SingleInstance(store.db.path)
    single.acquire()
    return single
