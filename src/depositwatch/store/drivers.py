"""Database drivers: SQLite (aiosqlite) and PostgreSQL (asyncpg) behind one small interface.

SQL is written once, with PostgreSQL's `$1` placeholders; the SQLite driver rewrites them to SQLite's
numbered `?1` form, which binds the same way.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiosqlite
import asyncpg

from depositwatch.store.base import SchemaError, StoreError

_PLACEHOLDER = re.compile(r"\$(\d+)")
# SQLite's page cache per connection, in KiB (its default is 2 MiB): the matches table's indexes of a
# long replay must stay in memory, or every commit reads its pages back from the file.
CACHE_KIB = 64 * 1024
IN_CHUNK = 500  # keys per `IN (...)` list: well under SQLite's and PostgreSQL's parameter limits


class Conn(Protocol):
    """A connection inside a transaction (or a read)."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it changed."""

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement for each row."""

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """All rows; rows support access by name and by position."""

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        """The first row or None."""

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or None."""

    async def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Bulk-insert rows (COPY on PostgreSQL)."""


async def fetch_in(conn: Conn, sql: str, args: Sequence[Any], keys: Collection[Any], tail: str = "") -> list[Any]:
    """`sql IN (keys) tail` for any number of keys, in chunks; `sql` ends with the column compared
    and its other parameters are `args`."""
    ordered = list(keys)
    rows: list[Any] = []
    for i in range(0, len(ordered), IN_CHUNK):
        batch = ordered[i : i + IN_CHUNK]
        marks = ", ".join(f"${len(args) + j + 1}" for j in range(len(batch)))
        rows += await conn.fetch(f"{sql} IN ({marks}){tail}", *args, *batch)
    return rows


class Driver(Protocol):
    """A database: transactions, reads, streaming."""

    dialect: str

    def transaction(self) -> Any:
        """`async with driver.transaction() as conn:` commits on success, rolls back on error."""

    def read(self) -> Any:
        """`async with driver.read() as conn:` for queries outside a transaction."""

    def stream(self, sql: str, *args: Any, chunk: int = 50_000) -> AsyncIterator[list[Any]]:
        """Rows of a large query in chunks, without holding all of them."""

    async def close(self) -> None:
        """Close every connection."""


class _SqliteConn:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self._db.execute(_sqlite_sql(sql), args)
        count = cursor.rowcount
        await cursor.close()
        return count

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._db.executemany(_sqlite_sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._db.execute_fetchall(_sqlite_sql(sql), args))

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        async with self._db.execute(_sqlite_sql(sql), args) as cursor:
            return await cursor.fetchone()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
        await self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


@functools.lru_cache(maxsize=1024)
def _sqlite_sql(sql: str) -> str:
    return _PLACEHOLDER.sub(r"?\1", sql)


def sqlite_path(url: str) -> str:
    """`sqlite:///rel.db` → `rel.db`, `sqlite:////abs.db` → `/abs.db`, `sqlite://:memory:` → `:memory:`."""
    if url == "sqlite://:memory:":
        return ":memory:"
    return url.removeprefix("sqlite:///")


def _is_file(path: str) -> bool:
    return Path(path).is_file()


def _read_write_uri(path: str) -> str:
    """A SQLite URI that opens an existing file for reading and writing, and never creates one."""
    return f"file:{quote(str(Path(path).absolute()))}?mode=rw"


class SqliteDriver:
    """The embedded default: one writer connection guarded by a lock, WAL so readers do not wait."""

    dialect = "sqlite"

    def __init__(self, path: str, *, create: bool = True, scratch: bool = False) -> None:
        self.path = path
        self.create = create
        self.scratch = scratch
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Open the database file; with `create`, make it (and its folder) when missing.

        Without `create` a missing file is an error: a mistyped path must not turn into an empty store
        that reads as "nothing to see".
        """
        if self.path != ":memory:":
            if self.create:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            elif not _is_file(self.path):
                raise SchemaError(
                    f"no SQLite store at {self.path}: check the path (`depositwatch db migrate` creates a new store)"
                )
        self._db = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        try:
            if self.create or self.path == ":memory:":
                db = await aiosqlite.connect(self.path, isolation_level=None)
            else:  # mode=rw: never create the file, even if it vanished since the check above
                uri = _read_write_uri(self.path)
                db = await aiosqlite.connect(uri, isolation_level=None, uri=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc
        db.row_factory = sqlite3.Row
        for pragma in self.pragmas():
            await db.execute(f"PRAGMA {pragma}")
        return db

    def pragmas(self) -> tuple[str, ...]:
        """The settings every connection gets.

        A store's own (the daemon's, a configured replay's): FULL, so a committed alert survives a power
        cut, not only a crash. A scratch store (an ad-hoc replay's temporary file, deleted when the run
        ends) holds nothing that must outlive the process: no fsync at all. Both get a page cache of
        `CACHE_KIB`, so the indexes a commit touches stay in memory as the store grows.
        """
        durability = ("synchronous=OFF",) if self.scratch else ("synchronous=FULL",)
        return ("journal_mode=WAL", *durability, f"cache_size=-{CACHE_KIB}", "foreign_keys=ON", "busy_timeout=10000")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteConn]:
        """BEGIN IMMEDIATE ... COMMIT; anything that ends it otherwise rolls it back.

        The connection's statements run in its own thread, in order, and a cancelled await does not stop
        one: a BEGIN cancelled while it waits for the write lock still begins once the lock is free, and a
        refused COMMIT leaves the transaction open. Either would leave the connection inside a transaction
        nobody owns, and every later write of the process would fail. So every way out but a COMMIT that
        succeeded queues a ROLLBACK behind whatever is still running.
        """
        db = self._db
        assert db is not None, "driver not open"
        async with self._lock:
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield _SqliteConn(db)
                await db.execute("COMMIT")
            except BaseException:
                await _roll_back(db)
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[_SqliteConn]:
        assert self._db is not None, "driver not open"
        async with self._lock:
            yield _SqliteConn(self._db)

    async def stream(self, sql: str, *args: Any, chunk: int = 50_000) -> AsyncIterator[list[Any]]:
        db = await self._connect()
        try:
            async with db.execute(_sqlite_sql(sql), args) as cursor:
                while rows := await cursor.fetchmany(chunk):
                    yield list(rows)
        finally:
            await db.close()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None


async def _roll_back(db: aiosqlite.Connection) -> None:
    """ROLLBACK whatever transaction the connection holds, queued behind any statement still running; none
    open (a BEGIN that failed, a COMMIT that rolled back by itself) is fine. Shielded: a second
    cancellation while it runs does not leave it undone."""
    try:
        await asyncio.shield(db.execute("ROLLBACK"))
    except sqlite3.OperationalError as exc:
        if "no transaction is active" not in str(exc):
            raise


class _PgConn:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.raw = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self.raw.execute(sql, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.raw.executemany(sql, list(rows))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self.raw.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        return await self.raw.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.raw.fetchval(sql, *args)

    async def copy_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        await self.raw.copy_records_to_table(table, columns=list(columns), records=rows)


class PostgresDriver:
    """Production: an asyncpg pool; schema chosen by the URL's `options=-csearch_path=...` if any."""

    dialect = "postgres"

    def __init__(self, url: str, password: str | None = None, pool_size: int = 5) -> None:
        self.url = url
        self._password = password
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        """Create the pool; a clear StoreError when the server cannot be reached."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, password=self._password, min_size=1, max_size=self._pool_size, command_timeout=60
            )
        except (OSError, asyncpg.PostgresError) as exc:
            where = urlsplit(self.url)
            raise StoreError(f"cannot connect to PostgreSQL at {where.hostname}:{where.port or 5432}: {exc}") from exc

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool (for LISTEN and advisory locks)."""
        assert self._pool is not None, "driver not open"
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgConn]:
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    yield _PgConn(conn)
            except asyncpg.InternalClientError as exc:
                # The server ended this session (a takeover, an idle limit) and its farewell arrived while
                # the commit was being sent: asyncpg then says "cannot switch to state ...". Nothing was
                # committed; say so as the lost connection it is, like the other timings of the same event.
                if not conn.is_closed():
                    raise
                raise asyncpg.ConnectionDoesNotExistError(f"the server ended this session: {exc}") from exc

    @asynccontextmanager
    async def read(self) -> AsyncIterator[_PgConn]:
        async with self.pool.acquire() as conn:
            yield _PgConn(conn)

    async def stream(self, sql: str, *args: Any, chunk: int = 50_000) -> AsyncIterator[list[Any]]:
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            cursor = await conn.cursor(sql, *args)
            while rows := await cursor.fetch(chunk):
                yield list(rows)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
