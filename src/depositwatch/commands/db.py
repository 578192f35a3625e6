"""`depositwatch db migrate`: apply the store's schema migrations."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.commands import add_store_option, load, out
from depositwatch.config import StoreConfig
from depositwatch.store import connect_store


def register(sub: Any) -> None:
    """Add `db migrate`."""
    db = sub.add_parser("db", help="store schema").add_subparsers(dest="db_command", required=True)
    migrate = db.add_parser("migrate", help="apply pending schema migrations")
    add_store_option(migrate)
    migrate.set_defaults(handler=_migrate)


async def _migrate(args: argparse.Namespace) -> int:
    url = getattr(args, "store", None)
    config = StoreConfig(url=url) if url else load(args, required=False).store
    store = await connect_store(config, create=True)
    try:
        applied = await store.migrate()
        await store.check_schema()  # a store newer than this program is refused here too
    finally:
        await store.close()
    out(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is current")
    return 0
