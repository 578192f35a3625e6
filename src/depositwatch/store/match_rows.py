"""The `matches` rows a commit writes: new matches inserted with what the book says of their keys, known
ones moved (mined, re-mined, confirmed, retracted), each change's alerts enqueued in the same
transaction. Each function works on the connection of its caller's transaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from depositwatch.models import AlertEvent, Match, MatchKind, pending_token_id
from depositwatch.store.drivers import fetch_in
from depositwatch.store.enqueue import Alert, enqueue
from depositwatch.store.trees import address_details, extend_trees

if TYPE_CHECKING:
    from depositwatch.store.base import ChainPolicy, Scope
    from depositwatch.store.drivers import Conn

MATCH_COLUMNS = (
    "scope, id, chain, kind, status, asset_symbol, asset_contract, asset_decimals, amount, from_address,"
    " to_address, key, address, label, owner, revoked_at, txid, idx, block_height, block_hash, block_time,"
    " first_seen, updated_at, asset_listed, poisoning, tree_id, tree_index"
)
_INSERT_MATCH = f"INSERT INTO matches ({MATCH_COLUMNS}) VALUES ({', '.join(f'${i}' for i in range(1, 28))})"


def _with_late_revocations(matches: Sequence[Match], details: dict[bytes, Any]) -> list[Match]:
    """Matches as the book stands at commit: a deposit classified with a registry older than a
    revocation committed meanwhile (a block in flight while `addresses revoke` ran) also counts as
    `revoked_incoming` when its block is at or after the revocation time."""
    found: list[Match] = []
    for match in matches:
        found.append(match)
        info = details.get(match.key)
        revoked_at = None if info is None else info["revoked_at"]
        if (
            match.kind is MatchKind.DEPOSIT
            and revoked_at is not None
            and match.block is not None
            and match.block_time is not None
            and match.block_time >= revoked_at
        ):
            found.append(
                Match(match.chain, MatchKind.REVOKED_INCOMING, match.key, match.transfer, match.block, match.block_time)
            )
    return found


def _pending_ids(matches: Sequence[Match]) -> dict[str, str]:
    """For a block's token alerts: the id each would have had if first seen pending (`pending_token_id`)."""
    return {
        m.id: pending_token_id(m.chain, m.kind, m.transfer.txid, m.transfer.asset.contract)
        for m in matches
        if m.is_alert and m.block is not None and m.transfer.index is not None and m.transfer.asset.contract
    }


def _following_pending(
    matches: Sequence[Match], pending: dict[str, str], known: dict[str, str], keys: dict[str, bytes]
) -> tuple[list[Match], list[Match]]:
    """A block's token match whose transfer was first seen pending takes the pending match's id (the
    first such match of that transaction, contract and watched key), so the pending alert gets the
    `mined` update instead of a second alert. Returns the matches and those that took a pending id."""
    if not pending:
        return list(matches), []
    out: list[Match] = []
    taken: list[Match] = []
    for match in matches:
        earlier = pending.get(match.id)
        if (
            earlier is not None
            and match.id not in known
            and earlier in known
            and keys.get(earlier) == match.key
            and earlier not in {m.id for m in taken}
        ):
            taken.append(dataclasses.replace(match, id=earlier))
            out.append(taken[-1])
            continue
        out.append(match)
    return out, taken


def match_row(scope: Scope, match: Match, info: Any, status: str, stamp: int, policy: ChainPolicy) -> tuple[Any, ...]:
    """The values of a new `matches` row, in `MATCH_COLUMNS` order."""
    t = match.transfer
    block = match.block
    return (
        scope.name,
        match.id,
        match.chain,
        str(match.kind),
        status,
        t.asset.symbol,
        t.asset.contract,
        t.asset.decimals,
        str(t.amount),
        t.from_address,
        t.to_address,
        match.key,
        info["address"] if info else (t.to_address or t.from_address or match.key.hex()),
        info["label"] if info else "",
        info["owner"] if info else "",
        info["revoked_at"] if info else None,
        t.txid,
        t.index,
        block.height if block else None,
        block.hash if block else None,
        match.block_time,
        stamp,
        stamp,
        int(t.asset.listed),
        int(policy.is_poisoning(match)),
        info["tree_id"] if info else None,
        info["tree_index"] if info else None,
    )


async def upsert_matches(
    conn: Conn,
    dialect: str,
    scope: Scope,
    policy: ChainPolicy,
    matches: Sequence[Match],
    tip_height: int,
    stamp: int,
) -> None:
    """Insert new matches, move known ones, and enqueue their alerts: one lookup of the known ids,
    one multi-row insert and one outbox write for the whole list, in the list's order."""
    details = await address_details(conn, policy.chain, {m.key for m in matches})
    matches = _with_late_revocations(matches, details)
    await extend_trees(conn, dialect, [info for info in details.values() if isinstance(info, dict)])
    pending = _pending_ids(matches)
    rows = await fetch_in(
        conn,
        "SELECT id, status, key FROM matches WHERE scope = $1 AND id",
        [scope.name],
        {m.id for m in matches} | set(pending.values()),
    )
    known: dict[str, str] = {row["id"]: row["status"] for row in rows}
    matches, mined = _following_pending(matches, pending, known, {row["id"]: bytes(row["key"]) for row in rows})
    if mined:  # the block's log index and amount, from now on
        await conn.executemany(
            "UPDATE matches SET idx = $1, amount = $2 WHERE scope = $3 AND id = $4",
            [(m.transfer.index, str(m.transfer.amount), scope.name, m.id) for m in mined],
        )
    inserts: list[tuple[Any, ...]] = []
    alerts: list[Alert] = []
    # A replay's match already deep enough is written confirmed: `confirm` would turn it so in this
    # same transaction, and a replay announces first sightings only, never the confirmation. Written
    # 'seen' and then updated, every match would leave a dead 'seen' entry in PostgreSQL's status
    # index (no HOT update: the column is indexed), which each later `confirm` walks until a vacuum.
    final_from = tip_height - policy.confirmations + 1 if scope.mode == "replay" else None

    async def flush() -> None:
        if inserts:
            await conn.executemany(_INSERT_MATCH, inserts)
            inserts.clear()
        await enqueue(conn, scope, policy, alerts, stamp)
        alerts.clear()

    for match in matches:
        block = match.block
        status = known.get(match.id)
        if status is None:
            status = "seen" if block is not None else "mempool"
            if block is not None and final_from is not None and block.height <= final_from:
                status = "confirmed"
            inserts.append(match_row(scope, match, details.get(match.key), status, stamp, policy))
            known[match.id] = status
            event = AlertEvent.DETECTED
        else:
            if block is None:
                continue  # a mempool sighting of a transfer already recorded
            await flush()  # the row must exist, and its earlier alerts be written, before it moves
            if status in ("seen", "confirmed"):
                await move_match(conn, scope, match, status, stamp)
                continue
            event = AlertEvent.MINED if status == "mempool" else AlertEvent.DETECTED
            await move_match(conn, scope, match, "seen", stamp)
            known[match.id] = "seen"
        if match.is_alert:
            alerts.append((match.id, event, tip_height - block.height + 1 if block else 0))
    await flush()


async def move_match(conn: Conn, scope: Scope, match: Match, status: str, stamp: int) -> None:
    """Give a recorded match a new status and the block it is in now (None: the mempool)."""
    block = match.block
    await conn.execute(
        "UPDATE matches SET status = $1, block_height = $2, block_hash = $3, block_time = $4, updated_at = $5"
        " WHERE scope = $6 AND id = $7",
        status,
        block.height if block else None,
        block.hash if block else None,
        match.block_time,
        stamp,
        scope.name,
        match.id,
    )


async def confirm(conn: Conn, scope: Scope, policy: ChainPolicy, tip_height: int, stamp: int) -> None:
    """Turn the matches now deep enough below `tip_height` confirmed, and announce it."""
    deepest = tip_height - policy.confirmations + 1
    # `+block_height`: look the rows up by status (few are 'seen' at any time). Searched by height,
    # a commit would walk every match below the depth, a cost that grows with the store.
    rows = await conn.fetch(
        "SELECT id, block_height FROM matches"
        " WHERE scope = $1 AND chain = $2 AND status = 'seen' AND +block_height <= $3",
        scope.name,
        policy.chain,
        deepest,
    )
    if not rows:
        return
    await conn.execute(
        "UPDATE matches SET status = 'confirmed', updated_at = $1"
        " WHERE scope = $2 AND chain = $3 AND status = 'seen' AND +block_height <= $4",
        stamp,
        scope.name,
        policy.chain,
        deepest,
    )
    # Deposits are not alerts; the deposits sink hears of them once, when they are final.
    alerts = [(row["id"], AlertEvent.CONFIRMED, tip_height - int(row["block_height"]) + 1) for row in rows]
    await enqueue(conn, scope, policy, alerts, stamp)


async def retract_above(conn: Conn, scope: Scope, policy: ChainPolicy, height: int, stamp: int) -> None:
    """Retract the matches in blocks above `height` (a reorg), and announce what was announced."""
    rows = await conn.fetch(
        "SELECT id, kind, status FROM matches WHERE scope = $1 AND chain = $2 AND block_height > $3"
        " AND status IN ('seen', 'confirmed')",
        scope.name,
        policy.chain,
        height,
    )
    await conn.executemany(
        "UPDATE matches SET status = 'retracted', updated_at = $1 WHERE scope = $2 AND id = $3",
        [(stamp, scope.name, row["id"]) for row in rows],
    )
    # A deposit was only announced once final; retract only what was announced.
    retracted = [
        (row["id"], AlertEvent.RETRACTED, 0)
        for row in rows
        if row["kind"] != MatchKind.DEPOSIT or row["status"] == "confirmed"
    ]
    await enqueue(conn, scope, policy, retracted, stamp)
