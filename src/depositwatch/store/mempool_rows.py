"""Unconfirmed sightings: matches the mempool (or the pending watcher) showed before any block, recorded
with their alerts, retracted when they leave the pool unmined, and read back for the watchers. Each
function works on the connection of its caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from depositwatch.models import AlertEvent, Match, MatchKind
from depositwatch.store.enqueue import enqueue
from depositwatch.store.match_rows import move_match, upsert_matches
from depositwatch.store.writers import begin_chain_write
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.store.base import ChainPolicy, Scope
    from depositwatch.store.drivers import Conn


async def record_mempool(conn: Conn, dialect: str, scope: Scope, policy: ChainPolicy, matches: Sequence[Match]) -> int:
    """Record unconfirmed matches (block None) and alert on the new ones; return how many were new.

    A token transfer whose block was committed first (the pool was read just before) is already
    recorded under the block's id (`pending_token_id` differs from it): its sighting adds nothing."""
    stamp = now()
    await begin_chain_write(conn, dialect, scope, policy.chain)
    before = await conn.fetchval("SELECT COUNT(*) FROM outbox")
    fresh = []
    for match in matches:
        status = await conn.fetchval("SELECT status FROM matches WHERE scope = $1 AND id = $2", scope.name, match.id)
        if status is None and not await _mined_token(conn, scope, match):
            fresh.append(match)
        elif status == "retracted":  # dropped earlier, back in the mempool now
            await move_match(conn, scope, match, "mempool", stamp)
            if match.is_alert:
                await enqueue(conn, scope, policy, [(match.id, AlertEvent.DETECTED, 0)], stamp)
    if fresh:
        await upsert_matches(conn, dialect, scope, policy, fresh, 0, stamp)
    after = await conn.fetchval("SELECT COUNT(*) FROM outbox")
    return int(after - before)


async def _mined_token(conn: Conn, scope: Scope, match: Match) -> bool:
    """Whether a pending token match's transfer is in a block already (same transaction, contract,
    kind and key; not retracted)."""
    contract = match.transfer.asset.contract
    if contract is None:
        return False  # ETH: the block's match has the pending match's id
    # `kind <> 'deposit'` lets both databases use the partial index `matches_alerts_by_tx`.
    found = await conn.fetchval(
        "SELECT 1 FROM matches WHERE scope = $1 AND txid = $2 AND kind <> 'deposit' AND kind = $3"
        " AND asset_contract = $4 AND key = $5 AND block_height IS NOT NULL"
        " AND status IN ('seen', 'confirmed')",
        scope.name,
        match.transfer.txid,
        str(match.kind),
        contract,
        match.key,
    )
    return found is not None


async def drop_mempool(conn: Conn, dialect: str, scope: Scope, policy: ChainPolicy, match_ids: Sequence[str]) -> int:
    """Retract unconfirmed matches whose transaction left the mempool without being mined; return how
    many were retracted."""
    stamp = now()
    dropped = 0
    await begin_chain_write(conn, dialect, scope, policy.chain)
    for match_id in match_ids:
        changed = await conn.execute(
            "UPDATE matches SET status = 'retracted', updated_at = $1"
            " WHERE scope = $2 AND id = $3 AND status = 'mempool'",
            stamp,
            scope.name,
            match_id,
        )
        if changed:
            dropped += 1
            kind = await conn.fetchval("SELECT kind FROM matches WHERE scope = $1 AND id = $2", scope.name, match_id)
            if kind != MatchKind.DEPOSIT:
                await enqueue(conn, scope, policy, [(match_id, AlertEvent.RETRACTED, 0)], stamp)
    return dropped


async def mempool_matches(conn: Conn, scope: Scope, chain: str) -> list[tuple[str, str]]:
    """`(id, txid)` of the matches seen only in the mempool so far."""
    rows = await conn.fetch(
        "SELECT id, txid FROM matches WHERE scope = $1 AND chain = $2 AND status = 'mempool'", scope.name, chain
    )
    return [(str(r[0]), str(r[1])) for r in rows]
