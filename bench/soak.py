"""Scale and soak: millions of watched addresses, a synthetic chain at ten times Ethereum's transfer rate.

A synthetic EVM-like source mines a block every `--block-seconds` with `--transfers` transfers each
(mainnet block 17,173,049 carries 116 transactions and 114 Transfer logs, about 230 transfers per 12 s:
the default, 230 transfers every 1.2 s, is ten times that). A share of the transfers pays, or leaves,
watched addresses. The real Follower, matcher and store follow it live for `--minutes`; the script samples
resident memory and lag every few seconds and, at the end, checks that every expected match was recorded
exactly once.

    python bench/soak.py --minutes 10 --addresses 10000000          # the full soak
    python bench/soak.py --minutes 0.5 --addresses 200000           # the reduced form the tests run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from depositwatch.follower import Follower, FollowerSettings
from depositwatch.logging import setup_logging
from depositwatch.models import AddressEntry, AddressStatus, Asset, Block, Transfer
from depositwatch.registry import AddressRegistry, ChainBook
from depositwatch.store import ChainPolicy, Scope, open_store
from depositwatch.testing import MemoryChain

ETH = Asset("ETH", 18)
USDT = Asset("USDT", 6, "0xdAC17F958D2ee523a2206206994597C13D831ec7")


def rss_mb() -> float:
    """Resident memory of this process in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Expected:
    """What the test sent to watched addresses: txid → kind (as the matcher should classify it)."""

    kinds: dict[str, set[str]] = field(default_factory=dict)


class SyntheticChain(MemoryChain):
    """A ChainSource that mines blocks on a timer; transfers are random, some touch watched keys."""

    def __init__(
        self,
        *,
        watched_active: list[bytes],
        watched_revoked: list[bytes],
        transfers: int,
        block_seconds: float,
        hit_share: float,
        seed: int = 1,
    ) -> None:
        super().__init__("soak", "synthetic", genesis_time=int(time.time()))
        self.rng = random.Random(seed)
        self.active = watched_active
        self.revoked = watched_revoked
        self.transfers = transfers
        self.block_seconds = block_seconds
        self.hit_share = hit_share
        self.expected = Expected()
        self._miner: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._miner = asyncio.create_task(self._mine_forever())

    async def close(self) -> None:
        if self._miner is not None:
            self._miner.cancel()

    def mine_random(self) -> None:
        """Append a block of random transfers, some of them to or from watched keys."""
        parent = self.blocks[-1]
        height = parent.height + 1
        rng = self.rng
        transfers = []
        for i in range(self.transfers):
            txid = f"0x{height:012x}{i:052x}"
            sender, recipient = rng.randbytes(20), rng.randbytes(20)
            if rng.random() < self.hit_share:
                roll = rng.random()
                if roll < 0.4:
                    recipient = rng.choice(self.revoked)
                    self.expected.kinds.setdefault(txid, set()).add("revoked_incoming")
                elif roll < 0.8:
                    recipient = rng.choice(self.active)
                    self.expected.kinds.setdefault(txid, set()).add("deposit")
                else:
                    sender = rng.choice(self.revoked)
                    self.expected.kinds.setdefault(txid, set()).add("revoked_outgoing")
            asset = ETH if i % 2 else USDT
            transfers.append(
                Transfer(asset, rng.randrange(1, 10**12), txid, None if asset is ETH else 0, recipient, sender)
            )
        block = Block(
            height, f"{height:064x}", parent.hash, parent.time + 12, tuple(transfers), tx_count=len(transfers)
        )
        self.blocks.append(block)
        # Keep the node's own memory flat (only the daemon's should show): old blocks are never asked for
        # again, so keep the last 100 whole and only the hash of older ones.
        if height > 100:
            self.blocks[height - 100] = Block(height - 100, self.blocks[height - 100].hash, "", 0)
        self.new_head.set()

    async def _mine_forever(self) -> None:
        next_at = time.monotonic()
        while True:
            self.mine_random()
            next_at += self.block_seconds
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def build_registry(addresses: int, watched: int, seed: int = 2) -> tuple[AddressRegistry, list[bytes], list[bytes]]:
    """A registry of `addresses` random 20-byte keys (10% revoked), and `watched` of each kind to send to."""
    rng = random.Random(seed)
    blob = rng.randbytes(20 * addresses)
    keys = [blob[i : i + 20] for i in range(0, len(blob), 20)]
    del blob
    revoked_count = addresses // 10
    book = ChainBook(active=set(keys[revoked_count:]), revoked=dict.fromkeys(keys[:revoked_count], 0))
    active = keys[revoked_count : revoked_count + watched]
    revoked = keys[:watched]
    del keys
    return AddressRegistry({"soak": book}), active, revoked


async def soak(args: argparse.Namespace) -> dict[str, float]:
    started = time.perf_counter()
    rss_start = rss_mb()
    registry, active, revoked = build_registry(args.addresses, args.watched)
    load_seconds = time.perf_counter() - started
    rss_loaded = rss_mb()
    chain = SyntheticChain(
        watched_active=active,
        watched_revoked=revoked,
        transfers=args.transfers,
        block_seconds=args.block_seconds,
        hit_share=args.hit_share,
    )
    with tempfile.TemporaryDirectory(prefix="depositwatch-soak-") as tmp:
        store = await open_store(args.store or f"sqlite:///{tmp}/soak.db", migrate=True)
        entries = [
            (i, AddressEntry("soak", "0x" + k.hex(), k, AddressStatus.REVOKED, "r", "o", 0, type="ethereum"))
            for i, k in enumerate(revoked)
        ] + [
            (len(revoked) + i, AddressEntry("soak", "0x" + k.hex(), k, AddressStatus.ACTIVE, "a", "o", type="ethereum"))
            for i, k in enumerate(active)
        ]
        await store.import_addresses(entries)
        follower = Follower(
            source=chain,
            store=store,
            registry=registry,
            policy=ChainPolicy("soak", confirmations=12),
            scope=Scope.live(),
            cursor_name="live:soak",
            settings=FollowerSettings(batch_blocks=20, poll_interval=args.block_seconds, start_height=1),
        )
        await chain.open()
        await follower.start()
        runner = asyncio.create_task(follower.run())
        samples: list[tuple[float, float, int]] = []
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            await asyncio.sleep(min(5.0, max(0.5, args.minutes * 60 / 20)))
            lag = (chain.blocks[-1].height - follower.cursor.height) if follower.cursor else -1
            samples.append((time.monotonic(), rss_mb(), lag))
            print(
                f"  t={samples[-1][0] - samples[0][0]:6.0f}s rss={samples[-1][1]:8.0f} MB lag={lag} blocks",
                file=sys.stderr,
            )
        await chain.close()  # stop mining, let the follower catch up with the last block
        final = chain.blocks[-1].height
        while follower.cursor is None or follower.cursor.height < final:  # noqa: ASYNC110 (polls another task's state)
            await asyncio.sleep(0.1)
        follower.stop()
        await runner
        rows = await store.matches(Scope.live())
        await store.close()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["txid"], set()).add(row["kind"])
    ids = [row["id"] for row in rows]
    half = len(samples) // 2
    first_half = [s[1] for s in samples[:half]] or [samples[0][1]]
    second_half = [s[1] for s in samples[half:]]
    blocks = final
    return {
        "addresses": args.addresses,
        "registry_build_s": round(load_seconds, 1),
        "rss_registry_mb": round(rss_loaded - rss_start),
        "rss_first_half_mb": round(max(first_half)),
        "rss_second_half_mb": round(max(second_half)),
        "blocks": blocks,
        "transfers": blocks * args.transfers,
        "transfers_per_s": round(blocks * args.transfers / (args.minutes * 60)),
        "max_lag_blocks": max(s[2] for s in samples),
        "expected_matches": sum(len(v) for v in chain.expected.kinds.values()),
        "found_matches": len(rows),
        "exact": float(found == chain.expected.kinds and len(ids) == len(set(ids))),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--addresses", type=int, default=10_000_000)
    p.add_argument("--watched", type=int, default=10_000, help="watched keys of each status that transfers hit")
    p.add_argument("--transfers", type=int, default=230, help="transfers per block")
    p.add_argument("--block-seconds", type=float, default=1.2, help="1.2 s with 230 transfers: 10x mainnet's rate")
    p.add_argument("--hit-share", type=float, default=0.01, help="share of transfers touching watched keys")
    p.add_argument("--store", help="store URL (default: SQLite in a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    setup_logging("warning")
    print(
        f"soak: {args.addresses:,} addresses, {args.transfers} transfers every {args.block_seconds} s "
        f"for {args.minutes} min, store {args.store or 'sqlite'}; cpus {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    result = asyncio.run(soak(args))
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    return result


if __name__ == "__main__":
    outcome = main()
    raise SystemExit(0 if outcome["exact"] == 1.0 else 1)
