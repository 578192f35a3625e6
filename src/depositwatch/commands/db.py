"""`depositwatch db migrate`: apply the store's schema migrations."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.commands import add_store_option, load, out, store_from
from depositwatch.config import StoreConfig
from depositwatch.store import connect_store
from depositwatch.store.retention import prune_once


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 <= value <= 36_500:
        raise argparse.ArgumentTypeError(f"must be 0..36500 days: {text!r}")
    return value


def register(sub: Any) -> None:
    """Add `db migrate`."""
    db = sub.add_parser("db", help="store schema").add_subparsers(dest="db_command", required=True)
    migrate = db.add_parser("migrate", help="apply pending schema migrations")
    add_store_option(migrate)
    migrate.set_defaults(handler=_migrate)

    prune = db.add_parser("prune", help="remove settled history older than the [retention] ages, once")
    prune.add_argument("--dry-run", action="store_true", help="count what would be removed, remove nothing")
    prune.add_argument("--outbox-days", type=_days, help="override retention.outbox_days (0 keeps every message)")
    prune.add_argument("--matches-days", type=_days, help="override retention.matches_days (0 keeps every match)")
    add_store_option(prune)
    prune.set_defaults(handler=_prune)


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


async def _prune(args: argparse.Namespace) -> int:
    config = load(args, required=False)
    retention = config.retention
    overrides = {"outbox_days": args.outbox_days, "matches_days": args.matches_days}
    retention = retention.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    store = await store_from(args, config)
    try:
        result = await prune_once(store, retention, dry_run=args.dry_run)
    finally:
        await store.close()
    verb = "would remove" if args.dry_run else "removed"
    kept = [
        f"{what} kept (retention.{what}_days = 0)"
        for what in ("outbox", "matches")
        if not getattr(retention, f"{what}_days")
    ]
    out(
        f"{verb} {result.outbox} outbox message(s) older than {retention.outbox_days:g} days"
        f" and {result.matches} match(es) older than {retention.matches_days:g} days"
        + (f"; {', '.join(kept)}" if kept else "")
    )
    return 0
