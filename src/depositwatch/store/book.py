"""The address book's writes: an import or a revocation checked whole and applied on the caller's
connection, with its audit rows and the book's version bump in the same transaction; a backdated
revocation's alerts for deposits already recorded (`mode: retro`); and the SQL helpers of book queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from depositwatch.models import AddressEntry, AddressStatus, AlertEvent, MatchKind, match_id
from depositwatch.store.audit import AuditChange, import_changes, new_batch, unix_actor, write_audit
from depositwatch.store.base import ChainPolicy, Coverage, ImportRejected, ImportResult, RevokeResult, Scope, StoreError
from depositwatch.store.book_version import bump_book
from depositwatch.store.drivers import Conn
from depositwatch.store.enqueue import enqueue

# The columns of `addresses`, in the order imports write them.
ADDRESS_COLUMNS = (
    "chain", "key", "address", "type", "status", "label", "owner", "revoked_at", "reason", "created_at", "updated_at",
)  # fmt: skip
ADDRESS_LIST = ", ".join(ADDRESS_COLUMNS)
STATUS = {str(status): status for status in AddressStatus}


async def _with_twins(conn: Conn, chain: str, keys: Sequence[bytes]) -> list[bytes]:
    """`keys` and the other scripts registered for the same public key (the bare P2PK script imported
    beside a P2PKH address: same chain and address text, type `p2pk`), so revoking one revokes both."""
    found = list(dict.fromkeys(keys))
    twins: list[bytes] = []
    for batch in chunks(found, 500):
        rows = await conn.fetch(
            "SELECT t.key FROM addresses t JOIN addresses a ON t.chain = a.chain AND t.address = a.address"
            f" WHERE a.chain = $1 AND t.type = 'p2pk' AND a.key IN ({marks(batch, 2)})",
            chain,
            *batch,
        )
        twins += [bytes(r[0]) for r in rows]
    return list(dict.fromkeys(found + twins))


def refuse_repeats(named: Sequence[tuple[int, str, object, str]]) -> None:
    """An import naming one chain's address (or key tree) twice is refused whole (ImportRejected, by line).

    `named` holds (line, chain, key, what) for each entry: entries are the same when chain and key are,
    and `what` names the entry in the refusal ("address 0x...", "tree wpkh(...)")."""
    seen: dict[tuple[str, object], int] = {}
    problems = []
    for line, chain, key, what in named:
        first = seen.setdefault((chain, key), line)
        if first != line:
            problems.append((line, f"{chain} {what} already given on line {first}"))
    if problems:
        raise ImportRejected(problems)


async def import_addresses(
    conn: Conn,
    dialect: str,
    entries: Sequence[tuple[int, AddressEntry]],
    stamp: int,
    *,
    dry_run: bool,
    actor: str | None,
    action: str,
    source: str | None,
) -> ImportResult:
    """Insert or update entries (given with their file line numbers) all at once, or not at all.

    Re-importing unchanged rows changes nothing. A row that would turn a revoked address back into
    an active one is refused: un-revoking a possibly compromised key must be deliberate
    (`reinstate`). Each new or changed address gets an audit row (`action`, by `actor`, the
    process' unix user unless given; `source` names the file) in the same transaction.
    """
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
            f"INSERT INTO addresses ({ADDRESS_LIST})"
            f" SELECT {ADDRESS_LIST} FROM staging_addresses s"
            " WHERE NOT EXISTS (SELECT 1 FROM addresses a WHERE a.chain = s.chain AND a.key = s.key)"
        )
        await bump_book(conn, dialect)
        await write_audit(conn, actor or unix_actor(), action, changes, stamp)
    await conn.execute("DROP TABLE staging_addresses")
    return result


async def revoke(
    conn: Conn,
    dialect: str,
    chains: Sequence[str],
    keys: Sequence[bytes] | None,
    at: int,
    reason: str,
    policies: Mapping[str, ChainPolicy] | None,
    stamp: int,
    *,
    actor: str | None,
    owner: str | None,
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
    fresh: dict[str, list[bytes]] = {}
    audited: list[tuple[str, str, str]] = []  # chain, address, owner of each newly revoked entry
    if keys is None:
        mine = "" if owner is None else f" AND owner = ${len(chains) + 1}"
        mine_args = () if owner is None else (owner,)
        already = await conn.fetchval(
            f"SELECT COUNT(*) FROM addresses WHERE status = 'revoked' AND chain IN ({marks(chains, 1)})" + mine,
            *chains,
            *mine_args,
        )
        for row in await conn.fetch(
            "SELECT chain, key, address, owner FROM addresses WHERE status = 'active'"
            f" AND chain IN ({marks(chains, 1)}){mine}",
            *chains,
            *mine_args,
        ):
            fresh.setdefault(row[0], []).append(bytes(row[1]))
            audited.append((row[0], row[2], row[3]))
        revoked = await conn.execute(
            "UPDATE addresses SET status = 'revoked', revoked_at = $1, reason = $2, updated_at = $3"
            f" WHERE status = 'active' AND chain IN ({marks(chains, 4)})"
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
            for batch in chunks(await _with_twins(conn, chain, keys), 500):
                rows = await conn.fetch(
                    "SELECT key, status, address, owner FROM addresses"
                    f" WHERE chain = $1 AND key IN ({marks(batch, 2)})",
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
                    f" WHERE status = 'active' AND chain = $4 AND key IN ({marks(batch, 5)})",
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
        retro += await retro_alerts(conn, policy, chain_keys, at, stamp)
    coverage = tuple([await chain_coverage(conn, chain) for chain in chains])
    if revoked:
        await bump_book(conn, dialect)
        detail = {"previous_status": "active", "status": "revoked", "revoked_at": at, "batch": new_batch()}
        detail["rows"] = len(audited)
        changes = [AuditChange(c, a, o, reason, detail) for c, a, o in audited]
        await write_audit(conn, actor or unix_actor(), "revoke", changes, stamp)
    return RevokeResult(revoked, already, retro, coverage)


async def retro_alerts(conn: Conn, policy: ChainPolicy, keys: Sequence[bytes], at: int, stamp: int) -> int:
    """Recorded live deposits to `keys` in blocks at or after `at`, as `revoked_incoming` matches
    (the same transfer and block) with their alerts; return how many were new."""
    made: list[tuple[str, AlertEvent, int]] = []
    tip = await conn.fetchval("SELECT height FROM cursors WHERE name = $1", f"live:{policy.chain}")
    for batch in chunks(list(keys), 500):
        if not batch:
            continue
        rows = await conn.fetch(
            "SELECT * FROM matches WHERE scope = 'live' AND chain = $1 AND kind = 'deposit'"
            f" AND status IN ('seen', 'confirmed') AND block_time >= $2 AND key IN ({marks(batch, 3)})"
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
                f"INSERT INTO matches ({', '.join(columns)}) VALUES ({marks(columns, 1)})"
                " ON CONFLICT (scope, id) DO NOTHING",
                *[values[c] for c in columns],
            )
            if inserted:
                depth = (tip - int(row["block_height"]) + 1) if tip is not None else 0
                made.append((alert_id, AlertEvent.DETECTED, depth))
    # The live scope's rows, announced as found by re-examination, not by following.
    await enqueue(conn, Scope("live", "retro", True), policy, made, stamp)
    return len(made)


async def chain_coverage(conn: Conn, chain: str) -> Coverage:
    first = await conn.fetchrow("SELECT height, time FROM live_start WHERE chain = $1", chain)
    cursor = await conn.fetchval("SELECT height FROM cursors WHERE name = $1", f"live:{chain}")
    return Coverage(
        chain,
        None if first is None else int(first["height"]),
        None if first is None else int(first["time"]),
        None if cursor is None else int(cursor),
    )


def marks(values: Sequence[Any], first: int) -> str:
    """`$first, $first+1, ...` for an IN list."""
    if not values:
        return "NULL"
    return ", ".join(f"${first + i}" for i in range(len(values)))


def chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i : i + size] for i in range(0, len(values), size)] or [[]]


def filters(**conditions: Any) -> tuple[str, list[Any]]:
    """A WHERE clause of equalities for the conditions that are not None."""
    parts, args = [], []
    for column, value in conditions.items():
        if value is not None:
            args.append(value)
            parts.append(f"{column} = ${len(args)}")
    return ("WHERE " + " AND ".join(parts)) if parts else "", args
