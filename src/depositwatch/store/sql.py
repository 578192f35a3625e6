"""`SqlStore`: the one implementation of the Store protocol, over either driver.

Every state change is one transaction. Inserts are keyed (matches by (scope, id), outbox messages by
(alert_id, rev)), so repeating a commit after a crash changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, Unpack

from depositwatch.models import (
    AddressEntry,
    AddressStatus,
    AlertEvent,
    BlockRef,
    Match,
    MatchKind,
    WatchedOutput,
    match_id,
)
from depositwatch.store import commit, cursors, mempool_rows, queries
from depositwatch.store.audit import AuditChange, AuditMixin, import_changes, new_batch, unix_actor, write_audit
from depositwatch.store.base import (
    BlockEffects,
    ChainPolicy,
    Coverage,
    Cursor,
    ImportRejected,
    ImportResult,
    RegistryRow,
    RevokeResult,
    SchemaError,
    Scope,
    StoreError,
)
from depositwatch.store.book_version import NOTIFY_CHANNEL, bump_book
from depositwatch.store.drivers import Conn, Driver, PostgresDriver
from depositwatch.store.enqueue import enqueue
from depositwatch.store.leases import LeaseMixin
from depositwatch.store.outbox import OutboxMixin
from depositwatch.store.outputs import add_outputs, unspent_outputs
from depositwatch.store.queries import MatchFilters
from depositwatch.store.reporting import ReportMixin
from depositwatch.store.tokens import TokenMixin
from depositwatch.store.trees import TreeMixin
from depositwatch.timeutil import now

_TYPES = {
    "sqlite": {"{BLOB}": "BLOB", "{SERIAL}": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {"{BLOB}": "BYTEA", "{SERIAL}": "BIGSERIAL PRIMARY KEY"},
}
# The columns of `addresses`, in the order imports write them.
ADDRESS_COLUMNS = (
    "chain", "key", "address", "type", "status", "label", "owner", "revoked_at", "reason", "created_at", "updated_at",
)  # fmt: skip
_ADDRESS_COLUMNS = ", ".join(ADDRESS_COLUMNS)
_STATUS = {str(status): status for status in AddressStatus}


def migrations() -> list[tuple[int, str]]:
    """The packaged migrations, as (version, SQL) in order."""
    found = []
    for item in resources.files("depositwatch.store").joinpath("migrations").iterdir():
        if item.name.endswith(".sql"):
            found.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(found)


def _statements(sql: str, dialect: str) -> list[str]:
    """The statements of a migration, split on the semicolons outside string literals, quoted names
    and comments (a `;` or `--` inside `'...'` stays part of its statement); comments are dropped."""
    for token, replacement in _TYPES[dialect].items():
        sql = sql.replace(token, replacement)
    statements: list[str] = []
    current: list[str] = []
    i, size = 0, len(sql)
    while i < size:
        char = sql[i]
        if char in "'\"":  # a literal or quoted name runs to its closing quote; a doubled quote escapes
            end = i + 1
            while True:
                end = sql.find(char, end)
                if end < 0:
                    raise SchemaError(f"migration text has an unterminated {char} quote")
                if sql[end + 1 : end + 2] == char:
                    end += 2
                    continue
                break
            current.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = size if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise SchemaError("migration text has an unterminated /* comment")
            current.append(" ")
            i = end + 2
        elif char == ";":
            statements.append("".join(current).strip())
            current = []
            i += 1
        else:
            current.append(char)
            i += 1
    statements.append("".join(current).strip())
    return [statement for statement in statements if statement]


def _entry(row: Any) -> AddressEntry:
    return AddressEntry(
        chain=row["chain"],
        address=row["address"],
        key=bytes(row["key"]),
        status=AddressStatus(row["status"]),
        label=row["label"],
        owner=row["owner"],
        revoked_at=row["revoked_at"],
        reason=row["reason"],
        created_at=row["created_at"],
        type=row["type"],
    )


async def _with_twins(conn: Conn, chain: str, keys: Sequence[bytes]) -> list[bytes]:
    """`keys` and the other scripts registered for the same public key (the bare P2PK script imported
    beside a P2PKH address: same chain and address text, type `p2pk`), so revoking one revokes both."""
    found = list(dict.fromkeys(keys))
    twins: list[bytes] = []
    for batch in _chunks(found, 500):
        rows = await conn.fetch(
            "SELECT t.key FROM addresses t JOIN addresses a ON t.chain = a.chain AND t.address = a.address"
            f" WHERE a.chain = $1 AND t.type = 'p2pk' AND a.key IN ({_marks(batch, 2)})",
            chain,
            *batch,
        )
        twins += [bytes(r[0]) for r in rows]
    return list(dict.fromkeys(found + twins))


class SqlStore(TreeMixin, OutboxMixin, LeaseMixin, AuditMixin, ReportMixin, TokenMixin):
    """The store, for SQLite and PostgreSQL alike.

    A follower's operations open their transaction (or read) here and run the parts of the store on its
    connection: cursors (store/cursors.py), block commits and rewinds (store/commit.py, over
    store/match_rows.py, store/outputs.py and store/enqueue.py), mempool sightings
    (store/mempool_rows.py) and the reads of matches (store/queries.py).
    """

    def __init__(self, db: Driver) -> None:
        self.db = db
        self.dialect = db.dialect

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
                for statement in _statements(sql, self.dialect):
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
        """Insert or update entries (given with their file line numbers) all at once, or not at all.

        Re-importing unchanged rows changes nothing. A row that would turn a revoked address back into
        an active one is refused: un-revoking a possibly compromised key must be deliberate
        (`reinstate`). Each new or changed address gets an audit row (`action`, by `actor`, the
        process' unix user unless given; `source` names the file) in the same transaction.
        """
        seen: dict[tuple[str, bytes], int] = {}
        problems = []
        for line, entry in entries:
            first = seen.setdefault((entry.chain, entry.key), line)
            if first != line:
                problems.append((line, f"{entry.chain} address {entry.address} already given on line {first}"))
        if problems:
            raise ImportRejected(problems)
        stamp = now()
        async with self.db.transaction() as conn:
            await conn.execute("DROP TABLE IF EXISTS staging_addresses")
            await conn.execute("CREATE TEMPORARY TABLE staging_addresses AS SELECT * FROM addresses WHERE 1 = 0")
            await conn.execute("ALTER TABLE staging_addresses ADD COLUMN line BIGINT")
            rows = [
                (
                    e.chain,
                    e.key,
                    e.address,
                    e.type,
                    str(e.status),
                    e.label,
                    e.owner,
                    e.revoked_at,
                    e.reason,
                    stamp,
                    stamp,
                    line,
                )
                for line, e in entries
            ]
            await conn.copy_rows(
                "staging_addresses",
                [*ADDRESS_COLUMNS, "line"],
                rows,
            )
            unrevoking = await conn.fetch(
                "SELECT s.line, s.address, s.chain FROM staging_addresses s JOIN addresses a"
                " ON a.chain = s.chain AND a.key = s.key WHERE a.status = 'revoked' AND s.status = 'active'"
                " ORDER BY s.line"
            )
            if unrevoking:
                raise ImportRejected(
                    [
                        (
                            r["line"],
                            f"{r['chain']} address {r['address']} is revoked; importing it as active is refused"
                            " (reinstating a revoked address is its own command, with a reason)",
                        )
                        for r in unrevoking
                    ]
                )
            differs = (
                "a.status <> s.status OR a.label <> s.label OR a.owner <> s.owner OR a.reason <> s.reason"
                " OR COALESCE(a.revoked_at, -1) <> COALESCE(s.revoked_at, -1)"
            )
            existing = await conn.fetchval(
                "SELECT COUNT(*) FROM staging_addresses s JOIN addresses a ON a.chain = s.chain AND a.key = s.key"
            )
            changed = await conn.fetchval(
                "SELECT COUNT(*) FROM staging_addresses s JOIN addresses a ON a.chain = s.chain AND a.key = s.key"
                f" WHERE {differs}"
            )
            result = ImportResult(len(rows) - existing, changed, existing - changed)
            if not dry_run and (result.inserted or result.updated):
                changes = await import_changes(conn, differs, source, len(rows))
                await conn.execute(
                    "UPDATE addresses AS a SET status = s.status, label = s.label, owner = s.owner,"
                    " reason = s.reason, revoked_at = s.revoked_at, updated_at = s.updated_at"
                    f" FROM staging_addresses s WHERE a.chain = s.chain AND a.key = s.key AND ({differs})"
                )
                await conn.execute(
                    f"INSERT INTO addresses ({_ADDRESS_COLUMNS})"
                    f" SELECT {_ADDRESS_COLUMNS} FROM staging_addresses s"
                    " WHERE NOT EXISTS (SELECT 1 FROM addresses a WHERE a.chain = s.chain AND a.key = s.key)"
                )
                await bump_book(conn, self.dialect)
                await write_audit(conn, actor or unix_actor(), action, changes, stamp)
            await conn.execute("DROP TABLE staging_addresses")
        return result

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
        """Retire addresses on the given chains: the listed keys, or every active one (`keys=None`).

        Every listed key must be in the book on every named chain, or nothing is revoked. An address
        already revoked keeps its first revocation time. In the same transaction the live deposits
        already recorded to the newly revoked addresses in blocks from `at` on become `revoked_incoming`
        matches with alerts (`mode: retro`, the original block): a backdated revocation is not silent
        about what already landed. `policies` give the chains' alert severities and ids. With
        `keys=None`, `owner` narrows the revocation to that owner's active addresses. Each newly revoked
        address gets an audit row (by `actor`, the process' unix user unless given).
        """
        stamp = now()
        fresh: dict[str, list[bytes]] = {}
        audited: list[tuple[str, str, str]] = []  # chain, address, owner of each newly revoked entry
        async with self.db.transaction() as conn:
            if keys is None:
                mine = "" if owner is None else f" AND owner = ${len(chains) + 1}"
                mine_args = () if owner is None else (owner,)
                already = await conn.fetchval(
                    f"SELECT COUNT(*) FROM addresses WHERE status = 'revoked' AND chain IN ({_marks(chains, 1)})"
                    + mine,
                    *chains,
                    *mine_args,
                )
                for row in await conn.fetch(
                    "SELECT chain, key, address, owner FROM addresses WHERE status = 'active'"
                    f" AND chain IN ({_marks(chains, 1)}){mine}",
                    *chains,
                    *mine_args,
                ):
                    fresh.setdefault(row[0], []).append(bytes(row[1]))
                    audited.append((row[0], row[2], row[3]))
                revoked = await conn.execute(
                    "UPDATE addresses SET status = 'revoked', revoked_at = $1, reason = $2, updated_at = $3"
                    f" WHERE status = 'active' AND chain IN ({_marks(chains, 4)})"
                    + ("" if owner is None else f" AND owner = ${len(chains) + 4}"),
                    at,
                    reason,
                    stamp,
                    *chains,
                    *mine_args,
                )
            else:
                revoked = already = 0
                missing = []
                for chain in chains:
                    for batch in _chunks(await _with_twins(conn, chain, keys), 500):
                        rows = await conn.fetch(
                            "SELECT key, status, address, owner FROM addresses"
                            f" WHERE chain = $1 AND key IN ({_marks(batch, 2)})",
                            chain,
                            *batch,
                        )
                        found = {bytes(r["key"]): r["status"] for r in rows}
                        audited += [(chain, r["address"], r["owner"]) for r in rows if r["status"] == "active"]
                        missing += [(chain, k) for k in batch if k not in found]
                        already += sum(1 for s in found.values() if s == "revoked")
                        fresh.setdefault(chain, []).extend(k for k, s in found.items() if s == "active")
                        revoked += await conn.execute(
                            "UPDATE addresses SET status = 'revoked', revoked_at = $1, reason = $2, updated_at = $3"
                            f" WHERE status = 'active' AND chain = $4 AND key IN ({_marks(batch, 5)})",
                            at,
                            reason,
                            stamp,
                            chain,
                            *batch,
                        )
                if missing:
                    raise StoreError(
                        f"{len(missing)} address(es) are not in the book, nothing was revoked: "
                        + ", ".join(f"{c}:{k.hex()}" for c, k in missing[:10])
                    )
            retro = 0
            for chain, chain_keys in fresh.items():
                policy = (policies or {}).get(chain) or ChainPolicy(chain, confirmations=1)
                retro += await self._retro_alerts(conn, policy, chain_keys, at, stamp)
            coverage = tuple([await self._coverage(conn, chain) for chain in chains])
            if revoked:
                await bump_book(conn, self.dialect)
                detail = {"previous_status": "active", "status": "revoked", "revoked_at": at, "batch": new_batch()}
                detail["rows"] = len(audited)
                changes = [AuditChange(c, a, o, reason, detail) for c, a, o in audited]
                await write_audit(conn, actor or unix_actor(), "revoke", changes, stamp)
        return RevokeResult(revoked, already, retro, coverage)

    async def _retro_alerts(self, conn: Conn, policy: ChainPolicy, keys: Sequence[bytes], at: int, stamp: int) -> int:
        """Recorded live deposits to `keys` in blocks at or after `at`, as `revoked_incoming` matches
        (the same transfer and block) with their alerts; return how many were new."""
        made: list[tuple[str, AlertEvent, int]] = []
        tip = await conn.fetchval("SELECT height FROM cursors WHERE name = $1", f"live:{policy.chain}")
        for batch in _chunks(list(keys), 500):
            if not batch:
                continue
            rows = await conn.fetch(
                "SELECT * FROM matches WHERE scope = 'live' AND chain = $1 AND kind = 'deposit'"
                f" AND status IN ('seen', 'confirmed') AND block_time >= $2 AND key IN ({_marks(batch, 3)})"
                " ORDER BY block_height, txid, idx",
                policy.chain,
                at,
                *batch,
            )
            for row in rows:
                alert_id = match_id(policy.chain, MatchKind.REVOKED_INCOMING, row["txid"], row["idx"])
                values = {**dict(row), "id": alert_id, "kind": str(MatchKind.REVOKED_INCOMING), "revoked_at": at}
                values["updated_at"] = stamp
                values["poisoning"] = int(
                    policy.is_dust(row["asset_symbol"], bool(row["asset_listed"]), int(row["amount"]))
                )
                columns = list(values)
                inserted = await conn.execute(
                    f"INSERT INTO matches ({', '.join(columns)}) VALUES ({_marks(columns, 1)})"
                    " ON CONFLICT (scope, id) DO NOTHING",
                    *[values[c] for c in columns],
                )
                if inserted:
                    depth = (tip - int(row["block_height"]) + 1) if tip is not None else 0
                    made.append((alert_id, AlertEvent.DETECTED, depth))
        # The live scope's rows, announced as found by re-examination, not by following.
        await enqueue(conn, Scope("live", "retro", True), policy, made, stamp)
        return len(made)

    async def _coverage(self, conn: Conn, chain: str) -> Coverage:
        first = await conn.fetchrow("SELECT height, time FROM live_start WHERE chain = $1", chain)
        cursor = await conn.fetchval("SELECT height FROM cursors WHERE name = $1", f"live:{chain}")
        return Coverage(
            chain,
            None if first is None else int(first["height"]),
            None if first is None else int(first["time"]),
            None if cursor is None else int(cursor),
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
        where, args = _filters(chain=chain, status=None if status is None else str(status), owner=owner)
        sql = f"SELECT * FROM addresses {where} ORDER BY chain, address"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        async with self.db.read() as conn:
            return [_entry(r) for r in await conn.fetch(sql, *args)]

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
            sql += f" WHERE chain IN ({_marks(chains, 1)})"
            args = tuple(chains)
        status = _STATUS
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
            sql += f" WHERE chain IN ({_marks(chains, 1)})"
            args = tuple(chains)
        async for rows in self.db.stream(sql, *args):
            yield rows

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
            return await commit.commit_blocks(conn, self.dialect, scope, cursor, policy, effects, tip_height)

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

    @property
    def target(self) -> str:
        """Where the database is, per `dialect`: the PostgreSQL URL (for a session of the caller's own, as
        leadership keeps) or the SQLite file path (which leadership locks)."""
        from depositwatch.store.drivers import SqliteDriver

        if isinstance(self.db, PostgresDriver):
            return self.db.url
        assert isinstance(self.db, SqliteDriver)
        return self.db.path


def _marks(values: Sequence[Any], first: int) -> str:
    """`$first, $first+1, ...` for an IN list."""
    if not values:
        return "NULL"
    return ", ".join(f"${first + i}" for i in range(len(values)))


def _chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i : i + size] for i in range(0, len(values), size)] or [[]]


def _filters(**conditions: Any) -> tuple[str, list[Any]]:
    """A WHERE clause of equalities for the conditions that are not None."""
    parts, args = [], []
    for column, value in conditions.items():
        if value is not None:
            args.append(value)
            parts.append(f"{column} = ${len(args)}")
    return ("WHERE " + " AND ".join(parts)) if parts else "", args
