"""`depositwatch addresses ...`: parse, import, revoke, list, stats."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from depositwatch.addressbook import BadRows, ChainDirectory, read_address_list, read_import_csv, read_text
from depositwatch.addresses import AddressError, BitcoinNetwork, parse_bitcoin_address, parse_ethereum_address
from depositwatch.chains.base import ChainSource
from depositwatch.commands import CommandError, add_store_option, err, load, out, store_from
from depositwatch.config import Config
from depositwatch.jsonutil import dumps
from depositwatch.models import AddressStatus
from depositwatch.pipeline import make_policy, make_source
from depositwatch.store import Coverage, ImportRejected, RevokeResult, SqlStore, StoreError
from depositwatch.timeutil import iso, now, parse_timestamp

CLOCK_SKEW = 300  # seconds a revocation time may lie ahead of this host's clock


def register(sub: Any) -> None:
    """Add the `addresses` group."""
    group = sub.add_parser("addresses", help="the address book").add_subparsers(dest="addr_command", required=True)

    parse = group.add_parser("parse", help="parse and normalise addresses; print one JSON object each")
    parse.add_argument("--chain", required=True, choices=["btc", "eth"], help="btc or eth")
    parse.add_argument("--network", default="mainnet", choices=[str(n) for n in BitcoinNetwork])
    parse.add_argument("address", nargs="+")
    parse.set_defaults(handler=_parse)

    imp = group.add_parser("import", help="import a CSV (chain,address,status,label,owner,revoked_at,reason)")
    imp.add_argument("file", help="CSV file, or - for stdin")
    imp.add_argument("--dry-run", action="store_true", help="validate and count, store nothing")
    add_store_option(imp)
    imp.set_defaults(handler=_import)

    revoke = group.add_parser("revoke", help="retire addresses after a breach, in one transaction")
    revoke.add_argument("--chain", required=True, help="a chain name, or evm:* for every EVM chain")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--file", help="addresses, one per line (# comments)")
    which.add_argument("--all-active", action="store_true", help="every active address of the chain(s)")
    revoke.add_argument("--at", required=True, help="when the keys may have leaked (ISO 8601 with zone, or unix)")
    revoke.add_argument("--reason", required=True)
    revoke.add_argument(
        "--rescan",
        action="store_true",
        help="then replay each chain from --at to the daemon's current block, sending the alerts found"
        " (needs the chains in the config)",
    )
    add_store_option(revoke)
    revoke.set_defaults(handler=_revoke)

    listing = group.add_parser("list", help="list the book")
    listing.add_argument("--chain")
    listing.add_argument("--status", choices=["active", "revoked"])
    listing.add_argument("--owner")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--format", choices=["table", "json"], default="table")
    add_store_option(listing)
    listing.set_defaults(handler=_list)

    stats = group.add_parser("stats", help="counts per chain, type and status")
    stats.add_argument("--format", choices=["table", "json"], default="table")
    add_store_option(stats)
    stats.set_defaults(handler=_stats)


async def _parse(args: argparse.Namespace) -> int:
    bad = []
    for text in args.address:
        try:
            parsed = parse_bitcoin_address(text, args.network) if args.chain == "btc" else parse_ethereum_address(text)
        except AddressError as exc:
            bad.append(f"invalid {args.chain} address {exc.address!r}: {exc.reason}")
            continue
        record: dict[str, Any] = {"address": parsed.address, "type": parsed.type}
        if args.chain == "btc":
            record["script_hex"] = parsed.key.hex()
            record["network"] = args.network
        out(dumps(record))
    for line in bad:
        err(line)
    return 2 if bad else 0


async def _import(args: argparse.Namespace) -> int:
    config = load(args, required=False)
    directory = ChainDirectory.from_config(config)
    try:
        entries = read_import_csv(read_text(args.file), directory, source=args.file)
    except BadRows as exc:
        err(f"{len(exc.problems)} bad row(s); nothing was imported:")
        err(str(exc))
        return 2
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    store = await store_from(args, config, migrate=True)
    try:
        result = await store.import_addresses(entries, dry_run=args.dry_run)
    except ImportRejected as exc:
        err(f"{len(exc.problems)} row(s) refused; nothing was imported:")
        for line, reason in exc.problems:
            err(f"{args.file}:{line}: {reason}")
        return 2
    finally:
        await store.close()
    verb = "would import" if args.dry_run else "imported"
    out(f"{verb} {len(entries)} row(s): {result.inserted} new, {result.updated} updated, {result.unchanged} unchanged")
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    config = load(args, required=False)
    try:
        at = parse_timestamp(args.at)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if at > now() + CLOCK_SKEW:  # refused before the store is opened, let alone created
        raise CommandError(
            f"--at {iso(at)} is in the future (beyond {CLOCK_SKEW // 60} minutes of clock skew):"
            " a revocation dates when the keys may have leaked, which has happened already"
        )
    store = await store_from(args, config, migrate=True)
    try:
        directory = ChainDirectory.from_config(config)
        if not config.chains:  # no config: the book's own chains count too
            for name in await store.chains_in_book():
                directory.chains.setdefault(name, ChainDirectory.DEFAULTS.get(name, directory.info("eth")))
        try:
            chains = directory.expand(args.chain)
            keys = None
            if args.file:
                keys = read_address_list(read_text(args.file).splitlines(), chains, directory, source=args.file)
        except BadRows as exc:
            err(f"{len(exc.problems)} bad line(s); nothing was revoked:")
            err(str(exc))
            return 2
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if args.rescan:
            unknown = [name for name in chains if name not in {c.name for c in config.chains}]
            if unknown:
                raise CommandError(f"--rescan needs the chain(s) in the config: {', '.join(unknown)} missing")
        policies = {c.name: make_policy(c, config.alerts) for c in config.chains if c.name in chains}
        try:
            result = await store.revoke(chains, keys, at, args.reason, policies)
        except StoreError as exc:
            raise CommandError(str(exc)) from None
        out(
            f"revoked {result.revoked} address(es) on {', '.join(chains)} as of {iso(at)}"
            f" ({result.already_revoked} were already revoked and keep their revocation time)"
        )
        if result.revoked and not args.rescan:
            for line in retro_report(result, at):
                out(line)
        if args.rescan:
            for coverage in result.coverage:
                await rescan(config, store, coverage, at)
    finally:
        await store.close()
    return 0


async def rescan(config: Config, store: SqlStore, coverage: Coverage, at: int) -> None:
    """Replay one chain from the first block at or after `at` to the daemon's block (the node's tip
    when the daemon has not followed it), with alerts: what the store never examined, and sweeps."""
    from depositwatch.replay import replay

    chain = config.chain(coverage.chain)
    source = make_source(chain)
    await source.open()
    try:
        tip = (await source.tip()).height
        # Bitcoin block times may run up to two hours out of order: start that much earlier.
        start = await first_block_at(source, at - (7200 if chain.kind == "bitcoin" else 0), tip, chain.name)
    finally:
        await source.close()
    stop = coverage.cursor_height if coverage.cursor_height is not None else tip
    if start > stop:
        out(f"{chain.name}: no block from {iso(at)} up to {stop}: nothing to rescan")
        return
    out(f"{chain.name}: rescanning blocks {start}..{stop} (from {iso(at)}), sending the alerts found")
    summary = await replay(
        chain=chain, store=store, start=start, stop=stop, output=sys.stdout, send_alerts=True, alerts=config.alerts
    )
    out(summary.text() + "; its alerts are in the outbox for the dispatcher")


async def first_block_at(source: ChainSource, at: int, tip: int, name: str) -> int:
    """The lowest height whose block time is at or after `at` (tip + 1 if none), by bisection."""
    low, high = 0, tip + 1
    while low < high:
        middle = (low + high) // 2
        blocks = await source.fetch(middle, middle + 1)
        if not blocks:
            raise CommandError(f"{name}: the node has no block {middle} below its tip {tip}")
        if blocks[0].time >= at:
            high = middle
        else:
            low = middle + 1
    return low


def retro_report(result: RevokeResult, at: int) -> list[str]:
    """What the store re-examined for a backdated revocation, and which replay covers the rest."""
    lines = [
        f"re-examined the recorded deposits since {iso(at)}: {result.retro} became revoked_incoming alert(s)"
        " (mode retro, with their original block)"
    ]
    for c in result.coverage:
        replay = (
            f"depositwatch replay --chain {c.chain} --from FIRST --to {{}} --send-alerts"
            f" (FIRST: the first {c.chain} block at or after {iso(at)})"
        )
        if c.cursor_height is None:
            lines.append(f"{c.chain}: the store has not followed this chain yet; nothing was re-examined")
        elif c.first_time is None:
            lines.append(
                f"{c.chain}: the store does not know its first recorded block (it followed before schema 3);"
                " to be sure, run " + replay.format(c.cursor_height)
            )
        elif c.first_time > at and c.first_height is not None:
            lines.append(
                f"{c.chain}: blocks before {c.first_height} (time {iso(c.first_time)}) were never examined"
                " by this store; run " + replay.format(c.first_height - 1)
            )
        if c.cursor_height is not None:
            lines.append(
                f"{c.chain}: transfers out of these addresses while they were active were not recorded;"
                " to find sweeps since then, run " + replay.format(c.cursor_height)
            )
    return lines


async def _list(args: argparse.Namespace) -> int:
    store = await store_from(args)
    try:
        entries = await store.list_addresses(
            chain=args.chain,
            status=AddressStatus(args.status) if args.status else None,
            owner=args.owner,
            limit=args.limit,
        )
    finally:
        await store.close()
    rows = [
        {
            "chain": e.chain,
            "address": e.address,
            "type": e.type,
            "status": str(e.status),
            "label": e.label,
            "owner": e.owner,
            "revoked_at": iso(e.revoked_at),
            "reason": e.reason,
            "created_at": iso(e.created_at),
        }
        for e in entries
    ]
    if args.format == "json":
        for row in rows:
            out(dumps(row))
    else:
        print_table(rows, ["chain", "address", "type", "status", "label", "owner", "revoked_at", "reason"])
    return 0


async def _stats(args: argparse.Namespace) -> int:
    store = await store_from(args)
    try:
        rows = await store.address_stats()
    finally:
        await store.close()
    if args.format == "json":
        out(dumps(rows))
    else:
        print_table(rows, ["chain", "type", "status", "count"])
        out(f"total: {sum(r['count'] for r in rows)}")
    return 0


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned table on stdout."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
