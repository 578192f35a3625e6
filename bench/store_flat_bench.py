"""The store's cost per block along a long replay: does it stay flat up to block 1,000,000?

    python bench/store_flat_bench.py --store sqlite --blocks 1000000 [--every 10000] [--json out.json]
    python bench/store_flat_bench.py --store postgres --blocks 1000000
    python bench/store_flat_bench.py --store postgres --at 1000000 --every 2000 --rounds 5

Drives the store the way `depositwatch replay` does, without a node: a replay scope and the replay's
chain policy, `commit_blocks` for `--batch` blocks at a time (the follower's `batch_blocks`), then the
replay's read-back of the committed range's matches (`store.matches(scope, heights=...)`, which the
replay writes out). Every block carries `--matches` transfers touching the watched set (by default those
the watched set of `bench/eth_real_bench.py` meets in each copy of mainnet block 17,173,049: three
deposits, one payment to a revoked address and one sweep from another), matched by the real matcher
against the book loaded from the store. The SQLite store is the ad-hoc replay's (a scratch file opened
with `scratch=True`, as the CLI opens its temporary store); PostgreSQL is a scratch schema on the bench
server.

With `--at N` it runs two stores side by side instead, in turns of `--every` blocks for `--rounds` rounds
(so both meet the same load): one replaying from block 1,000 of a fresh store, one from block N+1 of a
store prefilled in bulk with what a replay of blocks 1..N leaves (its confirmed matches and cursor); each
round prints both rates, the CPU a block of each and their ratio.

Otherwise it prints one JSON line per `--every` blocks: the block reached, that stretch's blocks/s, the rate so far,
the process' CPU seconds and bytes read through the kernel (`rchar` of /proc/self/io) in the stretch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/store_flat_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PG_URL, scratch_schema, with_search_path
from depositwatch.addressbook import ChainDirectory, ChainInfo, read_book_csv
from depositwatch.addresses import ethereum_checksum_address
from depositwatch.commands.trees import import_book
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.matcher import match_block
from depositwatch.models import Asset, Block, Transfer, match_id
from depositwatch.pipeline import make_policy
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, Cursor, Scope, SqlStore, open_store
from depositwatch.store.match_rows import MATCH_COLUMNS, match_row
from depositwatch.store.trees import address_details

CHAIN = "eth"
TMP = None  # the system's temporary folder, as the ad-hoc replay uses
USDT = Asset("USDT", 6, "0xdAC17F958D2ee523a2206206994597C13D831ec7")
# (sender, recipient) of the watched transfers in each copy of the real block (see bench/eth_real_bench.py)
WATCHED_TRANSFERS = [
    ("e10510a359ff2334314052196780c5216e2a39f8", "1f87bc6687c52200aad234b7055568e92c943c46"),
    ("fd6c2d2499b1331101726a8ac68ccc9da3fab54f", "45f46dbf5924ad21b7e41ce359f401492e7f6ef5"),
    ("6f6ccef7dcbce4d7bc7cf45becd1c90feecafbd6", "8d21ff085dc1fd547bf2c25c1211ac2b402e2dda"),
    ("46705dfff24256421a05d056c29e81bdc09723b8", "3dfaa087b7b2ab616858a6d23e01c56e5b95705d"),
    ("9696f59e4d72e237be84ffd425dcad154bf96976", "54c15f24fda81d517ddb487901bc372568b95e48"),
]
WATCH_CSV = """chain,address,status,label,owner,revoked_at,reason
eth,0x1f87bc6687c52200aad234b7055568e92c943c46,active,dep-1,cust-1,,
eth,0x45f46dbf5924ad21b7e41ce359f401492e7f6ef5,active,dep-2,cust-2,,
eth,0x8d21ff085dc1fd547bf2c25c1211ac2b402e2dda,active,dep-3,cust-3,,
eth,0x3dfaa087b7b2ab616858a6d23e01c56e5b95705d,revoked,hot-1,cust-4,1500000000,bench
eth,0x9696f59e4d72e237be84ffd425dcad154bf96976,revoked,hot-2,cust-5,1500000000,bench
"""


def read_bytes() -> int:
    """Bytes this process read through the kernel (page cache hits included)."""
    with Path("/proc/self/io").open() as io:
        for line in io:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_block(height: int, templates: list[Transfer]) -> Block:
    """Block `height` with the watched transfers, each in its own transaction of this block."""
    transfers = tuple(
        Transfer(
            t.asset,
            t.amount + height,
            f"0x{height:016x}{n:048x}",
            40 + n,
            t.to_key,
            t.from_key,
            t.from_address,
            t.to_address,
        )
        for n, t in enumerate(templates)
    )
    return Block(
        height,
        f"0x{'b1' * 24}{height:016x}",
        f"0x{'b1' * 24}{height - 1:016x}",
        1_600_000_000 + 12 * height,
        transfers,
        tx_count=116,
    )


def templates(count: int) -> list[Transfer]:
    found = []
    for n in range(count):
        sender, recipient = WATCHED_TRANSFERS[n % len(WATCHED_TRANSFERS)]
        frm, to = bytes.fromhex(sender), bytes.fromhex(recipient)
        found.append(
            Transfer(USDT, 1_000_000, "", 0, to, frm, ethereum_checksum_address(frm), ethereum_checksum_address(to))
        )
    return found


class Replayer:
    """One replay scope on one store, committed the way the follower and replay do."""

    def __init__(self, store: SqlStore, matches: int, batch: int, stop: int) -> None:
        self.store, self.batch, self.stop = store, batch, stop
        self.kinds = templates(matches)
        chain = ChainConfig(
            name=CHAIN, kind="evm", network="adhoc", chain_id=1, rpc_urls=["http://127.0.0.1:1"], confirmations=1
        )
        self.policy = make_policy(chain, AlertsConfig())
        self.scope = Scope.replay("flatbench", False)
        self.height = 1
        self.written = 0

    async def start(self) -> None:
        rows = read_book_csv(WATCH_CSV, ChainDirectory({CHAIN: ChainInfo("evm", None)}), source="watch")
        await import_book(self.store, rows, dry_run=False)
        await self.store.check_identity(CHAIN, "1")
        self.book = (await AddressRegistry.load(self.store, [CHAIN])).book(CHAIN)
        self.cursor = Cursor(self.scope.name, CHAIN, 0, make_block(0, []).hash, 1, self.stop)
        await self.store.set_cursor(self.cursor)

    def effects(self, first: int, last: int) -> list[BlockEffects]:
        found = []
        for height in range(first, last + 1):
            block = make_block(height, self.kinds)
            found.append(BlockEffects(block, match_block(CHAIN, block, self.book)))
        return found

    async def prefill(self, blocks: int) -> None:
        """Write what a replay of blocks 1..`blocks` leaves in the store (its confirmed matches, its cursor)
        in bulk, so the commits that follow run against a store of that size. The rows are block 1's, as the
        commit path writes them, with each block's transactions, amounts, ids and block fields."""
        stamp = int(time.time())
        columns = [c.strip() for c in MATCH_COLUMNS.split(",")]
        at = {name: i for i, name in enumerate(columns)}
        async with self.store.db.transaction() as conn:
            keys = {t.to_key for t in self.kinds} | {t.from_key for t in self.kinds}
            details = await address_details(conn, CHAIN, {k for k in keys if k is not None})
        (first,) = self.effects(1, 1)
        template = [
            (list(match_row(self.scope, m, details.get(m.key), "confirmed", stamp, self.policy)), m)
            for m in first.matches
        ]
        for low in range(1, blocks + 1, 10_000):  # a transaction per 10,000 blocks, as SQLite's WAL prefers
            async with self.store.db.transaction() as conn:
                rows = []
                for height in range(low, min(low + 9_999, blocks) + 1):
                    block = make_block(height, [])
                    for values, match in template:
                        row = list(values)
                        n = match.transfer.index - 40
                        txid = f"0x{height:016x}{n:048x}"
                        row[at["id"]] = match_id(CHAIN, match.kind, txid, match.transfer.index)
                        row[at["txid"]] = txid
                        row[at["amount"]] = str(self.kinds[n].amount + height)
                        row[at["block_height"]], row[at["block_hash"]] = height, block.hash
                        row[at["block_time"]] = block.time
                        rows.append(row)
                await conn.copy_rows("matches", columns, rows)
                self.written += len(rows)
        top = make_block(blocks, [])
        self.cursor = Cursor(self.scope.name, CHAIN, blocks, top.hash, 1, self.stop)
        await self.store.set_cursor(self.cursor)
        self.height = blocks + 1

    async def advance(self, count: int) -> None:
        """Commit the next `count` blocks, `batch` at a time, each commit read back as replay does."""
        end = self.height + count - 1
        while self.height <= end:
            last = min(self.height + self.batch - 1, end)
            self.cursor = await self.store.commit_blocks(
                self.scope, self.cursor, self.policy, self.effects(self.height, last), self.stop
            )
            # as replay's on-commit does: the committed range's matches, written out
            self.written += len(await self.store.matches(self.scope, heights=(self.height, last)))
            self.height = last + 1


async def drive(store: SqlStore, blocks: int, batch: int, every: int, matches: int, out: list[dict[str, Any]]) -> None:
    run = Replayer(store, matches, batch, blocks)
    await run.start()
    began = mark = time.perf_counter()
    cpu_mark, read_mark = cpu(), read_bytes()
    while run.height <= blocks:
        await run.advance(min(every, blocks - run.height + 1))
        now = time.perf_counter()
        line = {
            "block": run.height - 1,
            "blocks_per_s": round(every / (now - mark), 1),
            "overall_blocks_per_s": round((run.height - 1) / (now - began), 1),
            "cpu_s": round(cpu() - cpu_mark, 2),
            "read_mb": round((read_bytes() - read_mark) / 1e6, 1),
            "matches": run.written,
        }
        print(json.dumps(line), flush=True)
        out.append(line)
        mark, cpu_mark, read_mark = now, cpu(), read_bytes()


async def side_by_side(
    fresh: SqlStore, full: SqlStore, at: int, rounds: int, stretch: int, batch: int, matches: int
) -> list[dict[str, Any]]:
    """A store replaying from block 1 and one already holding blocks 1..`at`, in turns of `stretch` blocks
    (the same load on both): the rate at the start of a run and at block `at`, round by round."""
    early, late = Replayer(fresh, matches, batch, at + 10 * rounds * stretch), Replayer(full, matches, batch, 2 * at)
    await early.start()
    await late.start()
    began = time.perf_counter()
    await late.prefill(at)
    print(json.dumps({"prefilled": at, "matches": late.written, "seconds": round(time.perf_counter() - began)}))
    out = []
    await early.advance(1_000)  # start the early run at block 1,000
    for n in range(rounds):
        rates = []
        for run in (early, late):
            first = run.height
            mark, cpu_mark = time.perf_counter(), cpu()
            await run.advance(stretch)
            seconds = time.perf_counter() - mark
            rates.append(
                {
                    "from": first,
                    "blocks_per_s": round(stretch / seconds, 1),
                    "cpu_ms": round(1000 * (cpu() - cpu_mark) / stretch, 3),
                }
            )
        line = {
            "round": n + 1,
            "early": rates[0],
            "late": rates[1],
            "ratio": round(rates[1]["blocks_per_s"] / rates[0]["blocks_per_s"], 3),
        }
        print(json.dumps(line), flush=True)
        out.append(line)
    return out


@contextlib.asynccontextmanager
async def opened(kind: str, durable: bool = False) -> AsyncIterator[SqlStore]:
    """A new, empty store of that kind (a scratch SQLite file, or a scratch PostgreSQL schema), dropped after."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="flatbench-", dir=TMP) as tmp:
            store = await open_store(f"sqlite:///{Path(tmp) / 'replay.db'}", migrate=True, scratch=not durable)
            try:
                yield store
            finally:
                await store.close()
        return
    import asyncpg

    schema = scratch_schema("flatbench")
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        store = await open_store(with_search_path(PG_URL, schema), migrate=True)
        try:
            yield store
        finally:
            await store.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def run(
    kind: str, blocks: int, batch: int, every: int, matches: int, durable: bool = False
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with opened(kind, durable) as store:
        await drive(store, blocks, batch, every, matches, out)
    return out


async def run_side_by_side(
    kind: str, at: int, rounds: int, stretch: int, batch: int, matches: int
) -> list[dict[str, Any]]:
    async with opened(kind) as fresh, opened(kind) as full:
        return await side_by_side(fresh, full, at, rounds, stretch, batch, matches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20, help="blocks a commit (the follower's batch_blocks)")
    parser.add_argument("--every", type=int, default=10_000, help="print the rate every N blocks")
    parser.add_argument("--matches", type=int, default=5, help="watched transfers in every block")
    parser.add_argument(
        "--durable", action="store_true", help="SQLite: the daemon's settings (fsync) instead of scratch"
    )
    parser.add_argument("--at", type=int, help="side by side: a fresh store and one prefilled with this many blocks")
    parser.add_argument("--rounds", type=int, default=5, help="side by side: turns on each store")
    parser.add_argument("--json", help="also write the lines here as one JSON list")
    args = parser.parse_args()
    if args.at:
        rows = asyncio.run(run_side_by_side(args.store, args.at, args.rounds, args.every, args.batch, args.matches))
        if args.json:
            Path(args.json).write_text(json.dumps({"store": args.store, "at": args.at, "rounds": rows}, indent=1))
        return
    out = asyncio.run(run(args.store, args.blocks, args.batch, args.every, args.matches, args.durable))
    if args.json:
        Path(args.json).write_text(json.dumps({"store": args.store, "batch": args.batch, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
