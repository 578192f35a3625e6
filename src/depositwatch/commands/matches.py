"""`depositwatch matches list` and `depositwatch deposits list`: what the store recorded, without SQL."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.commands import CommandError, add_store_option, err, out, store_from
from depositwatch.commands.addresses import print_table
from depositwatch.jsonutil import dumps
from depositwatch.models import MatchKind
from depositwatch.replay import output_record
from depositwatch.timeutil import iso, parse_timestamp

MAX_LIMIT = 1_000_000  # a bound on one listing; --since narrows a larger history
MATCH_COLUMNS = ["block_time", "chain", "kind", "status", "amount", "address", "owner", "txid", "index", "block"]


def register(sub: Any) -> None:
    """Add the `matches` and `deposits` groups."""
    matches = sub.add_parser("matches", help="recorded matches (deposits and revoked-address transfers)")
    listing = matches.add_subparsers(dest="matches_command", required=True).add_parser(
        "list", help="matches, newest first"
    )
    _common(listing)
    listing.add_argument("--kind", choices=[str(k) for k in MatchKind], help="only this kind")
    listing.add_argument("--run", metavar="RUN_ID", help="the matches of a replay run (default: the live daemon's)")
    listing.set_defaults(handler=_matches)

    deposits = sub.add_parser("deposits", help="deposits to active addresses, as the exchange credits them")
    listing = deposits.add_subparsers(dest="deposits_command", required=True).add_parser(
        "list", help="deposits, newest first"
    )
    _common(listing)
    listing.add_argument("--final", action="store_true", help="only deposits with the configured confirmations")
    listing.set_defaults(handler=_deposits)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chain", help="only this chain")
    parser.add_argument("--address", help="only transfers touching this watched address")
    parser.add_argument("--owner", help="only addresses of this owner")
    parser.add_argument("--since", help="only blocks from this time on (ISO 8601 with zone, or unix seconds)")
    parser.add_argument("--limit", type=_limit, default=100, help="at most N rows (default 100)")
    parser.add_argument("--format", choices=["table", "json"], default="table", help="table, or one JSON object a line")
    add_store_option(parser)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_LIMIT}: {text!r}")
    return value


def _since(args: argparse.Namespace) -> int | None:
    if args.since is None:
        return None
    try:
        return parse_timestamp(args.since)
    except ValueError as exc:
        raise CommandError(f"--since: {exc}") from None


async def _matches(args: argparse.Namespace) -> int:
    since = _since(args)
    scope = f"replay:{args.run}" if args.run else "live"
    store = await store_from(args)
    try:
        rows = await store.list_matches(
            scope,
            chain=args.chain,
            kind=args.kind,
            address=args.address,
            owner=args.owner,
            since=since,
            limit=args.limit,
        )
    finally:
        await store.close()
    return _print(args, rows, "matches" if not args.run else f"matches in replay run {args.run}")


async def _deposits(args: argparse.Namespace) -> int:
    since = _since(args)
    store = await store_from(args)
    try:
        rows = await store.list_matches(
            "live",
            deposits_only=True,
            chain=args.chain,
            address=args.address,
            owner=args.owner,
            since=since,
            final=args.final,
            limit=args.limit,
        )
    finally:
        await store.close()
    return _print(args, rows, "deposits")


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """A replay output line (the same fields, so tools read both), with the match id and first sighting."""
    return {"id": row["id"], **output_record(row, None), "first_seen": iso(row["first_seen"])}


def _print(args: argparse.Namespace, rows: list[dict[str, Any]], what: str) -> int:
    records = [_record(row) for row in rows]
    if args.format == "json":
        for record in records:
            record.pop("chain_id")  # the store does not keep it; the config has it
            out(dumps(record))
        return 0
    if not records:
        err(f"no {what}")
        return 0
    table = [
        {
            **r,
            "amount": f"{r['amount_decimal']} {r['asset']}",
            "block": "" if r["block_height"] is None else r["block_height"],
            "index": r["index"],
            "block_time": r["block_time"] or r["first_seen"],
        }
        for r in records
    ]
    # Key-tree hits name their tree and index (`tree_id/index`); the column shows only when there are some.
    trees = [r for r in table if r.get("tree_id") is not None]
    for r in trees:
        r["tree"] = f"{r['tree_id']}/{r['tree_index']}"
    print_table(table, MATCH_COLUMNS + (["tree"] if trees else []))
    return 0
