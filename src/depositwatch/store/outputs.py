"""Watched Bitcoin outputs: those that paid revoked scripts, recorded with their blocks, marked spent,
undone by a reorg, and read back for the follower. Each function works on the connection of its
caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from depositwatch.models import WatchedOutput

if TYPE_CHECKING:
    from depositwatch.store.base import BlockEffects, Scope
    from depositwatch.store.drivers import Conn

_INSERT = (
    "INSERT INTO watched_outputs (scope, chain, txid, vout, script, amount, height)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
)


async def record_outputs(conn: Conn, scope: Scope, chain: str, effects: Sequence[BlockEffects]) -> None:
    """The outputs blocks created and spent."""
    # Every insert before any spend: a spend in a later block of the batch finds its output, and
    # an output created and spent in one block is inserted, then marked spent, as in chain order.
    created = [
        (scope.name, chain, out.txid, out.vout, out.script, out.amount, effect.block.height)
        for effect in effects
        for out in effect.new_outputs
    ]
    if created:
        await conn.executemany(_INSERT, created)
    spent = [
        (spender, effect.block.height, scope.name, chain, txid, vout)
        for effect in effects
        for txid, vout, spender in effect.spent_outputs
    ]
    if spent:
        await conn.executemany(
            "UPDATE watched_outputs SET spent_txid = $1, spent_height = $2"
            " WHERE scope = $3 AND chain = $4 AND txid = $5 AND vout = $6",
            spent,
        )


async def unwind_outputs(conn: Conn, scope: Scope, chain: str, height: int) -> None:
    """Undo the blocks above `height` (a reorg): the outputs they created go, their spends are unmade."""
    await conn.execute(
        "DELETE FROM watched_outputs WHERE scope = $1 AND chain = $2 AND height > $3",
        scope.name,
        chain,
        height,
    )
    await conn.execute(
        "UPDATE watched_outputs SET spent_txid = NULL, spent_height = NULL"
        " WHERE scope = $1 AND chain = $2 AND spent_height > $3",
        scope.name,
        chain,
        height,
    )


async def unspent_outputs(conn: Conn, scope: Scope, chain: str) -> list[WatchedOutput]:
    """Unspent outputs that paid revoked scripts."""
    rows = await conn.fetch(
        "SELECT txid, vout, script, amount, height FROM watched_outputs"
        " WHERE scope = $1 AND chain = $2 AND spent_txid IS NULL",
        scope.name,
        chain,
    )
    return [WatchedOutput(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]


async def add_outputs(conn: Conn, scope: Scope, chain: str, outputs: Sequence[WatchedOutput]) -> int:
    """Add outputs found outside following (scantxoutset, prevouts); return how many were new."""
    added = 0
    for out in outputs:
        added += await conn.execute(_INSERT, scope.name, chain, out.txid, out.vout, out.script, out.amount, out.height)
    return added
