"""`SqlStore`: the one implementation of the Store protocol, over either driver.

Every state change is one transaction. Inserts are keyed (matches by (scope, id), outbox messages by
(alert_id, rev)), so repeating a commit after a crash changes nothing.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Unpack

from depositwatch.models import (
    AddressEntry,
    AddressStatus,
    BlockRef,
    Match,
    MatchKind,
    WatchedOutput,
)
from depositwatch.store import book, commit, cursors, mempool_rows, queries
from depositwatch.store.audit import Audit
from depositwatch.store.base import (
    BlockEffects,
    ChainPolicy,
    Cursor,
    ImportResult,
    RegistryRow,
    RevokeResult,
    SchemaError,
    Scope,
    address_entry,
)
from depositwatch.store.book_version import NOTIFY_CHANNEL
from depositwatch.store.drivers import Driver, PostgresDriver
from depositwatch.store.leases import Leases
from depositwatch.store.outbox import Outbox
from depositwatch.store.outputs import add_outputs, unspent_outputs
from depositwatch.store.queries import MatchFilters
from depositwatch.store.reporting import Reports
from depositwatch.store.schema import migrations, statements
from depositwatch.store.statistics import Statistics
from depositwatch.store.tokens import TokenCache
from depositwatch.store.trees import KeyTrees
from depositwatch.timeutil import now


class SqlStore:
    """The store, for SQLite and PostgreSQL alike.

    Its own methods are the schema, the address book and following. A follower's operations open their
    transaction (or read) here and run the parts of the store on its connection: cursors
    (store/cursors.py), block commits and rewinds (store/commit.py, over store/match_rows.py,
    store/outputs.py and store/enqueue.py), mempool sightings (store/mempool_rows.py) and the reads of
    matches (store/queries.py).

    The rest is composed of parts, each holding the same driver, that a consumer can be given alone:

    - `trees`: the key trees and their derivation cache (`KeyTrees`, store/trees.py);
    - `outbox`: the alert outbox and its deliveries (`Outbox`, store/outbox.py);
    - `leases`: the lease table that leadership and fencing use (`Leases`, store/leases.py);
    - `audit`: the audit log, reinstatement and the paged reads (`Audit`, store/audit.py);
    - `reports`: the incident report's reads (`Reports`, store/reporting.py);
    - `tokens`: the token metadata cache of the chain sources (`TokenCache`, store/tokens.py).
    """

    def __init__(self, db: Driver) -> None:
        self.db = db
        self.dialect = db.dialect
        self.trees = KeyTrees(db)
        self.outbox = Outbox(db)
        self.leases = Leases(db)
        self.audit = Audit(db)
        self.reports = Reports(db)
        self.tokens = TokenCache(db)
        self.statistics = Statistics(db)

    # schema ---------------------------------------------------------------------------------------

    async def migrate(self, target: int | None = None) -> list[int]:
        """Apply the packaged migrations this database lacks (up to `target`, when given), in version
        order, each in its own transaction; return the versions applied.

        Versions need not be consecutive: each one is applied if it is missing, so a store that has
        1 and 3 gets 2 when a release adds it.
        """
        applied = []
        for version, sql in migrations():
            if target is not None and version > target:
                break
            async with self.db.transaction() as conn:
                if self.dialect == "postgres":
                    # One migrator at a time when several instances start together.
                    await conn.execute("SELECT pg_advisory_xact_lock(727001)")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
                )
                if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                    continue
                for statement in statements(sql, self.dialect):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", version, now()
                )
                applied.append(version)
        return applied

    async def schema_versions(self) -> set[int] | None:
        """The migrations applied to this database; None when it has no depositwatch schema at all."""
        try:
            async with self.db.read() as conn:
                rows = await conn.fetch("SELECT version FROM schema_migrations")
        except Exception:  # the table itself is missing: an empty or foreign database
            return None
        return {int(row[0]) for row in rows}

    async def check_schema(self) -> None:
        """Refuse to run on a database that is not migrated to this program's schema."""
        packaged = {version for version, _ in migrations()}
        latest = max(packaged)
        applied = await self.schema_versions()
        if not applied:
            raise SchemaError("the store has no depositwatch schema: run `depositwatch db migrate`")
        newer = sorted(applied - packaged)
        if newer:
            raise SchemaError(
                f"the store has schema migration(s) {', '.join(map(str, newer))}, newer than this program's"
                f" ({latest}): upgrade depositwatch"
            )
        missing = sorted(packaged - applied)
        if missing:
            raise SchemaError(
                f"the store is at schema {max(applied)} and lacks migration(s) {', '.join(map(str, missing))}"
                f" that this program needs: run `depositwatch db migrate`"
            )

    async def close(self) -> None:
        """Close the driver."""
        await self.db.close()

    # address book ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def book_changes(self, wake: Callable[[], None]) -> AsyncIterator[None]:
        """While inside, `wake()` is called when another session changes the address book (PostgreSQL
        LISTEN on a connection held for it). SQLite has no such signal: callers also poll the version."""
        if not isinstance(self.db, PostgresDriver):
            yield
            return

        def on_notify(*_: object) -> None:
            wake()

        listener = await self.db.pool.acquire()
        try:
            await listener.add_listener(NOTIFY_CHANNEL, on_notify)
            yield
        finally:
            with contextlib.suppress(Exception):  # a connection the server ended: the pool replaces it
                await listener.remove_listener(NOTIFY_CHANNEL, on_notify)
            await self.db.pool.release(listener)

    async def import_addresses(
        self,
        entries: Sequence[tuple[int, AddressEntry]],
        *,
        dry_run: bool = False,
        actor: str | None = None,
        action: str = "import",
        source: str | None = None,
    ) -> ImportResult:
        """Insert or update entries (with their file line numbers) all at once, or not at all
        (`store/book.py`: what is refused, the audit rows)."""
        book.refuse_repeats([(line, e.chain, e.key, f"address {e.address}") for line, e in entries])
        stamp = now()
        async with self.db.transaction() as conn:
            return await book.import_addresses(
                conn, self.dialect, entries, stamp, dry_run=dry_run, actor=actor, action=action, source=source
            )

    async def revoke(
        self,
        chains: Sequence[str],
        keys: Sequence[bytes] | None,
        at: int,
        reason: str,
        policies: Mapping[str, ChainPolicy] | None = None,
        *,
        actor: str | None = None,
        owner: str | None = None,
    ) -> RevokeResult:
        """Retire addresses on the given chains, the listed keys or every active one (`keys=None`), in
        one transaction with their retro alerts and audit rows (`store/book.py`)."""
        stamp = now()
        async with self.db.transaction() as conn:
            return await book.revoke(
                conn, self.dialect, chains, keys, at, reason, policies, stamp, actor=actor, owner=owner
            )

    async def list_addresses(
        self,
        *,
        chain: str | None = None,
        status: AddressStatus | None = None,
        owner: str | None = None,
        limit: int | None = None,
    ) -> list[AddressEntry]:
        """Address book rows, filtered, ordered by chain and address."""
        where, args = book.filters(chain=chain, status=None if status is None else str(status), owner=owner)
        sql = f"SELECT * FROM addresses {where} ORDER BY chain, address"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        async with self.db.read() as conn:
            return [address_entry(r) for r in await conn.fetch(sql, *args)]

    async def address_stats(self) -> list[dict[str, Any]]:
        """Counts per chain, type and status."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT chain, type, status, COUNT(*) AS n FROM addresses GROUP BY chain, type, status"
                " ORDER BY chain, type, status"
            )
        return [{"chain": r["chain"], "type": r["type"], "status": r["status"], "count": r["n"]} for r in rows]

    async def iter_registry(self, chains: Sequence[str] | None = None) -> AsyncIterator[list[RegistryRow]]:
        """Stream the book in chunks for the in-memory registry."""
        sql = "SELECT chain, key, status, revoked_at FROM addresses"
        args: tuple[Any, ...] = ()
        if chains is not None:
            sql += f" WHERE chain IN ({book.marks(chains, 1)})"
            args = tuple(chains)
        status = book.STATUS
        async for rows in self.db.stream(sql, *args):
            yield [RegistryRow(r[0], bytes(r[1]), status[r[2]], r[3]) for r in rows]

    async def iter_registry_keys(self, chains: Sequence[str] | None = None) -> AsyncIterator[list[Any]]:
        """The book in chunks of bare `(chain, key, revoked_at)` rows, for loading millions of keys.

        `key` is bytes; `revoked_at` is None for an active address and the revocation time (0 if
        unknown) for a revoked one. No object is made per row beyond what the driver returns, which
        makes a load of the whole book several times faster than through `iter_registry`.
        """
        sql = "SELECT chain, key, CASE WHEN status = 'revoked' THEN COALESCE(revoked_at, 0) END FROM addresses"
        args: tuple[Any, ...] = ()
        if chains is not None:
            sql += f" WHERE chain IN ({book.marks(chains, 1)})"
            args = tuple(chains)
        async for rows in self.db.stream(sql, *args):
            yield rows

    async def registry_key_counts(self, chains: Sequence[str] | None = None) -> list[tuple[str, int, int]]:
        """`(chain, key length, keys)` of the book's plain addresses and key trees' cached keys, so that
        the registry can size each key table once before loading it (one scan of each table)."""
        size = "octet_length" if self.dialect == "postgres" else "length"
        args = tuple(chains or ())
        listed = "" if chains is None else book.marks(chains, 1)
        plain = f"SELECT chain, {size}(key), COUNT(*) FROM addresses" + (
            f" WHERE chain IN ({listed})" if listed else ""
        )
        trees = f"SELECT t.chain, {size}(k.key), COUNT(*) FROM tree_keys k JOIN key_trees t ON t.id = k.tree_id" + (
            f" WHERE t.chain IN ({listed})" if listed else ""
        )
        counts: Counter[tuple[str, int]] = Counter()
        async with self.db.read() as conn:
            for sql in (plain, trees):
                for chain, length, count in await conn.fetch(sql + " GROUP BY 1, 2", *args):
                    counts[(chain, int(length))] += int(count)
        return [(chain, length, count) for (chain, length), count in counts.items()]

    async def address_book_version(self) -> int:
        """A number that changes whenever the book changes."""
        async with self.db.read() as conn:
            return int(await conn.fetchval("SELECT version FROM address_book_version WHERE id = 1"))

    async def chains_in_book(self) -> list[str]:
        """The chain names the book has entries for."""
        async with self.db.read() as conn:
            return [r[0] for r in await conn.fetch("SELECT DISTINCT chain FROM addresses ORDER BY chain")]

    # following: each operation is one transaction (or read) over the parts -------------------------

    async def check_identity(self, chain: str, identity: str) -> None:
        """Record the chain's identity on first use; afterwards refuse a node on another chain."""
        async with self.db.transaction() as conn:
            await cursors.check_identity(conn, chain, identity)

    async def get_cursor(self, name: str) -> Cursor | None:
        """The named cursor, or None before the first block."""
        async with self.db.read() as conn:
            return await cursors.read_cursor(conn, name)

    async def cursor_updated_at(self, name: str) -> int | None:
        """Unix time of the named cursor's last move (a commit by whichever instance leads), or None."""
        async with self.db.read() as conn:
            return await cursors.cursor_updated_at(conn, name)

    async def set_cursor(self, cursor: Cursor) -> None:
        """Create or move a cursor (used to start following at a chosen block).

        The cursor's own block is remembered too, so a reorg of the very first blocks still finds it.
        """
        async with self.db.transaction() as conn:
            await cursors.place_cursor(conn, cursor)

    async def block_hash(self, cursor: str, height: int) -> str | None:
        """The hash this cursor processed at `height`, if it still remembers it."""
        async with self.db.read() as conn:
            return await cursors.block_hash(conn, cursor, height)

    async def forget_blocks(self, cursor: str, below: int) -> None:
        """Forget every block this cursor remembers below `below` (a follower's start: each commit then
        forgets only from the previous commit's bound up)."""
        async with self.db.transaction() as conn:
            await cursors.forget_blocks_below(conn, cursor, below)

    async def commit_blocks(
        self,
        scope: Scope,
        cursor: Cursor,
        policy: ChainPolicy,
        effects: Sequence[BlockEffects],
        tip_height: int,
    ) -> Cursor:
        """Commit blocks' matches, outputs, alerts and the moved cursor in one transaction.

        `cursor` is where the caller believes the chain stands; if the stored cursor differs (another
        instance moved it), or the scope's lease fence no longer holds, nothing is written and
        LeaseLost is raised.
        """
        if not effects:
            return cursor
        async with self.db.transaction() as conn:
            moved = await commit.commit_blocks(conn, self.dialect, scope, cursor, policy, effects, tip_height)
        await self.statistics.wrote(sum(len(e.matches) for e in effects))
        return moved

    async def rewind(self, scope: Scope, cursor: Cursor, policy: ChainPolicy, to: BlockRef) -> Cursor:
        """Undo every block above `to` (a reorg): retract their matches and move the cursor back."""
        async with self.db.transaction() as conn:
            return await commit.rewind(conn, self.dialect, scope, cursor, policy, to)

    async def record_mempool(self, scope: Scope, policy: ChainPolicy, matches: Sequence[Match]) -> int:
        """Record unconfirmed matches (block None) and alert on the new ones; return how many were new."""
        async with self.db.transaction() as conn:
            return await mempool_rows.record_mempool(conn, self.dialect, scope, policy, matches)

    async def drop_mempool(self, scope: Scope, policy: ChainPolicy, match_ids: Sequence[str]) -> int:
        """Retract unconfirmed matches whose transaction left the mempool without being mined."""
        async with self.db.transaction() as conn:
            return await mempool_rows.drop_mempool(conn, self.dialect, scope, policy, match_ids)

    async def mempool_match_ids(self, scope: Scope, chain: str) -> list[str]:
        """Ids of matches seen only in the mempool so far."""
        return [found for found, _ in await self.mempool_matches(scope, chain)]

    async def mempool_matches(self, scope: Scope, chain: str) -> list[tuple[str, str]]:
        """`(id, txid)` of the matches seen only in the mempool so far."""
        async with self.db.read() as conn:
            return await mempool_rows.mempool_matches(conn, scope, chain)

    async def watched_outputs(self, chain: str, scope: Scope | None = None) -> list[WatchedOutput]:
        """Unspent outputs that paid revoked scripts."""
        async with self.db.read() as conn:
            return await unspent_outputs(conn, scope or Scope.live(), chain)

    async def add_watched_outputs(
        self, chain: str, outputs: Sequence[WatchedOutput], scope: Scope | None = None
    ) -> int:
        """Add outputs found outside following (scantxoutset, prevouts); return how many were new."""
        async with self.db.transaction() as conn:
            return await add_outputs(conn, scope or Scope.live(), chain, outputs)

    async def matches(
        self,
        scope: Scope,
        *,
        chain: str | None = None,
        kind: MatchKind | None = None,
        heights: tuple[int, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Matches of a scope in chain order (height, txid, index), as plain dicts; `heights` is inclusive."""
        async with self.db.read() as conn:
            return await queries.matches_in_order(conn, scope, chain=chain, kind=kind, heights=heights)

    async def list_matches(self, scope: str, **filters: Unpack[MatchFilters]) -> list[dict[str, Any]]:
        """Matches of a scope (`live` or `replay:<run id>`), newest first, filtered as
        `queries.list_matches` describes; for the CLI."""
        async with self.db.read() as conn:
            return await queries.list_matches(conn, scope, **filters)

    async def unsent_alerts(self, scope: Scope) -> int:
        """Alert matches of a scope (not retracted) that have no message in the outbox: nobody was told."""
        async with self.db.read() as conn:
            return await queries.unsent_alerts(conn, scope)

    async def delete_scope(self, scope: Scope) -> None:
        """Forget a replay run: its matches, outputs, cursor and blocks."""
        async with self.db.transaction() as conn:
            for table in ("matches", "watched_outputs"):
                await conn.execute(f"DELETE FROM {table} WHERE scope = $1", scope.name)
            await cursors.drop_cursor(conn, scope.name)

    async def prune_matches(self, before: int, batch: int, *, dry_run: bool = False) -> int:
        """Remove up to `batch` settled matches (confirmed or retracted, of any scope) last changed
        before `before`; return how many went (or would go)."""
        old = "FROM matches WHERE status IN ('confirmed', 'retracted') AND updated_at < $1"
        if dry_run:
            async with self.db.read() as conn:
                return int(await conn.fetchval(f"SELECT COUNT(*) {old}", before) or 0)
        async with self.db.transaction() as conn:
            rows = await conn.fetch(f"SELECT scope, id {old} LIMIT $2", before, batch)
            count = 0
            for row in rows:
                count += await conn.execute("DELETE FROM matches WHERE scope = $1 AND id = $2", row[0], row[1])
            return count

    @property
    def target(self) -> str:
        """Where the database is, per `dialect`: the PostgreSQL URL (for a session of the caller's own, as
        leadership keeps) or the SQLite file path (which leadership locks)."""
        from depositwatch.store.drivers import SqliteDriver

        if isinstance(self.db, PostgresDriver):
            return self.db.url
        assert isinstance(self.db, SqliteDriver)
        return self.db.path
