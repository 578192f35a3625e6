"""The address book's version: every change of the book (addresses, key trees, a tree's growth) bumps it
in the change's own transaction and, on PostgreSQL, announces it, so every instance reloads its registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from depositwatch.store.drivers import Conn

NOTIFY_CHANNEL = "depositwatch_addresses"


async def bump_book(conn: Conn, dialect: str) -> None:
    """Move the book's version on, and tell the listening instances (PostgreSQL) once this commits."""
    await conn.execute("UPDATE address_book_version SET version = version + 1 WHERE id = 1")
    if dialect == "postgres":
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
