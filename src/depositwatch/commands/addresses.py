"""`depositwatch addresses ...`: parse, import, revoke, list, stats."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from depositwatch.addressbook import ChainDirectory, read_address_list, read_book_csv, read_text
from depositwatch.addresses import (
    AddressError,
    BitcoinNetwork,
    normalise_key,
    parse_bitcoin_address,
    parse_ethereum_address,
)
from depositwatch.addresses.tron import parse_tron_address, tron_hex
from depositwatch.chains.base import ChainSource
from depositwatch.commands import CommandError, add_store_option, err, load, out, reading_rows, store_from
from depositwatch.commands import trees as key_trees
from depositwatch.config import Config
from depositwatch.jsonutil import dumps
from depositwatch.models import AddressStatus
from depositwatch.pipeline import make_policy, opened_source
from depositwatch.store import Coverage, ImportRejected, RevokeResult, SqlStore, StoreError
from depositwatch.timeutil import iso, now, parse_timestamp

CLOCK_SKEW = 300  # seconds a revocation time may lie ahead of this host's clock


def register(sub: Any) -> None:
    """Add the `addresses` group."""
    group = sub.add_parser("addresses", help="the address book").add_subparsers(dest="addr_command", required=True)

    parse = group.add_parser("parse", help="parse and normalise addresses; print one JSON object each")
    parse.add_argument("--chain", required=True, choices=["btc", "eth", "tron"], help="btc, eth or tron")
    parse.add_argument("--network", default="mainnet", choices=[str(n) for n in BitcoinNetwork])
    parse.add_argument("address", nargs="*")
    key_trees.add_parse_options(parse)
    parse.set_defaults(handler=_parse)

    imp = group.add_parser(
        "import",
        help="import a CSV (chain,address,status,label,owner,revoked_at,reason; key trees: descriptor,range,gap)",
    )
    imp.add_argument("file", help="CSV file, or - for stdin")
    imp.add_argument("--dry-run", action="store_true", help="validate and count, store nothing")
    add_store_option(imp)
    imp.set_defaults(handler=_import)

    revoke = group.add_parser("revoke", help="retire addresses after a breach, in one transaction")
    revoke.add_argument("--chain", required=True, help="a chain name, or evm:* for every EVM chain")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--file", help="addresses, one per line (# comments)")
    which.add_argument("--all-active", action="store_true", help="every active address of the chain(s)")
    which.add_argument("--descriptor", action="append", help="a key tree of the book (repeatable): all its addresses")
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

    reinstate = group.add_parser(
        "reinstate", help="make a revoked address active again (audited; the only way back from revoked)"
    )
    reinstate.add_argument("address")
    reinstate.add_argument("--chain", help="the chain (needed when the address is revoked on several)")
    reinstate.add_argument("--reason", required=True, help="why the key is trusted again (kept in the audit log)")
    add_store_option(reinstate)
    reinstate.set_defaults(handler=_reinstate)

    history = group.add_parser("history", help="the audit log of one address: who changed it, when and why")
    history.add_argument("address")
    history.add_argument("--chain", help="only this chain")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    add_store_option(history)
    history.set_defaults(handler=_history)


async def _parse(args: argparse.Namespace) -> int:
    if args.descriptor:
        return key_trees.parse_descriptor(args)
    if not args.address:
        raise CommandError("give one or more addresses, or --descriptor")
    bad = []
    for text in args.address:
        try:
            if args.chain == "btc":
                parsed = parse_bitcoin_address(text, args.network)
            elif args.chain == "tron":
                parsed = parse_tron_address(text)
            else:
                parsed = parse_ethereum_address(text)
        except AddressError as exc:
            bad.append(f"invalid {args.chain} address {exc.address!r}: {exc.reason}")
            continue
        record: dict[str, Any] = {"address": parsed.address, "type": parsed.type}
        if args.chain == "btc":
            record["script_hex"] = parsed.key.hex()
            record["network"] = args.network
        elif args.chain == "tron":
            record["hex"] = tron_hex(parsed.key)
        out(dumps(record))
    for line in bad:
        err(line)
    return 2 if bad else 0


async def _import(args: argparse.Namespace) -> int:
    config = load(args, required=False)
    directory = ChainDirectory.from_config(config)
    with reading_rows("; nothing was imported"):
        book = read_book_csv(read_text(args.file), directory, source=args.file)
    store = await store_from(args, config, migrate=True)
    try:
        result = await key_trees.import_book(store, book, dry_run=args.dry_run, source=args.file)
    except ImportRejected as exc:
        err(f"{len(exc.problems)} row(s) refused; nothing was imported:")
        for line, reason in exc.problems:
            err(f"{args.file}:{line}: {reason}")
        return 2
    finally:
        await store.close()
    verb = "would import" if args.dry_run else "imported"
    rows = len(book.entries) + len({line for line, _ in book.trees})
    trees = f" ({len(book.trees)} key tree(s))" if book.trees else ""
    out(f"{verb} {rows} row(s){trees}: {result.inserted} new, {result.updated} updated, {result.unchanged} unchanged")
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
        with reading_rows("; nothing was revoked", "line(s)"):
            chains = directory.expand(args.chain)
            keys = None
            if args.file:
                keys = read_address_list(read_text(args.file).splitlines(), chains, directory, source=args.file)
        if args.rescan:
            unknown = [name for name in chains if name not in {c.name for c in config.chains}]
            if unknown:
                raise CommandError(f"--rescan needs the chain(s) in the config: {', '.join(unknown)} missing")
        policies = {c.name: make_policy(c, config.alerts) for c in config.chains if c.name in chains}
        if args.descriptor:
            named = key_trees.tree_revocations(directory, chains, args.descriptor)
            result = await key_trees.revoke_trees(store, named, at, args.reason, policies)
        else:
            try:
                result = await store.revoke(chains, keys, at, args.reason, policies)
            except StoreError as exc:
                raise CommandError(str(exc)) from None
            out(
                f"revoked {result.revoked} address(es) on {', '.join(chains)} as of {iso(at)}"
                f" ({result.already_revoked} were already revoked and keep their revocation time)"
            )
            if args.all_active:
                await key_trees.revoke_active_trees(store, chains, at, args.reason, policies)
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
    async with opened_source(chain) as source:
        tip = (await source.tip()).height
        # Bitcoin block times may run up to two hours out of order: start that much earlier.
        start = await first_block_at(source, at - (7200 if chain.kind == "bitcoin" else 0), tip, chain.name)
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
        trees = await key_trees.tree_rows(store, args)
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
        for row in rows + trees:
            out(dumps(row))
    else:
        print_table(rows, ["chain", "address", "type", "status", "label", "owner", "revoked_at", "reason"])
        if trees:
            out("")
            out("key trees:")
            print_table(trees, key_trees.TREE_LIST_COLUMNS)
    return 0


async def _stats(args: argparse.Namespace) -> int:
    store = await store_from(args)
    try:
        rows = await store.address_stats()
        trees = await store.trees.stats()
    finally:
        await store.close()
    if args.format == "json":
        out(dumps(rows + [{"tree": True, **row} for row in trees] if trees else rows))
    else:
        print_table(rows, ["chain", "type", "status", "count"])
        out(f"total: {sum(r['count'] for r in rows)}")
        if trees:
            out("")
            out("key trees:")
            print_table(trees, key_trees.TREE_STATS_COLUMNS)
            out(f"total: {sum(r['trees'] for r in trees)} tree(s), {sum(r['keys'] for r in trees)} derived key(s)")
    return 0


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain aligned table on stdout."""
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


async def _where(store: SqlStore, config: Config, text: str, chain: str | None) -> list[tuple[str, str, bytes | None]]:
    """The (chain, display address, key) an address names on the chosen chain, or on each chain of the
    config and the book where it parses; text that parses nowhere is looked up as written."""
    directory = ChainDirectory.from_config(config)
    names = [chain] if chain else sorted(set(directory.chains) | set(await store.chains_in_book()))
    found: list[tuple[str, str, bytes | None]] = []
    for name in names:
        try:
            info = directory.chains.get(name) or ChainDirectory.DEFAULTS.get(name) or directory.info("eth")
            parsed = normalise_key(info.kind, text, info.network)
        except (AddressError, ValueError):
            found.append((name, text.strip(), None))
            continue
        found.append((name, parsed.address, parsed.key))
    return found


async def _reinstate(args: argparse.Namespace) -> int:
    config = load(args, required=False)
    if not args.reason.strip():
        raise CommandError("--reason must say why the key is trusted again")
    store = await store_from(args, config)  # nothing to reinstate in a store that does not exist yet
    try:
        candidates = [(c, a, k) for c, a, k in await _where(store, config, args.address, args.chain) if k is not None]
        revoked = []
        for chain, address, key in candidates:
            if any(e.status is AddressStatus.REVOKED for e in await store.audit.book_entries(chain, [key])):
                revoked.append((chain, address, key))
        if not revoked:
            where = f" on {args.chain}" if args.chain else ""
            raise CommandError(f"{args.address} is not a revoked address in the book{where}")
        if len(revoked) > 1:
            raise CommandError(
                f"{args.address} is revoked on several chains ({', '.join(c for c, _, _ in revoked)}): name one with"
                " --chain"
            )
        chain, address, key = revoked[0]
        try:
            await store.audit.reinstate(chain, [key], args.reason)
        except StoreError as exc:
            raise CommandError(str(exc)) from None
    finally:
        await store.close()
    out(f"reinstated {chain} address {address}: active again (recorded in its history)")
    return 0


async def _history(args: argparse.Namespace) -> int:
    config = load(args, required=False)
    store = await store_from(args, config)
    try:
        pairs = [(c, a) for c, a, _ in await _where(store, config, args.address, args.chain)]
        records = await store.audit.address_history(pairs)
    finally:
        await store.close()
    rows = [
        {
            "id": r.id,
            "at": iso(r.at),
            "actor": r.actor,
            "action": r.action,
            "chain": r.chain,
            "address": r.address,
            "owner": r.owner,
            "reason": r.reason,
            "detail": r.detail,
        }
        for r in records
    ]
    if args.json:
        for row in rows:
            out(dumps(row))
        return 0
    if not rows:
        err(f"no recorded changes of {args.address}")
        return 1
    table = [{**row, "detail": _detail_text(r.detail)} for row, r in zip(rows, records, strict=True)]
    print_table(table, ["at", "actor", "action", "chain", "address", "reason", "detail"])
    return 0


def _detail_text(detail: dict[str, Any]) -> str:
    """`active -> revoked, revoked_at 2023-09-12T00:00:00Z, file book.csv`: the detail as one short line."""
    parts = [f"{detail.get('previous_status') or 'new'} -> {detail.get('status')}"]
    parts.extend(
        f"{name} {iso(detail[name])}" for name in ("revoked_at", "previous_revoked_at") if detail.get(name) is not None
    )
    if detail.get("changed"):
        parts.append("changed " + "/".join(detail["changed"]))
    if detail.get("file"):
        parts.append(f"file {detail['file']} line {detail.get('line')}")
    return ", ".join(parts)
