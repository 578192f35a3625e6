"""`depositwatch db migrate`: apply the store's schema migrations."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.commands import add_store_option, out, store_from


def register(sub: Any) -> None:
    """Add `db migrate`."""
    db = sub.add_parser("db", help="store schema").add_subparsers(dest="db_command", required=True)
    migrate = db.add_parser("migrate", help="apply pending schema migrations")
    add_store_option(migrate)
    migrate.set_defaults(handler=_migrate)


async def _migrate(args: argparse.Namespace) -> int:
    store = await store_from(args, migrate=False)
    try:
        applied = await store.migrate()
    finally:
        await store.close()
    out(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is current")
    return 0
