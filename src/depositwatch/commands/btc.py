"""`depositwatch btc ...`: Bitcoin tools. `scan-revoked` finds coins already sitting on revoked scripts.

Following the chain sees an output to a revoked script when it is mined, and its sweep when it is
spent. An output paid before following started (or before the address was revoked and watched) is
not known to the follower; `scan-revoked` asks the node's UTXO set for them (`scantxoutset` with one
`raw(SCRIPT)` descriptor per revoked script) and stores them as watched outputs of the live scope,
so the daemon alerts when they are swept. The daemon loads watched outputs when it starts and after
a reorg: restart it (or reload it) after a scan.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from depositwatch.addresses import bitcoin_script_to_address
from depositwatch.chains.base import BadNodeAnswer, ChainError, WrongChain
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_rpc import BitcoinRpc, btc_to_sats
from depositwatch.commands import CommandError, add_store_option, err, load, out, store_from
from depositwatch.models import Asset, WatchedOutput
from depositwatch.registry import AddressRegistry

SCAN_CHUNK = 20_000  # descriptors per scantxoutset call (each call reads the whole UTXO set)
SCAN_TIMEOUT = 4 * 3600.0  # a mainnet scan takes minutes; the node answers only at its end


def register(sub: Any) -> None:
    """Add the `btc` group."""
    group = sub.add_parser("btc", help="Bitcoin tools").add_subparsers(dest="btc_command", required=True)
    scan = group.add_parser(
        "scan-revoked",
        help="find unspent outputs already paid to revoked scripts (scantxoutset) and watch them for sweeps",
        description="Asks the node's UTXO set (scantxoutset) for every unspent output paying a revoked script of "
        "the chain and stores it as a watched output, so the daemon alerts when it is swept. Restart the daemon "
        "afterwards: it loads watched outputs when it starts.",
    )
    scan.add_argument("--chain", required=True, help="a configured Bitcoin chain")
    scan.add_argument("--dry-run", action="store_true", help="list what was found, store nothing")
    add_store_option(scan)
    scan.set_defaults(handler=_scan_revoked)


async def scan_unspent(rpc: BitcoinRpc, scripts: Sequence[bytes], chain: str) -> tuple[list[WatchedOutput], int]:
    """Unspent outputs paying any of `scripts`, and the height the node scanned at."""
    wanted = set(scripts)
    found: list[WatchedOutput] = []
    height = -1
    ordered = sorted(wanted)
    for low in range(0, len(ordered), SCAN_CHUNK):
        descriptors = [f"raw({s.hex()})" for s in ordered[low : low + SCAN_CHUNK]]
        answer = await rpc.call("scantxoutset", "start", descriptors, timeout=SCAN_TIMEOUT)
        if not isinstance(answer, dict) or answer.get("success") is not True:
            raise BadNodeAnswer(f"chain {chain}: scantxoutset: the scan did not succeed: {answer!r:.200}")
        if isinstance(answer.get("height"), int):
            height = answer["height"]
        unspents = answer.get("unspents")
        if not isinstance(unspents, list):
            raise BadNodeAnswer(f"chain {chain}: scantxoutset: no list of unspents")
        for item in unspents:
            try:
                script = bytes.fromhex(item["scriptPubKey"])
                txid, vout = item["txid"], item["vout"]
                if not isinstance(txid, str) or len(txid) != 64 or not isinstance(vout, int):
                    raise ValueError(f"outpoint {txid!r}:{vout!r}")
                bytes.fromhex(txid)
                amount = btc_to_sats(item["amount"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BadNodeAnswer(f"chain {chain}: scantxoutset: malformed unspent {item!r:.200} ({exc})") from None
            if script not in wanted:
                raise BadNodeAnswer(f"chain {chain}: scantxoutset: an unspent pays {script.hex()}, not a script asked")
            found.append(WatchedOutput(txid.lower(), vout, script, amount, None))
    return found, height


async def _scan_revoked(args: argparse.Namespace) -> int:
    config = load(args)
    chain = config.chain(args.chain)
    if chain.kind != "bitcoin":
        raise CommandError(f"chain {chain.name} is not a Bitcoin chain")
    store = await store_from(args, config)
    source = BitcoinSource(chain)
    try:
        registry = await AddressRegistry.load(store, [chain.name])
        revoked = list(registry.book(chain.name).revoked)
        if not revoked:
            err(f"chain {chain.name}: no revoked addresses: nothing to scan")
            return 0
        await source.open()
        await store.check_identity(chain.name, await source.identity())
        err(f"chain {chain.name}: scanning the UTXO set for {len(revoked)} revoked script(s); this takes minutes")
        outputs, height = await scan_unspent(source.rpc, revoked, chain.name)
        asset = Asset(chain.native_asset_symbol, 8)
        for o in sorted(outputs, key=lambda o: (o.txid, o.vout)):
            address = bitcoin_script_to_address(o.script, chain.network) or o.script.hex()
            out(f"{o.txid}:{o.vout}\t{asset.to_decimal(o.amount)} {asset.symbol}\t{address}")
        total = asset.to_decimal(sum(o.amount for o in outputs))
        added = 0 if args.dry_run else await store.add_watched_outputs(chain.name, outputs)
        err(
            f"chain {chain.name}: {len(outputs)} unspent output(s) on revoked scripts at height {height}, "
            f"{total} {asset.symbol} in all; "
            + ("dry run, nothing stored" if args.dry_run else f"{added} new watched output(s) stored")
        )
        return 0
    except (ChainError, WrongChain) as exc:
        err(f"depositwatch: {exc}")
        return 1
    finally:
        await source.close()
        await store.close()
