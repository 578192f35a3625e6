"""Reads of recorded matches: a scope's matches in chain order (replay, tests), the CLI's filtered and
newest-first list, and the alerts nobody was told of (health). Each function works on the connection
of its caller's read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict, Unpack

if TYPE_CHECKING:
    from depositwatch.models import MatchKind
    from depositwatch.store.base import Scope
    from depositwatch.store.drivers import Conn


async def matches_in_order(
    conn: Conn,
    scope: Scope,
    *,
    chain: str | None = None,
    kind: MatchKind | None = None,
    heights: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Matches of a scope in chain order (height, txid, index), as plain dicts; `heights` is inclusive."""
    sql = "SELECT * FROM matches WHERE scope = $1"
    args: list[Any] = [scope.name]
    if heights is not None and chain is None:
        # The index is (scope, chain, block_height): without the chain a height range reads every
        # row of the scope, a cost that grows with each commit of a long replay. A replay scope
        # holds one chain's matches: its cursor's (the cursor bears the scope's name).
        chain = await conn.fetchval("SELECT chain FROM cursors WHERE name = $1", scope.name)
    if heights is not None:
        args += list(heights)
        sql += f" AND block_height BETWEEN ${len(args) - 1} AND ${len(args)}"
    if chain is not None:
        args.append(chain)
        sql += f" AND chain = ${len(args)}"
    if kind is not None:
        args.append(str(kind))
        sql += f" AND kind = ${len(args)}"
    sql += " ORDER BY block_height, txid, idx, kind"
    return [dict(r) for r in await conn.fetch(sql, *args)]


class MatchFilters(TypedDict, total=False):
    """The filters of `list_matches`; each one left out filters nothing (`limit`: 100 rows)."""

    deposits_only: bool
    chain: str | None
    kind: str | None
    address: str | None
    owner: str | None
    since: int | None
    final: bool
    limit: int


async def list_matches(conn: Conn, scope: str, **filters: Unpack[MatchFilters]) -> list[dict[str, Any]]:
    """Matches of a scope (`live` or `replay:<run id>`), newest first, filtered; for the CLI.

    `address` compares case-insensitively for EVM text (0x...), exactly otherwise (base58 is
    case-sensitive); `since` is unix seconds against the block time (the first sighting while
    unmined). `deposits_only` with `final` reads the documented `deposits` view's meaning.
    """
    chain, kind, address = filters.get("chain"), filters.get("kind"), filters.get("address")
    owner, since = filters.get("owner"), filters.get("since")
    sql = "SELECT * FROM matches WHERE scope = $1"
    args: list[Any] = [scope]

    def where(clause: str, value: Any) -> None:
        nonlocal sql
        args.append(value)
        sql += " AND " + clause.replace("$?", f"${len(args)}")

    if filters.get("deposits_only", False):
        where("kind = $?", "deposit")
    if chain is not None:
        where("chain = $?", chain)
    if kind is not None:
        where("kind = $?", kind)
    if address is not None:
        if address[:2].lower() == "0x":
            where("LOWER(address) = $?", address.lower())
        else:
            where("address = $?", address)
    if owner is not None:
        where("owner = $?", owner)
    if since is not None:
        where("COALESCE(block_time, first_seen) >= $?", since)
    if filters.get("final", False):
        sql += " AND status = 'confirmed'"
    args.append(filters.get("limit", 100))
    sql += (
        " ORDER BY COALESCE(block_height, -1) DESC, COALESCE(block_time, first_seen) DESC, txid, idx, kind"
        f" LIMIT ${len(args)}"
    )
    return [dict(r) for r in await conn.fetch(sql, *args)]


async def unsent_alerts(conn: Conn, scope: Scope) -> int:
    """Alert matches of a scope (not retracted) that have no message in the outbox: nobody was told."""
    value = await conn.fetchval(
        "SELECT COUNT(*) FROM matches m WHERE m.scope = $1 AND m.kind <> 'deposit'"
        " AND m.status <> 'retracted' AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.alert_id = m.id)"
        " AND NOT EXISTS (SELECT 1 FROM outbox_pruned p WHERE p.alert_id = m.id)",
        scope.name,
    )
    return int(value or 0)
