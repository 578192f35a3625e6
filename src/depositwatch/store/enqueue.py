"""Alerts into the outbox: a message per (match, event), built from the match's row as it stands in the
caller's transaction, at the match's next revision."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from depositwatch.jsonutil import dumps
from depositwatch.messages import build_payload
from depositwatch.models import AlertEvent, MatchKind
from depositwatch.store.drivers import fetch_in

if TYPE_CHECKING:
    from depositwatch.store.base import ChainPolicy, Scope
    from depositwatch.store.drivers import Conn

Alert = tuple[str, AlertEvent, int]
"""What to announce: the match's id, the event, and the confirmations at the time."""


async def enqueue(conn: Conn, scope: Scope, policy: ChainPolicy, alerts: Sequence[Alert], stamp: int) -> None:
    """Outbox messages (match id, event, confirmations) in this order, each from its match's row
    as it stands now; a match's messages take the next revisions after what the outbox holds."""
    if not scope.send_alerts or not alerts:
        return
    ids = {match_id for match_id, _, _ in alerts}
    if scope.mode == "replay":
        # A replay announces first sightings only, and nothing the live daemon (or an earlier
        # replay) already sent for the same id: the receivers have heard of it.
        told = {row[0] for row in await fetch_in(conn, "SELECT DISTINCT alert_id FROM outbox WHERE alert_id", [], ids)}
        pruned = await fetch_in(conn, "SELECT alert_id FROM outbox_pruned WHERE alert_id", [], ids)
        told |= {row[0] for row in pruned}
        fresh = []
        for alert in alerts:
            if alert[1] is AlertEvent.DETECTED and alert[0] not in told:
                fresh.append(alert)
                told.add(alert[0])
        alerts = fresh
        ids = {match_id for match_id, _, _ in alerts}
        if not alerts:
            return
    rows = {
        row["id"]: row
        for row in await fetch_in(
            conn,
            "SELECT m.*, t.descriptor AS tree_descriptor FROM matches m LEFT JOIN key_trees t ON t.id = m.tree_id"
            " WHERE m.scope = $1 AND m.id",
            [scope.name],
            ids,
        )
    }
    # Revisions continue after what the outbox holds and after what retention removed from it.
    pruned_revs = await fetch_in(conn, "SELECT alert_id, rev FROM outbox_pruned WHERE alert_id", [], ids)
    revs: dict[str, int] = {row[0]: int(row[1]) for row in pruned_revs}
    for row in await fetch_in(
        conn, "SELECT alert_id, MAX(rev) FROM outbox WHERE alert_id", [], ids, " GROUP BY alert_id"
    ):
        revs[row[0]] = max(revs.get(row[0], 0), int(row[1]))
    messages = []
    for match_id, event, confirmations in alerts:
        row = rows[match_id]
        kind = MatchKind(row["kind"])
        poisoning = bool(row["poisoning"])
        if poisoning and policy.poisoning_alerts == "off":
            continue  # recorded, never announced
        rev = revs[match_id] = revs.get(match_id, 0) + 1
        severity = "info" if poisoning else str(policy.severities.get(kind, "info"))
        payload = build_payload(
            row,
            alert_id=match_id,
            rev=rev,
            event=event,
            severity=severity,
            chain_id=policy.chain_id,
            confirmations=confirmations,
            mode=scope.mode,
            detected_at=stamp,
        )
        messages.append(
            (
                match_id,
                rev,
                str(event),
                str(kind),
                severity,
                row["chain"],
                f"{row['chain']}:{row['address']}",
                row["block_height"],
                dumps(payload),
                stamp,
            )
        )
    await conn.executemany(
        "INSERT INTO outbox (alert_id, rev, event, kind, severity, chain, order_key, block_height, payload,"
        " status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'new', $10)"
        " ON CONFLICT (alert_id, rev) DO NOTHING",
        messages,
    )
