"""The guard every write of a chain's followers opens with: the scope's lease fence still holds, and the
chain's live writers (block commits, rewinds, the pending watcher's sightings) take turns."""

from __future__ import annotations

from typing import TYPE_CHECKING

from depositwatch.store.leases import check_fence

if TYPE_CHECKING:
    from depositwatch.store.base import Scope
    from depositwatch.store.drivers import Conn


async def begin_chain_write(conn: Conn, dialect: str, scope: Scope, chain: str) -> None:
    """Start a write of `chain`'s matches in the caller's transaction: LeaseLost unless the scope's
    fence holds, then the chain's one-writer lock."""
    await check_fence(conn, dialect, scope.fence)
    await _one_writer(conn, dialect, scope, chain)


async def _one_writer(conn: Conn, dialect: str, scope: Scope, chain: str) -> None:
    """Serialize the live writers of one chain (block commits, rewinds, the pending watcher's sightings)
    until the transaction ends, so each sees what the other committed: a pending token transfer recorded
    while its block commits would otherwise miss the block's match (and the block the pending row), and
    the transfer would alert twice under two ids. SQLite's write transactions are exclusive already;
    replay scopes have no pending watcher (their parallel shards are not serialized)."""
    if dialect == "postgres" and scope.mode == "live":
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{scope.name}|{chain}")
