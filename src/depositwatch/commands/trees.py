"""The key-tree parts of `depositwatch addresses ...`: parse a descriptor, import, revoke, list, stats."""

from __future__ import annotations

import argparse
from typing import Any

from depositwatch.addressbook import BookRows, ChainDirectory, ChainInfo, parse_chain_trees, parse_range
from depositwatch.addresses.derive import address_text, derive
from depositwatch.addresses.hd import KeyTreeError
from depositwatch.api.records import lifecycle_record
from depositwatch.commands import CommandError, err, out
from depositwatch.jsonutil import dumps
from depositwatch.models import AddressStatus
from depositwatch.store import ImportResult, RevokeResult, SqlStore, StoreError
from depositwatch.timeutil import iso

MAX_PARSE_RANGE = 10_000_000  # indexes one `addresses parse` prints
PARSE_CHAINS = {"btc": "bitcoin", "eth": "evm", "tron": "tron"}


def add_parse_options(parser: argparse.ArgumentParser) -> None:
    """`--descriptor D --range A-B` for `addresses parse`."""
    parser.add_argument(
        "--descriptor", help="a key tree (output descriptor or extended public key): print its addresses"
    )
    parser.add_argument("--range", default="0-19", help="the indexes to print, A-B inclusive (default 0-19)")


def parse_descriptor(args: argparse.Namespace) -> int:
    """Print one JSON object per derived address of `--descriptor`: index, address (and script for Bitcoin)."""
    if args.address:
        raise CommandError("give either addresses or --descriptor, not both")
    kind = PARSE_CHAINS[args.chain]
    directory = ChainDirectory({args.chain: ChainInfo(kind, args.network if kind == "bitcoin" else None)})
    try:
        trees = parse_chain_trees(directory, args.chain, args.descriptor)
        first, last = parse_range(args.range)
    except (KeyTreeError, ValueError) as exc:
        err(f"invalid {args.chain} key tree: {exc}")
        return 2
    if last - first + 1 > MAX_PARSE_RANGE:
        raise CommandError(f"--range covers more than {MAX_PARSE_RANGE:,} indexes")
    for tree in trees:
        for index, key in derive(tree, first, last + 1):
            record: dict[str, Any] = {"index": index, "address": address_text(tree, key, args.network)}
            if kind == "bitcoin":
                record["script_hex"] = key.hex()
            if len(trees) > 1:
                record["descriptor"] = tree.descriptor
            out(dumps(record))
    return 0


async def import_book(store: SqlStore, rows: BookRows, *, dry_run: bool, source: str | None = None) -> ImportResult:
    """Import plain rows and tree rows; both are checked (dry runs) before either is written, so a row the
    store refuses leaves the book as it was. Counts are summed."""
    await store.import_addresses(rows.entries, dry_run=True)
    if rows.trees:
        await store.trees.import_entries(rows.trees, dry_run=True)
    plain = (
        await store.import_addresses(rows.entries, dry_run=dry_run, source=source)
        if rows.entries
        else ImportResult(0, 0, 0)
    )
    trees = (
        await store.trees.import_entries(rows.trees, dry_run=dry_run, source=source)
        if rows.trees
        else ImportResult(0, 0, 0)
    )
    return ImportResult(
        plain.inserted + trees.inserted, plain.updated + trees.updated, plain.unchanged + trees.unchanged
    )


def tree_revocations(directory: ChainDirectory, chains: list[str], descriptors: list[str]) -> list[tuple[str, str]]:
    """(chain, canonical descriptor) of every tree the `--descriptor` texts name on the chains."""
    named: list[tuple[str, str]] = []
    for chain in chains:
        for text in descriptors:
            try:
                named += [(chain, tree.descriptor) for tree in parse_chain_trees(directory, chain, text)]
            except (KeyTreeError, ValueError) as exc:
                raise CommandError(f"{chain}: {exc}") from None
    return named


async def revoke_trees(
    store: SqlStore, named: list[tuple[str, str]], at: int, reason: str, policies: Any
) -> RevokeResult:
    """Revoke the named trees (all or none) and say what happened."""
    try:
        result = await store.trees.revoke(named, at, reason, policies)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    chains = sorted({chain for chain, _ in named})
    out(
        f"revoked {result.revoked} key tree(s) on {', '.join(chains)} as of {iso(at)}"
        f" ({result.already_revoked} were already revoked and keep their revocation time);"
        f" {result.retro} recorded deposit(s) to them became revoked_incoming alert(s)"
    )
    return result


async def revoke_active_trees(store: SqlStore, chains: list[str], at: int, reason: str, policies: Any) -> None:
    """`--all-active`: the chains' active key trees too, every address of them."""
    named = []
    for chain in chains:
        named += [
            (chain, entry.descriptor)
            for entry, _ in await store.trees.entries(chain=chain, status=AddressStatus.ACTIVE)
        ]
    if named:
        await revoke_trees(store, named, at, reason, policies)


async def tree_rows(store: SqlStore, args: argparse.Namespace) -> list[dict[str, Any]]:
    """`addresses list`'s rows for the book's trees."""
    return [
        {
            "chain": entry.chain,
            "descriptor": entry.descriptor,
            "script": entry.script,
            "range": f"{entry.first}-{entry.last}",
            "gap": entry.gap,
            "keys": keys,
            **lifecycle_record(entry),
        }
        for entry, keys in await store.trees.entries(
            chain=args.chain, status=AddressStatus(args.status) if args.status else None, owner=args.owner
        )
    ]


TREE_LIST_COLUMNS = ["chain", "descriptor", "range", "gap", "keys", "status", "label", "owner", "revoked_at", "reason"]
TREE_STATS_COLUMNS = ["chain", "script", "status", "trees", "indexes", "keys"]
