"""Where each follower stands: the chain's recorded identity, the cursors, and the recent blocks a cursor
remembers for walking back a reorg. Each function works on the connection of its caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from depositwatch.models import Block
from depositwatch.store.base import Cursor, IdentityMismatch, LeaseLost
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.store.drivers import Conn


def _cursor(row: Any) -> Cursor:
    return Cursor(row["name"], row["chain"], row["height"], row["hash"], row["range_start"], row["range_stop"])


async def check_identity(conn: Conn, chain: str, identity: str) -> None:
    """Record the chain's identity on first use; afterwards refuse a node on another chain."""
    # Instances starting together may both find no row: the first insert wins, the other reads it.
    await conn.execute(
        "INSERT INTO chain_identity (chain, identity) VALUES ($1, $2) ON CONFLICT (chain) DO NOTHING",
        chain,
        identity,
    )
    known = await conn.fetchval("SELECT identity FROM chain_identity WHERE chain = $1", chain)
    if known != identity:
        raise IdentityMismatch(
            f"chain {chain}: the node reports {identity}, but this store recorded {known}; "
            "refusing to mix two chains in one store"
        )


async def read_cursor(conn: Conn, name: str) -> Cursor | None:
    """The named cursor, or None before the first block."""
    row = await conn.fetchrow("SELECT * FROM cursors WHERE name = $1", name)
    return None if row is None else _cursor(row)


async def cursor_updated_at(conn: Conn, name: str) -> int | None:
    """Unix time of the named cursor's last move, or None."""
    value = await conn.fetchval("SELECT updated_at FROM cursors WHERE name = $1", name)
    return None if value is None else int(value)


async def place_cursor(conn: Conn, cursor: Cursor) -> None:
    """Create or move a cursor to a chosen block, remembering that block too, so a reorg of the very
    first blocks still finds it."""
    await write_cursor(conn, cursor)
    if cursor.height >= 0:
        await conn.execute(
            "INSERT INTO blocks (cursor, height, hash, parent_hash, time) VALUES ($1, $2, $3, '', 0)"
            " ON CONFLICT (cursor, height) DO UPDATE SET hash = excluded.hash",
            cursor.name,
            cursor.height,
            cursor.hash,
        )


async def write_cursor(conn: Conn, cursor: Cursor) -> None:
    """Create or move a cursor, stamped with the time of the move."""
    await conn.execute(
        "INSERT INTO cursors (name, chain, height, hash, range_start, range_stop, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET height = excluded.height,"
        " hash = excluded.hash, range_start = excluded.range_start, range_stop = excluded.range_stop,"
        " updated_at = excluded.updated_at",
        cursor.name,
        cursor.chain,
        cursor.height,
        cursor.hash,
        cursor.range_start,
        cursor.range_stop,
        now(),
    )


async def expect_cursor(conn: Conn, cursor: Cursor) -> None:
    """Raise LeaseLost unless the stored cursor (if any) is where the caller believes it is."""
    row = await conn.fetchrow("SELECT height, hash FROM cursors WHERE name = $1", cursor.name)
    if row is not None and (row["height"], row["hash"]) != (cursor.height, cursor.hash):
        raise LeaseLost(
            f"cursor {cursor.name} is at {row['height']} {row['hash']}, not {cursor.height} {cursor.hash}: "
            "another instance is following this chain"
        )


async def block_hash(conn: Conn, cursor: str, height: int) -> str | None:
    """The hash this cursor processed at `height`, if it still remembers it."""
    value = await conn.fetchval("SELECT hash FROM blocks WHERE cursor = $1 AND height = $2", cursor, height)
    return None if value is None else str(value)


async def remember_blocks(conn: Conn, cursor: str, blocks: Sequence[Block]) -> None:
    """Remember the blocks a cursor processed (a block already there at its height is replaced)."""
    await conn.executemany(
        "INSERT INTO blocks (cursor, height, hash, parent_hash, time) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (cursor, height) DO UPDATE SET hash = excluded.hash,"
        " parent_hash = excluded.parent_hash, time = excluded.time",
        [(cursor, block.height, block.hash, block.parent_hash, block.time) for block in blocks],
    )


async def forget_blocks_below(conn: Conn, cursor: str, height: int, since: int | None = None) -> None:
    """Forget the blocks too deep for a reorg to reach: below `height`, and with `since`, from there up
    (where the caller knows nothing older is left). On PostgreSQL a deleted row's index entry stays until
    a vacuum, and a delete from the cursor's first height walks every such entry again: each commit of a
    long run paid for all the blocks it had forgotten (most of the server's time by block 250,000 of a
    million-block replay without autovacuum)."""
    if since is None:
        await conn.execute("DELETE FROM blocks WHERE cursor = $1 AND height < $2", cursor, height)
    else:
        await conn.execute(
            "DELETE FROM blocks WHERE cursor = $1 AND height >= $2 AND height < $3", cursor, since, height
        )


async def forget_blocks_above(conn: Conn, cursor: str, height: int) -> None:
    """Forget the blocks a reorg took away."""
    await conn.execute("DELETE FROM blocks WHERE cursor = $1 AND height > $2", cursor, height)


async def drop_cursor(conn: Conn, name: str) -> None:
    """Forget a cursor and the blocks it remembers."""
    await conn.execute("DELETE FROM blocks WHERE cursor = $1", name)
    await conn.execute("DELETE FROM cursors WHERE name = $1", name)
