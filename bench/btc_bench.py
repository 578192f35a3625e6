"""Bitcoin: decode-and-match cost of a real 1 MB block, and the sustained replay rate from a node.

    python bench/btc_bench.py                      # both parts, 10,000,000 watched scripts, 40 blocks
    python bench/btc_bench.py --scripts 1000000 --blocks 20 --runs 9
    python bench/btc_bench.py --only replay --rounds 5     # part 2 alone

Part 1: block 413,567 (`shared/realdata/btc/block413567.raw`, 999,887 bytes, 1,557 transactions,
3,581 outputs, 4,887 inputs) is decoded and matched against a registry `ChainBook` of N random
25-byte P2PKH scripts (active) plus 40 real scripts of the block (20 active, 20 revoked), the way the
follower does it: `BitcoinSource.decode_blocks` (header hash check, merkle root check), `match_block`,
and the `OutputTracker` hook. Both ways the source can decode: the watched path (`watch(registry,
tracker)`: `btc_scan.scan_block` builds only the hits) and the full path (every output a `Transfer`
with its address, every input a `Spend`). `scan_block` runs on its compiled fast path (the C
extension `depositwatch.chains._btcscan`, which the bench requires) and, in rows of their own, on the
pure-Python path it falls back to. The floor is the double SHA-256 of every transaction's
serialization (without witness) with `hashlib`, which any decoder must compute for the txids. Runs
are interleaved; the ratio is median over median.

Part 2: a regtest stand-in (`tests/btcnode`) in its own process serves a chain of full-size blocks
(about 1 MB each: 3,300 transactions with one P2WPKH input and four outputs of mixed script types,
13,200 outputs a block); this process replays it over real HTTP with Basic auth, `max_in_flight` 4,
`batch_blocks` 10: the raw transport alone (`getblock HASH 0` through the node client's `call`, the
answer parsed, no decoding), the source's fetch on both paths, and `depositwatch.replay.replay` end to
end (Follower, OutputTracker, a fresh SQLite store) with 100,000 watched scripts, some of which the
chain pays and sweeps every block. The parts run in interleaved rounds (`--rounds`, the full path in
the first only), so each round's ratio to the transport is taken under the same load; the CPU time
of this process and of the node's process is given per block.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import io
import itertools
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

if __package__ in (None, ""):  # run as `python bench/btc_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, rss_mb
from depositwatch.chains import btc_scan
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_decode import decode_block
from depositwatch.chains.btc_scan import _scan_block_py, scan_block
from depositwatch.chains.btc_serialize import serialize_tx
from depositwatch.chains.btc_wire import block_hash
from depositwatch.config import ChainConfig, Secret
from depositwatch.matcher import match_block
from depositwatch.models import AddressStatus
from depositwatch.registry import AddressRegistry, ChainBook

REPO = Path(__file__).resolve().parent.parent
BLOCK_FILE = REPO.parent / "shared" / "realdata" / "btc" / "block413567.raw"
HEIGHT = 413_567
SEED = 413567


# --- part 1: one real block ------------------------------------------------------------------------


def tx_spans(raw: bytes) -> list[tuple[int, int]]:
    """Where each transaction's non-witness serialization lies in the block (a pre-segwit block)."""
    block = decode_block(raw)
    spans, off = [], 80 + (1 if len(block.txs) < 0xFD else 3)
    for tx in block.txs:
        size = len(serialize_tx(tx))
        assert size == len(serialize_tx(tx, witness=False)), "the floor assumes a block without witness data"
        spans.append((off, off + size))
        off += size
    assert off == len(raw)
    return spans


def build_book(n: int, raw: bytes) -> tuple[AddressRegistry, list[bytes], list[bytes]]:
    """N random P2PKH scripts (active) and 40 real scripts of the block: 20 active, 20 revoked."""
    rng = random.Random(SEED)
    noise = os.urandom(20 * n)
    scripts = sorted({o.script for tx in decode_block(raw).txs for o in tx.outputs if o.script[:1] != b"\x6a"})
    real = rng.sample(scripts, 40)
    active, revoked = real[:20], real[20:]
    p2pkh = (b"\x76\xa9\x14" + noise[i : i + 20] + b"\x88\xac" for i in range(0, 20 * n, 20))
    book = ChainBook(itertools.chain(p2pkh, active), dict.fromkeys(revoked, 0))
    del noise
    return AddressRegistry({"btc": book}), active, revoked


def offline_config() -> ChainConfig:
    return ChainConfig(name="btc", kind="bitcoin", network="mainnet", rpc_urls=["http://127.0.0.1:1"])


def pure_python(job: Callable[[], object]) -> Callable[[], object]:
    """`job` with `scan_block` on its pure-Python path (the extension switched off for the call)."""

    def run() -> object:
        btc_scan._USE_EXTENSION = False
        try:
            return job()
        finally:
            btc_scan._USE_EXTENSION = True

    return run


def part_one(scripts: int, runs: int) -> dict[str, Any]:
    from depositwatch.sweeps import OutputTracker

    if not btc_scan._USE_EXTENSION:
        raise SystemExit(
            "the compiled scan is not in use: build it with `pip install -e .` (it needs gcc and libssl-dev) "
            "and leave DEPOSITWATCH_PURE_PYTHON unset"
        )
    raw = BLOCK_FILE.read_bytes()
    hash_ = block_hash(raw[:80])
    spans = tx_spans(raw)
    view, sha = memoryview(raw), hashlib.sha256
    began = time.perf_counter()
    registry, _, _ = build_book(scripts, raw)
    built = time.perf_counter() - began
    book = registry.book("btc")

    watched_source = BitcoinSource(offline_config())
    watched_tracker = OutputTracker("btc", "BTC", "mainnet")
    watched_source.watch(registry, watched_tracker)
    full_source = BitcoinSource(offline_config())
    full_tracker = OutputTracker("btc", "BTC", "mainnet")

    def floor() -> object:
        for start, end in spans:
            sha(sha(view[start:end]).digest()).digest()
        return None

    def follow(source: BitcoinSource, tracker: OutputTracker) -> Callable[[], object]:
        def run() -> object:
            tracker.outputs.clear()
            (block,) = source.decode_blocks(HEIGHT, [hash_], [raw])
            matches = match_block("btc", block, registry.book("btc"))
            return tracker.effects(block, matches, registry).matches

        return run

    def as_watched(scan: Callable[..., object]) -> Callable[[], object]:
        return lambda: scan(raw, book.active, set(), more_scripts=book.revoked, follow=book.revoked)

    jobs: dict[str, Callable[[], object]] = {
        "floor: double SHA-256 of every transaction": floor,
        "watched path: decode_blocks + match_block + OutputTracker (C scan)": follow(watched_source, watched_tracker),
        "watched path, pure-Python scan": pure_python(follow(watched_source, watched_tracker)),
        "full path: decode_blocks + match_block + OutputTracker": follow(full_source, full_tracker),
        "btc_scan.scan_block as the watched path calls it (active set, revoked dict followed): C": as_watched(
            scan_block
        ),
        "btc_scan.scan_block as the watched path calls it: pure Python": as_watched(_scan_block_py),
        "btc_scan.scan_block, merkle checked (active set only): C": lambda: scan_block(raw, book.active),
        "btc_scan.scan_block, merkle checked: pure Python": lambda: _scan_block_py(raw, book.active),
        "btc_scan.scan_block, merkle skipped (active set only): C": lambda: scan_block(
            raw, book.active, verify_merkle=False
        ),
        "btc_scan.scan_block, merkle skipped: pure Python": lambda: _scan_block_py(
            raw, book.active, verify_merkle=False
        ),
        "btc_decode.decode_block": lambda: decode_block(raw),
    }
    for job in jobs.values():
        job()  # warm up
    found = []
    for source, tracker in ((watched_source, watched_tracker), (full_source, full_tracker)):
        tracker.outputs.clear()
        (block,) = source.decode_blocks(HEIGHT, [hash_], [raw])
        matches = tracker.effects(block, match_block("btc", block, book), registry).matches
        found.append(sorted((str(m.kind), m.transfer.txid, m.transfer.index) for m in matches))
    assert found[0] == found[1] and found[0], "the two paths disagree"
    assert as_watched(scan_block)() == as_watched(_scan_block_py)(), "the C and Python scans disagree"
    watched_found = found[0]
    times: dict[str, list[float]] = {name: [] for name in jobs}
    load_before = os.getloadavg()[0]
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            for name, job in jobs.items():
                t = time.perf_counter()
                job()
                times[name].append(time.perf_counter() - t)
    finally:
        gc.enable()
    floor_name = next(iter(jobs))
    floor_median = statistics.median(times[floor_name])
    floor_best = min(times[floor_name])
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rows.append(
            {
                "what": name,
                "median_ms": round(median * 1000, 2),
                "ratio": round(median / floor_median, 2),
                "best_ratio": round(min(samples) / floor_best, 2),
            }
        )
    return {
        "scripts": len(book.active) + len(book.revoked),
        "book_seconds": round(built, 1),
        "rss_mb": round(rss_mb()),
        "matches": len(watched_found),
        "runs": runs,
        "load": (round(load_before, 2), round(os.getloadavg()[0], 2)),
        "rows": rows,
    }


# --- part 2: replay from a node ---------------------------------------------------------------------

TXS_PER_BLOCK = 3_300
PAY = 1_000
FEE = 200


def serve(blocks: int) -> None:
    """Child process: build a chain of full-size blocks, serve it, print where, wait for stdin to close."""
    from tests.btcnode import BitcoinRegtestServer, RegtestChain, p2pkh, p2sh, p2tr, p2wpkh, p2wsh
    from tests.btcnode.chain import unlocking_data

    from depositwatch.chains.btc_serialize import make_tx
    from depositwatch.chains.btc_wire import TxIn, TxOut

    rng = random.Random(SEED)
    makers = [
        lambda: p2pkh(rng.randbytes(20)),
        lambda: p2sh(rng.randbytes(20)),
        lambda: p2wpkh(rng.randbytes(20)),
        lambda: p2wsh(rng.randbytes(32)),
        lambda: p2tr(rng.randbytes(32)),
    ]
    chain = RegtestChain()
    chain.mine(101)
    keys = [p2wpkh(i.to_bytes(4, "big") * 5) for i in range(TXS_PER_BLOCK)]  # one script per spending line
    (coin, _), *_ = chain.coins(chain.miner_script)
    total = chain.find_output(coin).value  # type: ignore[union-attr]
    each = (total - 10_000) // TXS_PER_BLOCK
    fund = chain.spend([coin], [(k, each) for k in keys], submit=False)
    chain.mine(txs=[fund])
    lines = [(fund.txid, i, each) for i in range(TXS_PER_BLOCK)]
    first = chain.height + 1
    paid: list[bytes] = []
    began = time.perf_counter()
    for _ in range(blocks):
        txs, following = [], []
        for line, (txid, vout, value) in enumerate(lines):
            script_sig, stack = unlocking_data(keys[line])
            outputs = [TxOut(PAY, makers[rng.randrange(5)]()) for _ in range(3)]
            rest = value - 3 * PAY - FEE
            outputs.append(TxOut(rest, keys[line]))
            tx = make_tx([TxIn(bytes.fromhex(txid)[::-1], vout, script_sig, 0xFFFFFFFD, stack)], outputs)
            txs.append(tx)
            following.append((tx.txid, 3, rest))
            if rng.random() < 0.005:
                paid.append(outputs[0].script)
        chain.mine(txs=txs)
        lines = following
    made = time.perf_counter() - began
    sizes = [len(chain.block_at(h).raw) for h in range(first, chain.height + 1)]

    async def run() -> None:
        async with BitcoinRegtestServer(chain) as node:
            info = {
                "url": node.url, "user": node.user, "password": node.password, "first": first,
                "last": chain.height, "bytes": sum(sizes), "outputs_per_block": TXS_PER_BLOCK * 4,
                "txs_per_block": TXS_PER_BLOCK + 1, "build_seconds": round(made, 1),
                "revoked": [k.hex() for k in keys[:10]], "active": [s.hex() for s in paid[:50]],
            }  # fmt: skip
            print(json.dumps(info), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(run())


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process, or of process `pid` (Linux /proc)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(samples: dict[str, list[tuple[float, float, float]]], mb_per_block: float) -> list[dict[str, Any]]:
    """A row per part: median rate, median ratio to the transport's rate of the same round, median CPU."""
    rows = []
    for name, got in samples.items():
        ratios = [mine[0] / base[0] for mine, base in zip(got, samples[TRANSPORT], strict=False)]
        rate = statistics.median(s[0] for s in got)
        rows.append(
            {
                "what": name,
                "blocks_s": round(rate, 1),
                "mb_s": round(rate * mb_per_block, 1),
                "ratio": round(statistics.median(ratios), 2),
                "ratios": [round(r, 2) for r in ratios],
                "client_ms": round(statistics.median(s[1] for s in got), 2),
                "node_ms": round(statistics.median(s[2] for s in got), 2),
            }
        )
    return rows


TRANSPORT = "transport only: getblock HASH 0, no decoding"
FULL = "source.fetch, full path"
WATCHED = "source.fetch, watched path"
REPLAY = "replay() end to end (watched path, as the CLI runs it), SQLite store"


async def part_two(info: dict[str, Any], watched_scripts: int, rounds: int, node_pid: int) -> dict[str, Any]:
    """Interleaved rounds of the transport alone, the watched fetch and replay() against the same node
    process; the full path once (it is slow). Per part: blocks/s, and CPU ms a block of this process
    (the client) and of the node's."""
    from depositwatch.models import AddressEntry
    from depositwatch.replay import replay
    from depositwatch.store import open_store
    from depositwatch.sweeps import OutputTracker

    config = ChainConfig(
        name="btc", kind="bitcoin", network="regtest", rpc_urls=[info["url"]], rpc_user=info["user"],
        rpc_password=Secret(value=info["password"]), max_in_flight=4, batch_blocks=10, confirmations=6,
    )  # fmt: skip
    first, last = info["first"], info["last"]
    count = last - first + 1
    megabytes = info["bytes"] / 1e6
    revoked = [bytes.fromhex(h) for h in info["revoked"]]
    active = [bytes.fromhex(h) for h in info["active"]]
    noise = os.urandom(20 * watched_scripts)
    p2pkh = (b"\x76\xa9\x14" + noise[i : i + 20] + b"\x88\xac" for i in range(0, len(noise), 20))
    book = ChainBook(itertools.chain(p2pkh, active), dict.fromkeys(revoked, 0))
    registry = AddressRegistry({"btc": book})
    samples: dict[str, list[tuple[float, float, float]]] = {}  # part -> (blocks/s, client ms, node ms) a round
    matches: Counter[str] = Counter()

    async def timed(name: str, job: Callable[[], Any]) -> Any:
        client, node = process_cpu(), process_cpu(node_pid)
        began = time.perf_counter()
        result = await job()
        seconds = time.perf_counter() - began
        spent = ((process_cpu() - client) * 1000 / count, (process_cpu(node_pid) - node) * 1000 / count)
        samples.setdefault(name, []).append((count / seconds, *spent))
        return result

    async def transport() -> None:
        source = BitcoinSource(config)
        await source.open()
        try:
            hashes = await source.hashes(first, last + 1)
            for low in range(0, len(hashes), config.batch_blocks):
                chunk = hashes[low : low + config.batch_blocks]
                await asyncio.gather(*(source.rpc.call("getblock", h, 0) for h in chunk))
        finally:
            await source.close()

    async def fetch_all(watched: bool) -> list[Any]:
        source = BitcoinSource(config)
        await source.open()
        if watched:
            source.watch(registry, OutputTracker("btc", "BTC", "regtest"))
        try:
            found = []
            for low in range(first, last + 1, config.batch_blocks):
                found += await source.fetch(low, min(low + config.batch_blocks, last + 1))
            return found
        finally:
            await source.close()

    async def replay_once() -> Counter[str]:
        from depositwatch.addresses import bitcoin_script_to_address

        with tempfile.TemporaryDirectory() as tmp:
            store = await open_store(f"sqlite:///{tmp}/bench.db", migrate=True)
            try:
                entries = []
                for status, keys in ((AddressStatus.ACTIVE, active), (AddressStatus.REVOKED, revoked)):
                    for key in keys:
                        address = bitcoin_script_to_address(key, "regtest") or key.hex()
                        entries.append(AddressEntry("btc", address, key, status, revoked_at=0 if status.value ==
                                                    "revoked" else None, type="bench"))  # fmt: skip
                await store.import_addresses(list(enumerate(entries, 1)))
                summary = await timed(
                    REPLAY, lambda: replay(chain=config, store=store, start=first, stop=last, output=io.StringIO())
                )
                return summary.kinds  # type: ignore[no-any-return]
            finally:
                await store.close()

    loads = [os.getloadavg()[0]]
    for round_ in range(rounds):
        await timed(TRANSPORT, transport)
        if round_ == 0:
            full = await timed(FULL, lambda: fetch_all(False))
            assert sum(len(b.transfers) for b in full) >= count * (info["outputs_per_block"] - 1)
            del full
        watched = await timed(WATCHED, lambda: fetch_all(True))
        assert 0 < sum(len(b.transfers) for b in watched) < count * 100
        kinds = await replay_once()
        assert not matches or kinds == matches, "replay found other matches in another round"
        matches = kinds
        loads.append(os.getloadavg()[0])

    return {
        "blocks": count,
        "rounds": rounds,
        "mb_per_block": round(megabytes / count, 3),
        "txs_per_block": info["txs_per_block"],
        "outputs_per_block": info["outputs_per_block"],
        "build_seconds": info["build_seconds"],
        "rows": summarize(samples, megabytes / count),
        "replay_matches": dict(matches),
        "load": (round(min(loads), 2), round(max(loads), 2)),
    }


# --- part 3: the RPC transport ----------------------------------------------------------------------


async def part_three(info: dict[str, Any], runs: int) -> dict[str, Any]:
    """bitcoinrpc 0.7 (httpx) against this client (aiohttp + orjson) on the same node and block."""
    import httpx
    from bitcoinrpc import BitcoinRPC

    from depositwatch.chains.btc_rpc import BitcoinRpc, Call

    url, auth = info["url"], (info["user"], info["password"])
    listed = BitcoinRPC.from_config(url, auth, timeout=httpx.Timeout(60.0))
    ours = BitcoinRpc([url], user=auth[0], password=auth[1], max_in_flight=8)
    big = await ours.call("getblockhash", info["last"])
    heights = list(range(100))
    calls = [Call("getblockhash", (h,)) for h in heights]

    async def listed_batch() -> object:
        return await asyncio.gather(*(listed.acall("getblockhash", [h]) for h in heights))

    jobs: dict[str, Callable[[], Any]] = {
        "bitcoinrpc: getblock HASH 0": lambda: listed.acall("getblock", [big, 0]),
        "aiohttp client: getblock HASH 0": lambda: ours.call("getblock", big, 0),
        "bitcoinrpc: 100 getblockhash (no batches: gathered calls)": listed_batch,
        "aiohttp client: one batch of 100 getblockhash": lambda: ours.batch(calls),
        "bitcoinrpc: one getblockhash": lambda: listed.acall("getblockhash", [1]),
        "aiohttp client: one getblockhash": lambda: ours.call("getblockhash", 1),
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    try:
        for job in jobs.values():
            await job()
        size = len(await ours.call("getblock", big, 0)) // 2
        for _ in range(runs):
            for name, job in jobs.items():
                began = time.perf_counter()
                await job()
                times[name].append(time.perf_counter() - began)
    finally:
        await listed.aclose()
        await ours.close()
    return {
        "block_bytes": size,
        "rows": [
            {"what": name, "median_ms": round(statistics.median(t) * 1000, 2), "min_ms": round(min(t) * 1000, 2)}
            for name, t in times.items()
        ],
    }


def start_server(blocks: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", "--blocks", str(blocks)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait()
        raise SystemExit("the regtest server did not start")
    return child, json.loads(line)


def report(one: dict[str, Any] | None, two: dict[str, Any] | None, three: dict[str, Any] | None, command: str) -> str:
    lines = ["## Bitcoin", "", f"`{command}`", "", f"Machine: {machine_line()}.", ""]
    if one is not None:
        lines += [
            f"**Decode and match block 413,567** (999,887 bytes, 1,557 transactions) against "
            f"{one['scripts']:,} watched scripts (the book took {one['book_seconds']} s to build; process "
            f"resident memory {one['rss_mb']:,} MB); {one['matches']} matches and sweeps found, the same on both "
            f"paths. Median of {one['runs']} interleaved runs (one-minute load average {one['load'][0]} before, "
            f"{one['load'][1]} after, on {os.cpu_count()} CPUs); ratio = median over the floor's median (best-run "
            "ratio beside it).",
            "",
            "| what | median ms | × floor | best × floor |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [f"| {r['what']} | {r['median_ms']} | {r['ratio']} | {r['best_ratio']} |" for r in one["rows"]]
        lines.append("")
    if two is not None:
        lines += [
            f"**Sustained replay from the regtest stand-in** over HTTP (its own process): {two['blocks']} blocks of "
            f"{two['mb_per_block']} MB, {two['txs_per_block']:,} transactions and {two['outputs_per_block']:,} outputs "
            f"each; max_in_flight 4, batch_blocks 10; replay found {two['replay_matches']} in every round. "
            f"{two['rounds']} interleaved rounds (the full path in the first only), medians; × transport is the "
            "median of each round's ratio to that round's transport rate (the rounds' ratios beside it); CPU is "
            f"milliseconds a block of this process (the client) and of the node's. One-minute load average "
            f"{two['load'][0]} to {two['load'][1]} on {os.cpu_count()} CPUs.",
            "",
            "| what | blocks/s | MB/s | × transport | rounds | client CPU ms/block | node CPU ms/block |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        lines += [
            f"| {r['what']} | {r['blocks_s']} | {r['mb_s']} | {r['ratio']} | {', '.join(map(str, r['ratios']))} "
            f"| {r['client_ms']} | {r['node_ms']} |"
            for r in two["rows"]
        ]
        lines.append("")
    if three is not None:
        lines += [
            f"**RPC transport** against the same stand-in: `bitcoinrpc` 0.7 (httpx) and `depositwatch.chains.btc_rpc` "
            f"(aiohttp + orjson), a {three['block_bytes']:,}-byte block and 100 block hashes; interleaved runs.",
            "",
            "| what | median ms | min ms |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {r['what']} | {r['median_ms']} | {r['min_ms']} |" for r in three["rows"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", type=int, default=10_000_000, help="watched scripts for part 1")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--blocks", type=int, default=40, help="full-size blocks for part 2")
    parser.add_argument("--replay-scripts", type=int, default=100_000, help="watched scripts for part 2")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of part 2")
    parser.add_argument("--only", choices=["decode", "replay", "transport"], help="run one part")
    parser.add_argument("--append", help="append the section to this markdown file (docs/performance.md)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.blocks)
        return
    command = "python bench/btc_bench.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--append"))
    command = command.replace(f" {args.append}", "") if args.append else command
    one = two = three = None
    if args.only in (None, "replay", "transport"):
        child, info = start_server(args.blocks)
        try:
            if args.only in (None, "replay"):
                two = asyncio.run(part_two(info, args.replay_scripts, args.rounds, child.pid))
                print(json.dumps(two, indent=1), flush=True)
            if args.only in (None, "transport"):
                three = asyncio.run(part_three(info, args.runs * 2))
                print(json.dumps(three, indent=1), flush=True)
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=30)
    if args.only in (None, "decode"):
        one = part_one(args.scripts, args.runs)
        print(json.dumps(one, indent=1), flush=True)
    text = report(one, two, three, command.strip())
    print(text)
    if args.append:
        target = Path(args.append)
        with target.open("a", encoding="utf-8") as out:
            out.write(("\n" if out.tell() else "") + text)


if __name__ == "__main__":
    main()
