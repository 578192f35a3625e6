"""Key trees in the store: the `key_trees` entries and their derivation cache, `tree_keys`.

A tree's range is cached whole: `tree_keys` holds every key of `first_index..last_index`, derived once
(at import, or when a range grows) so a restart loads bytes instead of deriving again. Ranges only
grow. A match on a derived key names its tree and index (`matches.tree_id`, `matches.tree_index`),
resolved here at commit time, so the in-memory registry holds nothing per key beyond the key itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from depositwatch.addresses.derive import address_text, watch_keys
from depositwatch.addresses.descriptors import KeyTree, TreeChain, parse_tree
from depositwatch.addresses.hd import HARDENED
from depositwatch.models import AddressStatus, TreeEntry
from depositwatch.store.audit import AuditChange, new_batch, unix_actor, write_audit
from depositwatch.store.base import ChainPolicy, ImportRejected, ImportResult, RevokeResult, StoreError
from depositwatch.store.book import chain_coverage, refuse_repeats, retro_alerts
from depositwatch.store.book_version import bump_book
from depositwatch.store.drivers import fetch_in
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.store.drivers import Conn, Driver

COPY_CHUNK = 50_000  # derived keys per copy: bounds the memory an import of millions of keys holds
_IN_CHUNK = 500
_SCRIPT_CHAIN = {
    "pkh": "bitcoin",
    "sh_wpkh": "bitcoin",
    "wpkh": "bitcoin",
    "tr": "bitcoin",
    "evm": "evm",
    "tron": "tron",
}
_TREE_COLUMNS = (
    "chain, descriptor, script, network, first_index, last_index, gap, status, label, owner, revoked_at, reason,"
    " created_at, updated_at"
)


def tree_of(descriptor: str, script: str) -> KeyTree:
    """The parsed tree of a stored canonical descriptor."""
    return parse_tree(TreeChain(_SCRIPT_CHAIN[script]), descriptor)


def _entry(row: Any) -> TreeEntry:
    return TreeEntry(
        chain=row["chain"],
        descriptor=row["descriptor"],
        script=row["script"],
        first=int(row["first_index"]),
        last=int(row["last_index"]),
        status=AddressStatus(row["status"]),
        gap=int(row["gap"]),
        network=row["network"],
        label=row["label"],
        owner=row["owner"],
        revoked_at=row["revoked_at"],
        reason=row["reason"],
        created_at=row["created_at"],
        id=int(row["id"]),
    )


async def _derive_into(
    conn: Conn, tree_id: int, tree: KeyTree, start: int, stop: int, *, threaded: bool = False
) -> int:
    """Derive indexes start..stop-1 into `tree_keys` in chunks; return the number of keys written.

    `threaded` derives each chunk in a worker thread: the daemon's gap extension runs while a chain's
    follower waits to commit its blocks, and the event loop must keep renewing leases and serving
    health meanwhile.
    """
    if start >= stop:
        return 0
    written = 0
    keys = watch_keys(tree, start, stop)

    def take() -> list[tuple[int, int, bytes]]:
        return [(tree_id, index, key) for index, key in islice(keys, COPY_CHUNK)]

    while chunk := (await asyncio.to_thread(take) if threaded else take()):
        await conn.copy_rows("tree_keys", ("tree_id", "idx", "key"), chunk)
        written += len(chunk)
    return written


class KeyTrees:
    """Key trees and their derivation cache (`SqlStore.trees`)."""

    def __init__(self, db: Driver) -> None:
        self.db = db

    async def import_entries(
        self,
        entries: Sequence[tuple[int, TreeEntry]],
        *,
        dry_run: bool = False,
        actor: str | None = None,
        source: str | None = None,
    ) -> ImportResult:
        """Insert or update tree entries (with their file line numbers) all at once, or not at all.

        A new tree's range is derived into the cache; an existing tree's range grows to cover the given
        one (it never shrinks: a gap extension may have taken it further). Turning a revoked tree back
        into an active one is refused, as for addresses.
        """
        refuse_repeats([(line, e.chain, e.descriptor, f"tree {e.descriptor}") for line, e in entries])
        problems: list[tuple[int, str]] = []
        stamp = now()
        inserted = updated = unchanged = 0
        changes: list[AuditChange] = []
        batch = new_batch()
        async with self.db.transaction() as conn:
            for line, entry in entries:
                row = await conn.fetchrow(
                    "SELECT * FROM key_trees WHERE chain = $1 AND descriptor = $2", entry.chain, entry.descriptor
                )
                if row is not None and row["status"] == "revoked" and entry.status is AddressStatus.ACTIVE:
                    problems.append(
                        (line, f"{entry.chain} tree {entry.descriptor} is revoked; importing it as active is refused")
                    )
                    continue
                if problems or dry_run:
                    if row is None:
                        inserted += 1
                    elif _differs(_entry(row), entry):
                        updated += 1
                    else:
                        unchanged += 1
                    continue
                if row is None:
                    await self._insert(conn, entry, stamp)
                    inserted += 1
                elif _differs(_entry(row), entry):
                    await self._update(conn, _entry(row), entry, stamp)
                    updated += 1
                else:
                    unchanged += 1
                    continue
                changes.append(_tree_change(entry, None if row is None else str(row["status"]), line, batch, source))
            if problems:
                raise ImportRejected(problems)
            if not dry_run and (inserted or updated):
                await write_audit(conn, actor or unix_actor(), "import", changes, stamp)
                await bump_book(conn, self.db.dialect)
        return ImportResult(inserted, updated, unchanged)

    async def _insert(self, conn: Conn, entry: TreeEntry, stamp: int) -> None:
        await conn.execute(
            f"INSERT INTO key_trees ({_TREE_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            entry.chain,
            entry.descriptor,
            entry.script,
            entry.network,
            entry.first,
            entry.last,
            entry.gap,
            str(entry.status),
            entry.label,
            entry.owner,
            entry.revoked_at,
            entry.reason,
            stamp,
            stamp,
        )
        tree_id = int(
            await conn.fetchval(
                "SELECT id FROM key_trees WHERE chain = $1 AND descriptor = $2", entry.chain, entry.descriptor
            )
        )
        await _derive_into(conn, tree_id, tree_of(entry.descriptor, entry.script), entry.first, entry.last + 1)

    async def _update(self, conn: Conn, old: TreeEntry, new: TreeEntry, stamp: int) -> None:
        assert old.id is not None
        first, last = min(old.first, new.first), max(old.last, new.last)
        tree = tree_of(old.descriptor, old.script)
        await _derive_into(conn, old.id, tree, first, old.first)
        await _derive_into(conn, old.id, tree, old.last + 1, last + 1)
        revoked = old.status is AddressStatus.REVOKED  # a revoked tree keeps its first revocation
        await conn.execute(
            "UPDATE key_trees SET first_index = $1, last_index = $2, gap = $3, status = $4, label = $5, owner = $6,"
            " revoked_at = $7, reason = $8, updated_at = $9 WHERE id = $10",
            first,
            last,
            new.gap,
            str(AddressStatus.REVOKED if revoked else new.status),
            new.label,
            new.owner,
            old.revoked_at if revoked else new.revoked_at,
            old.reason if revoked and not new.reason else new.reason,
            stamp,
            old.id,
        )

    async def revoke(
        self,
        trees: Sequence[tuple[str, str]],
        at: int,
        reason: str,
        policies: Mapping[str, ChainPolicy] | None = None,
        *,
        actor: str | None = None,
    ) -> RevokeResult:
        """Revoke the named trees, `(chain, canonical descriptor)` each: all of them or none (StoreError
        naming the missing ones). A tree already revoked keeps its first revocation time. The deposits
        already recorded to the newly revoked trees' keys in blocks from `at` on become retro alerts,
        as for addresses."""
        stamp = now()
        revoked = already = retro = 0
        async with self.db.transaction() as conn:
            rows = []
            missing = []
            owners: dict[int, tuple[str, str]] = {}
            changes: list[AuditChange] = []
            for chain, descriptor in trees:
                row = await conn.fetchrow(
                    "SELECT id, status, owner FROM key_trees WHERE chain = $1 AND descriptor = $2", chain, descriptor
                )
                if row is None:
                    missing.append(f"{chain}:{descriptor}")
                else:
                    rows.append((chain, int(row["id"]), row["status"]))
                    owners[int(row["id"])] = (descriptor, str(row["owner"]))
            if missing:
                raise StoreError(
                    f"{len(missing)} tree(s) are not in the book, nothing was revoked: {', '.join(missing)}"
                )
            chains = sorted({chain for chain, _ in trees})
            for chain, tree_id, status in rows:
                if status == "revoked":
                    already += 1
                    continue
                revoked += await conn.execute(
                    "UPDATE key_trees SET status = 'revoked', revoked_at = $1, reason = $2, updated_at = $3"
                    " WHERE id = $4 AND status = 'active'",
                    at,
                    reason,
                    stamp,
                    tree_id,
                )
                descriptor, owner = owners[tree_id]
                detail = {"previous_status": "active", "status": "revoked", "revoked_at": at, "tree": True}
                changes.append(AuditChange(chain, descriptor, owner, reason, detail))
                keys = [
                    bytes(r[0])
                    for r in await conn.fetch(
                        "SELECT DISTINCT key FROM matches WHERE scope = 'live' AND chain = $1 AND tree_id = $2"
                        " AND kind = 'deposit'",
                        chain,
                        tree_id,
                    )
                ]
                if keys:
                    policy = (policies or {}).get(chain) or ChainPolicy(chain, confirmations=1)
                    retro += await retro_alerts(conn, policy, keys, at, stamp)
            coverage = tuple([await chain_coverage(conn, chain) for chain in chains])
            if revoked:
                await write_audit(conn, actor or unix_actor(), "revoke", changes, stamp)
                await bump_book(conn, self.db.dialect)
        return RevokeResult(revoked, already, retro, coverage)

    async def entries(
        self, *, chain: str | None = None, status: AddressStatus | None = None, owner: str | None = None
    ) -> list[tuple[TreeEntry, int]]:
        """The book's trees with their cached key counts, filtered, ordered by chain and descriptor."""
        where, args = [], []
        for column, value in (("chain", chain), ("status", None if status is None else str(status)), ("owner", owner)):
            if value is not None:
                args.append(value)
                where.append(f"t.{column} = ${len(args)}")
        sql = (
            "SELECT t.*, (SELECT COUNT(*) FROM tree_keys k WHERE k.tree_id = t.id) AS keys FROM key_trees t"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY t.chain, t.descriptor"
        )
        async with self.db.read() as conn:
            return [(_entry(row), int(row["keys"])) for row in await conn.fetch(sql, *args)]

    async def stats(self) -> list[dict[str, Any]]:
        """Trees, indexes and cached keys per chain, script and status."""
        async with self.db.read() as conn:
            rows = await conn.fetch(
                "SELECT chain, script, status, COUNT(*) AS trees, SUM(last_index - first_index + 1) AS indexes"
                " FROM key_trees GROUP BY chain, script, status ORDER BY chain, script, status"
            )
            keys = {
                (r["chain"], r["script"], r["status"]): int(r["n"])
                for r in await conn.fetch(
                    "SELECT t.chain, t.script, t.status, COUNT(*) AS n FROM tree_keys k JOIN key_trees t"
                    " ON t.id = k.tree_id GROUP BY t.chain, t.script, t.status"
                )
            }
        return [
            {
                "chain": r["chain"],
                "script": r["script"],
                "status": r["status"],
                "trees": int(r["trees"]),
                "indexes": int(r["indexes"]),
                "keys": keys.get((r["chain"], r["script"], r["status"]), 0),
            }
            for r in rows
        ]

    async def sources(self, chains: Sequence[str] | None = None) -> dict[int, tuple[str, int | None]]:
        """Each tree's id -> (chain, revocation time, or None while active), for the registry's load."""
        sql = "SELECT id, chain, status, revoked_at FROM key_trees"
        async with self.db.read() as conn:
            rows = await conn.fetch(sql)
        wanted = None if chains is None else set(chains)
        return {
            int(r["id"]): (r["chain"], (r["revoked_at"] or 0) if r["status"] == "revoked" else None)
            for r in rows
            if wanted is None or r["chain"] in wanted
        }

    async def iter_keys(self, tree_ids: Collection[int]) -> AsyncIterator[list[Any]]:
        """The cached keys of the given trees, in chunks of bare `(tree_id, key)` rows: no join, so the
        store streams them as fast as plain addresses, and the registry maps the few tree ids itself."""
        if not tree_ids:
            return
        ids = sorted(tree_ids)
        sql = "SELECT tree_id, key FROM tree_keys"
        if len(ids) < len(await self.sources()):
            sql += f" WHERE tree_id IN ({', '.join(str(int(i)) for i in ids)})"
        async for rows in self.db.stream(sql):
            yield rows

    async def grow(self, chain: str, keys: Collection[bytes]) -> int:
        """Grow, before their block is committed, the trees whose gap these matched keys call for.

        The follower asks this of every batch with matches, then reloads the book and matches the
        batch again when a tree grew: a transfer to an index the growth adds, in the same block as
        the transfer that grew it (or a later block of the batch), is matched in that very commit.
        The new keys are committed here, in their own transaction: ranges only grow, so a block
        commit that fails afterwards leaves nothing wrong behind. Returns the number of trees grown.
        """
        if not keys:
            return 0
        async with self.db.read() as conn:
            if await conn.fetchval("SELECT 1 FROM key_trees WHERE chain = $1 AND gap > 0 LIMIT 1", chain) is None:
                return 0  # no tree of this chain can grow: one small query for a batch with matches
            details = await address_details(conn, chain, set(keys))
        wanted = [info for info in details.values() if isinstance(info, dict) and _growth_target(info) is not None]
        if not wanted:
            return 0
        async with self.db.transaction() as conn:
            return await extend_trees(conn, self.db.dialect, wanted)


async def address_details(conn: Conn, chain: str, keys: set[bytes]) -> dict[bytes, Any]:
    """Each key's book entry: the plain address's row, else its key tree's (naming tree and index)."""
    rows = await fetch_in(
        conn,
        "SELECT key, address, label, owner, revoked_at, NULL AS tree_id, NULL AS tree_index FROM addresses"
        " WHERE chain = $1 AND key",
        [chain],
        keys,
    )
    found: dict[bytes, Any] = {bytes(row["key"]): row for row in rows}
    if len(found) < len(keys):
        found.update(await _tree_details(conn, chain, keys - found.keys()))
    return found


async def _tree_details(conn: Conn, chain: str, keys: Collection[bytes]) -> dict[bytes, dict[str, Any]]:
    """What a match row needs of derived keys: the tree's label, owner and revocation, its address
    text, and the tree and index it hit. The lowest tree id wins for a key in two trees."""
    found: dict[bytes, dict[str, Any]] = {}
    ordered = list(keys)
    trees: dict[int, KeyTree] = {}
    for i in range(0, len(ordered), _IN_CHUNK):
        batch = ordered[i : i + _IN_CHUNK]
        marks = ", ".join(f"${j + 2}" for j in range(len(batch)))
        rows = await conn.fetch(
            "SELECT k.key, k.idx, t.id, t.descriptor, t.script, t.network, t.label, t.owner, t.revoked_at,"
            " t.gap, t.last_index FROM tree_keys k JOIN key_trees t ON t.id = k.tree_id"
            f" WHERE t.chain = $1 AND k.key IN ({marks}) ORDER BY t.id DESC",
            chain,
            *batch,
        )
        for row in rows:
            tree_id = int(row["id"])
            tree = trees.get(tree_id) or trees.setdefault(tree_id, tree_of(row["descriptor"], row["script"]))
            key = bytes(row["key"])
            found[key] = {
                "address": address_text(tree, key, row["network"] or "mainnet"),
                "label": row["label"],
                "owner": row["owner"],
                "revoked_at": row["revoked_at"],
                "tree_id": tree_id,
                "tree_index": int(row["idx"]),
                "descriptor": row["descriptor"],
                "gap": int(row["gap"]),
                "last_index": int(row["last_index"]),
            }
    return found


async def extend_trees(conn: Conn, dialect: str, hits: Iterable[Mapping[str, Any]]) -> int:
    """Grow each tree with a gap whose hit index came within `gap` of its range's end, deriving
    the new keys into the cache; bump the book (so every instance reloads) when one grew.
    Returns the number of trees extended."""
    wanted: dict[int, int] = {}
    for info in hits:
        target = _growth_target(info)
        if target is not None:
            wanted[info["tree_id"]] = max(wanted.get(info["tree_id"], 0), target)
    grown = 0
    for tree_id, target in sorted(wanted.items()):
        row = await conn.fetchrow("SELECT * FROM key_trees WHERE id = $1", tree_id)
        if row is None or int(row["last_index"]) >= target:
            continue  # another commit grew it meanwhile
        old = _entry(row)
        tree = tree_of(old.descriptor, old.script)
        await _derive_into(conn, tree_id, tree, old.last + 1, target + 1, threaded=True)
        await conn.execute(
            "UPDATE key_trees SET last_index = $1, updated_at = $2 WHERE id = $3", target, now(), tree_id
        )
        grown += 1
    if grown:
        await bump_book(conn, dialect)
    return grown


def _growth_target(info: Mapping[str, Any]) -> int | None:
    """The last index a matched derived key's tree must reach for its gap, if beyond its range now."""
    gap = info.get("gap") or 0
    if info.get("tree_id") is None or not gap:
        return None
    target = min(int(info["tree_index"]) + gap, HARDENED - 1)
    return target if target > info["last_index"] else None


def _differs(old: TreeEntry, new: TreeEntry) -> bool:
    if (
        new.first < old.first
        or new.last > old.last
        or (old.label, old.owner, old.gap) != (new.label, new.owner, new.gap)
    ):
        return True
    if old.status is AddressStatus.REVOKED:  # keeps its first revocation time and, unless a new one is given, reason
        return bool(new.reason) and new.reason != old.reason
    return (old.status, old.reason, old.revoked_at) != (new.status, new.reason, new.revoked_at)


def _tree_change(entry: TreeEntry, previous: str | None, line: int, batch: str, source: str | None) -> AuditChange:
    """The audit row of a tree an import adds or changes (its address is the canonical descriptor)."""
    detail: dict[str, Any] = {"previous_status": previous, "status": str(entry.status), "tree": True}
    detail.update({"revoked_at": entry.revoked_at, "range": f"{entry.first}-{entry.last}", "gap": entry.gap})
    detail.update({"batch": batch, "line": line})
    if source is not None:
        detail["file"] = source
    return AuditChange(entry.chain, entry.descriptor, entry.owner, entry.reason, detail)
