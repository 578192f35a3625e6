"""Key-tree expansion rate: children per second for each script type and chain, and 1,000,000 children.

    python bench/derive_bench.py --sample 50000 --million pkh,sh_wpkh,wpkh,tr,evm,tron --libraries

Runs in one process pinned to one CPU (`--cpu`, default the last one), so every figure is one core's.
For each script type it times `derive(tree, 0, sample)` (the registry's call: child point, then the
script or account bytes) and, for the types in `--million`, `derive(tree, 0, 1_000_000)`. Wall time
and process CPU time are both printed: the machine is shared, and CPU time is what the code costs.
`--libraries` also times the child derivation alone in the libraries that were weighed (bip-utils and
embit, when installed), next to ours, for the choice recorded in src/depositwatch/addresses/hd.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/derive_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line
from depositwatch.addresses.derive import derive
from depositwatch.addresses.descriptors import ScriptType, parse_tree
from depositwatch.addresses.hd import parse_extended_public_key, public_children

# The BIP86 account key of the `abandon ... about` mnemonic; any key costs the same.
XPUB = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"
ENTRIES = {
    ScriptType.PKH: ("bitcoin", f"pkh({XPUB}/0/*)"),
    ScriptType.SH_WPKH: ("bitcoin", f"sh(wpkh({XPUB}/0/*))"),
    ScriptType.WPKH: ("bitcoin", f"wpkh({XPUB}/0/*)"),
    ScriptType.TR: ("bitcoin", f"tr({XPUB}/0/*)"),
    ScriptType.EVM: ("evm", f"{XPUB}/0/*"),
    ScriptType.TRON: ("tron", f"{XPUB}/0/*"),
}


def timed(work: Callable[[], int]) -> tuple[int, float, float]:
    """(items, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    count = work()
    return count, time.perf_counter() - wall, time.process_time() - cpu


def expand(script: ScriptType, stop: int) -> int:
    chain, text = ENTRIES[script]
    tree = parse_tree(chain, text)
    count = 0
    for _ in derive(tree, 0, stop):
        count += 1
    return count


def library_rates(sample: int) -> list[tuple[str, float]]:
    """Children per CPU second of the child key alone (no script), ours and the other candidates'."""
    key, _ = parse_extended_public_key(XPUB)
    rows = []

    def ours() -> int:
        return sum(1 for _ in public_children(key, 0, sample))

    count, _, cpu = timed(ours)
    rows.append(("coincurve + own CKDpub (chosen)", count / cpu))
    try:
        from bip_utils import Bip32Secp256k1

        root = Bip32Secp256k1.FromExtendedKey(XPUB)

        def bip_utils() -> int:
            for index in range(sample):
                root.ChildKey(index).PublicKey().RawCompressed()
            return sample

        count, _, cpu = timed(bip_utils)
        rows.append(("bip-utils (coincurve backend)", count / cpu))
    except ImportError:
        pass
    try:
        from embit import bip32

        hd = bip32.HDKey.from_string(XPUB)

        def embit() -> int:
            for index in range(sample):
                hd.derive([index]).key.sec()
            return sample

        count, _, cpu = timed(embit)
        rows.append(("embit", count / cpu))
    except ImportError:
        pass
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=50_000, help="children per script type for the rate")
    parser.add_argument("--million", default="wpkh,tr,evm", help="script types to expand to 1,000,000 children")
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1, help="the CPU to pin to")
    parser.add_argument("--libraries", action="store_true", help="also time bip-utils and embit, if installed")
    args = parser.parse_args()
    if not 1 <= args.sample <= 10_000_000:
        parser.error("--sample must be 1 to 10,000,000")
    million = [ScriptType(name) for name in args.million.split(",") if name]
    os.sched_setaffinity(0, {args.cpu})
    print(f"Machine: {machine_line()}; pinned to CPU {args.cpu}; load average {os.getloadavg()[0]:.2f} before")
    print()
    print("| script type | chain | children/s (CPU) | children/s (wall) | 1,000,000 children, CPU s | wall s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for script, (chain, _) in ENTRIES.items():
        count, wall, cpu = timed(lambda script=script: expand(script, args.sample))
        big = ("", "")
        if script in million:
            _, big_wall, big_cpu = timed(lambda script=script: expand(script, 1_000_000))
            big = (f"{big_cpu:.1f}", f"{big_wall:.1f}")
        print(f"| {script.value} | {chain} | {count / cpu:,.0f} | {count / wall:,.0f} | {big[0]} | {big[1]} |")
    if args.libraries:
        print()
        print("| child derivation alone | children/s (CPU) |")
        print("| --- | ---: |")
        for name, rate in library_rates(min(args.sample, 20_000)):
            print(f"| {name} | {rate:,.0f} |")
    print()
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
