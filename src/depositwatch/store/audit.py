"""The address book's audit log (`address_audit`), reinstatement, and the paged reads the HTTP API serves.

Every change of the book (import, add, revoke, reinstate) writes its audit rows through `write_audit`
on the connection of the change's own transaction: the log and the book commit together or not at
all. Nothing here updates or deletes an audit row, and retention leaves the table alone.
"""

from __future__ import annotations

import os
import pwd
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from depositwatch.jsonutil import dumps, loads
from depositwatch.messages import OutboxMessage
from depositwatch.models import AddressEntry, AddressStatus
from depositwatch.store.base import StoreError, address_entry
from depositwatch.store.book_version import bump_book
from depositwatch.store.drivers import Conn, Driver
from depositwatch.store.outbox import _message
from depositwatch.timeutil import now

ACTIONS = ("import", "add", "revoke", "reinstate")
AUDIT_COLUMNS = ("at", "actor", "action", "chain", "address", "owner", "reason", "detail")


def unix_actor() -> str:
    """`unix:<user>` for this process' user id (`unix:uid-<n>` when the id has no passwd entry)."""
    uid = os.getuid()
    try:
        return f"unix:{pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"unix:uid-{uid}"


def new_batch() -> str:
    """An id shared by the audit rows of one change."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class AuditChange:
    """One address changed by one action, as its audit row records it."""

    chain: str
    address: str
    owner: str
    reason: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One row of the audit log."""

    id: int
    at: int
    actor: str
    action: str
    chain: str
    address: str
    owner: str
    reason: str
    detail: dict[str, Any]


async def write_audit(conn: Conn, actor: str, action: str, changes: Iterable[AuditChange], at: int) -> int:
    """Append one audit row per change, on the caller's transaction; return how many."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    rows = [(at, actor, action, c.chain, c.address, c.owner, c.reason, dumps(c.detail)) for c in changes]
    if rows:
        await conn.copy_rows("address_audit", AUDIT_COLUMNS, rows)
    return len(rows)


async def import_changes(conn: Conn, differs: str, source: str | None, count: int) -> list[AuditChange]:
    """The audit rows of an import about to be applied: each staged row that is new or differs."""
    rows = await conn.fetch(
        "SELECT s.chain, s.address, s.owner, s.status, s.label, s.reason, s.revoked_at, s.line,"
        " a.status AS old_status, a.label AS old_label, a.owner AS old_owner, a.reason AS old_reason,"
        " a.revoked_at AS old_revoked_at FROM staging_addresses s LEFT JOIN addresses a"
        f" ON a.chain = s.chain AND a.key = s.key WHERE a.status IS NULL OR ({differs}) ORDER BY s.line"
    )
    batch = new_batch()
    changes = []
    for r in rows:
        detail: dict[str, Any] = {"previous_status": r["old_status"], "status": r["status"]}
        detail["revoked_at"] = r["revoked_at"]
        if r["old_status"] is not None:
            fields = ("status", "label", "owner", "reason", "revoked_at")
            detail["changed"] = [f for f in fields if r[f] != r[f"old_{f}"]]
            if r["old_revoked_at"] != r["revoked_at"]:
                detail["previous_revoked_at"] = r["old_revoked_at"]
        detail.update({"batch": batch, "rows": count, "line": r["line"]})
        if source is not None:
            detail["file"] = source
        changes.append(AuditChange(r["chain"], r["address"], r["owner"], r["reason"], detail))
    return changes


def _record(row: Any) -> AuditRecord:
    return AuditRecord(
        id=int(row["id"]),
        at=int(row["at"]),
        actor=row["actor"],
        action=row["action"],
        chain=row["chain"],
        address=row["address"],
        owner=row["owner"],
        reason=row["reason"],
        detail=loads(row["detail"]),
    )


class Audit:
    """Audit log reads, reinstatement and paged reads (`SqlStore.audit`)."""

    def __init__(self, db: Driver) -> None:
        self.db = db

    async def reinstate(
        self, chain: str, keys: Sequence[bytes], reason: str, *, actor: str | None = None
    ) -> list[AddressEntry]:
        """Make revoked addresses of one chain active again, all or nothing, audited with `reason`.

        The only way back from revoked: every key must be in the book and revoked, or StoreError says
        which are not and nothing changes. The revocation time and reason move into the audit row.
        """
        if not reason.strip():
            raise StoreError("a reinstatement needs a reason")
        actor = actor or unix_actor()
        stamp = now()
        batch = new_batch()
        wanted = list(dict.fromkeys(keys))
        async with self.db.transaction() as conn:
            found: dict[bytes, Any] = {}
            for part in _chunks(wanted, 500):
                rows = await conn.fetch(
                    f"SELECT * FROM addresses WHERE chain = $1 AND key IN ({_marks(part, 2)})", chain, *part
                )
                found.update({bytes(r["key"]): r for r in rows})
            missing = [k for k in wanted if k not in found]
            if missing:
                raise StoreError(
                    f"{len(missing)} address(es) are not in the {chain} book, nothing was reinstated: "
                    + ", ".join(k.hex() for k in missing[:10])
                )
            active = [found[k]["address"] for k in wanted if found[k]["status"] != "revoked"]
            if active:
                raise StoreError(
                    f"{len(active)} address(es) are active, not revoked; nothing was reinstated: "
                    + ", ".join(active[:10])
                )
            for part in _chunks(wanted, 500):
                await conn.execute(
                    "UPDATE addresses SET status = 'active', revoked_at = NULL, reason = '', updated_at = $1"
                    f" WHERE chain = $2 AND status = 'revoked' AND key IN ({_marks(part, 3)})",
                    stamp,
                    chain,
                    *part,
                )
            changes = [
                AuditChange(
                    chain,
                    found[k]["address"],
                    found[k]["owner"],
                    reason,
                    {
                        "previous_status": "revoked",
                        "status": "active",
                        "previous_revoked_at": found[k]["revoked_at"],
                        "previous_reason": found[k]["reason"],
                        "batch": batch,
                        "rows": len(wanted),
                    },
                )
                for k in wanted
            ]
            await write_audit(conn, actor, "reinstate", changes, stamp)
            if wanted:
                await bump_book(conn, self.db.dialect)
        return [address_entry({**dict(found[k]), "status": "active", "revoked_at": None, "reason": ""}) for k in wanted]

    async def book_entries(self, chain: str, keys: Sequence[bytes]) -> list[AddressEntry]:
        """The book's entries of one chain for the given keys (those that are in it)."""
        found: list[AddressEntry] = []
        async with self.db.read() as conn:
            for part in _chunks(list(dict.fromkeys(keys)), 500):
                rows = await conn.fetch(
                    f"SELECT * FROM addresses WHERE chain = $1 AND key IN ({_marks(part, 2)})", chain, *part
                )
                found += [address_entry(r) for r in rows]
        return found

    async def address_history(self, pairs: Sequence[tuple[str, str]]) -> list[AuditRecord]:
        """The audit rows of the given (chain, display address) pairs, oldest first."""
        found: list[AuditRecord] = []
        async with self.db.read() as conn:
            for chain, address in dict.fromkeys(pairs):
                rows = await conn.fetch(
                    "SELECT * FROM address_audit WHERE chain = $1 AND address = $2 ORDER BY id", chain, address
                )
                found += [_record(r) for r in rows]
        return sorted(found, key=lambda r: r.id)

    async def log(self, *, limit: int = 1000) -> list[AuditRecord]:
        """The newest audit rows, newest first."""
        async with self.db.read() as conn:
            rows = await conn.fetch("SELECT * FROM address_audit ORDER BY id DESC LIMIT $1", limit)
        return [_record(r) for r in rows]

    async def book_page(
        self,
        *,
        chain: str | None = None,
        status: AddressStatus | None = None,
        owner: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
    ) -> list[AddressEntry]:
        """A page of the book ordered by (chain, address), starting after the (chain, address) given."""
        parts: list[str] = []
        args: list[Any] = []
        for column, value in (("chain", chain), ("status", None if status is None else str(status)), ("owner", owner)):
            if value is not None:
                args.append(value)
                parts.append(f"{column} = ${len(args)}")
        if after is not None:
            args += [after[0], after[1]]
            a, b = len(args) - 1, len(args)
            parts.append(f"(chain > ${a} OR (chain = ${a} AND address > ${b}))")
        args.append(int(limit))
        where = ("WHERE " + " AND ".join(parts)) if parts else ""
        async with self.db.read() as conn:
            sql = f"SELECT * FROM addresses {where} ORDER BY chain, address LIMIT ${len(args)}"
            rows = await conn.fetch(sql, *args)
        return [address_entry(r) for r in rows]

    async def alerts_page(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        chain: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[OutboxMessage]:
        """Outbox messages, newest first, filtered, starting below the sequence number `before`."""
        parts: list[str] = []
        args: list[Any] = []
        for column, value in (("status", status), ("kind", kind), ("chain", chain)):
            if value is not None:
                args.append(value)
                parts.append(f"{column} = ${len(args)}")
        if before is not None:
            args.append(int(before))
            parts.append(f"seq < ${len(args)}")
        args.append(int(limit))
        where = ("WHERE " + " AND ".join(parts)) if parts else ""
        async with self.db.read() as conn:
            rows = await conn.fetch(f"SELECT * FROM outbox {where} ORDER BY seq DESC LIMIT ${len(args)}", *args)
        return [_message(r) for r in rows]


def _marks(values: Sequence[Any], first: int) -> str:
    return ", ".join(f"${first + i}" for i in range(len(values))) or "NULL"


def _chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i : i + size] for i in range(0, len(values), size)]
