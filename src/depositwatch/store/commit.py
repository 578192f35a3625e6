"""A chain's follower moving on or back: a batch of blocks committed, or a reorg's blocks undone, as the
steps of the caller's one transaction (matches, outputs, alerts, remembered blocks and the cursor
together, or nothing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from depositwatch.store.base import Cursor
from depositwatch.store.cursors import (
    expect_cursor,
    forget_blocks_above,
    forget_blocks_below,
    remember_blocks,
    write_cursor,
)
from depositwatch.store.match_rows import confirm, retract_above, upsert_matches
from depositwatch.store.outputs import record_outputs, unwind_outputs
from depositwatch.store.writers import begin_chain_write
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.models import BlockRef
    from depositwatch.store.base import BlockEffects, ChainPolicy, Scope
    from depositwatch.store.drivers import Conn


async def commit_blocks(
    conn: Conn,
    dialect: str,
    scope: Scope,
    cursor: Cursor,
    policy: ChainPolicy,
    effects: Sequence[BlockEffects],
    tip_height: int,
) -> Cursor:
    """Write blocks' matches, outputs, alerts and the moved cursor; return the moved cursor.

    `effects` holds one block at least. `cursor` is where the caller believes the chain stands; if the
    stored cursor differs (another instance moved it), or the scope's lease fence no longer holds,
    LeaseLost is raised before anything is written.
    """
    last = effects[-1].block
    moved = Cursor(cursor.name, cursor.chain, last.height, last.hash, cursor.range_start, cursor.range_stop)
    stamp = now()
    await begin_chain_write(conn, dialect, scope, policy.chain)
    await expect_cursor(conn, cursor)
    await remember_blocks(conn, cursor.name, [effect.block for effect in effects])
    if scope.mode == "live":
        first = effects[0].block
        await conn.execute(
            "INSERT INTO live_start (chain, height, time) VALUES ($1, $2, $3) ON CONFLICT (chain) DO NOTHING",
            policy.chain,
            first.height,
            first.time,
        )
    matches = [match for effect in effects for match in effect.matches]
    if matches:
        await upsert_matches(conn, dialect, scope, policy, matches, tip_height, stamp)
    await record_outputs(conn, scope, policy.chain, effects)
    await confirm(conn, scope, policy, tip_height, stamp)
    # Nothing is left below the previous commit's bound: the follower forgot it all when it started.
    await forget_blocks_below(
        conn, cursor.name, last.height - policy.keep_blocks, since=cursor.height - policy.keep_blocks
    )
    await write_cursor(conn, moved)
    return moved


async def rewind(conn: Conn, dialect: str, scope: Scope, cursor: Cursor, policy: ChainPolicy, to: BlockRef) -> Cursor:
    """Undo every block above `to` (a reorg): retract their matches, unmake their outputs and spends, and
    move the cursor back; return the moved cursor."""
    stamp = now()
    moved = Cursor(cursor.name, cursor.chain, to.height, to.hash, cursor.range_start, cursor.range_stop)
    await begin_chain_write(conn, dialect, scope, policy.chain)
    await expect_cursor(conn, cursor)
    await retract_above(conn, scope, policy, to.height, stamp)
    await forget_blocks_above(conn, cursor.name, to.height)
    await unwind_outputs(conn, scope, policy.chain, to.height)
    await write_cursor(conn, moved)
    return moved
