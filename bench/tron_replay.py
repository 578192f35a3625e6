"""TRON replay end to end against a bare client, in one run (used by `bench/tron_bench.py --replay`).

The test node serves the chain from a child process (as a real node is another process: its CPU is not
the client's). Each round times, against that same node:

- **bare**: a client that asks the calls a replay needs (`getblockbylimitnext` ranges of 100 blocks,
  `gettransactioninfobyblocknum` for blocks with contract calls, four at a time) and only parses the
  answers with orjson: the floor of any client;
- **blocks only**: the range read with one `getblockbynum` a block (four in flight) against
  `getblockbylimitnext` (100 blocks a call), answers parsed, nothing else: which is the faster;
- **replay**: `depositwatch.replay.replay` of the same range, the real thing: the node client (limits,
  failover, typed errors), the source (every identity recomputed, the signed fields checked), the
  follower, the matcher and the embedded store committing each batch, its output written.

Bare and replay rounds alternate; each is printed beside the other with their ratio, and with the
client process's CPU time per block and the garbage collector's part of it (less noisy than the rates
on a shared machine).

    python bench/tron_bench.py --blocks 400 --rounds 3 --replay   # with the decode and fetch figures
    python bench/tron_replay.py --blocks 400 --rounds 3            # these figures alone
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import multiprocessing
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

if __package__ in (None, ""):  # run as `python bench/tron_replay.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tronnode.chain import TronChain, account
from tests.tronnode.server import TronNodeServer

from bench.tron_bench import bare_fetch
from depositwatch.addresses.tron import tron_address
from depositwatch.chains.tron import RANGE_LIMIT
from depositwatch.config import ChainConfig
from depositwatch.models import AddressEntry, AddressStatus
from depositwatch.replay import replay
from depositwatch.store import open_store

USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
WATCHED = [account(n) for n in range(0, 20_000, 1000)]  # 20 keys, a few hits per block


def _serve(chain: TronChain, pipe: Connection) -> None:
    async def run() -> None:
        async with TronNodeServer(chain) as node:
            # every answer encoded once before the clock starts (the server is not what is measured)
            for height in range(chain.first_height, chain.tip + 1):
                node._block_bytes(height, visible=False)
            pipe.send(node.url)
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until the parent says stop

    asyncio.run(run())


async def by_number(url: str, start: int, stop: int, in_flight: int = 4) -> int:
    """The blocks one `getblockbynum` each, `in_flight` at a time, parsed: the other way to read a range."""
    async with aiohttp.ClientSession() as session:
        sem = asyncio.Semaphore(in_flight)

        async def one(num: int) -> Any:
            async with sem, session.post(url + "/wallet/getblockbynum", data=orjson.dumps({"num": num})) as response:
                return orjson.loads(await response.read())

        return len(await asyncio.gather(*(one(n) for n in range(start, stop))))


async def by_range(url: str, start: int, stop: int) -> int:
    """The blocks 100 at a time with `getblockbylimitnext`, parsed."""
    count = 0
    async with aiohttp.ClientSession() as session:
        for low in range(start, stop, RANGE_LIMIT):
            body = {"startNum": low, "endNum": min(low + RANGE_LIMIT, stop)}
            async with session.post(url + "/wallet/getblockbylimitnext", data=orjson.dumps(body)) as response:
                count += len(orjson.loads(await response.read())["block"])
    return count


async def _call_rounds(url: str, start: int, stop: int, rounds: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"getblockbynum, 4 in flight": [], "getblockbylimitnext, 100 a call": []}
    for _ in range(rounds):
        for name, read in zip(rates, (by_number, by_range), strict=True):
            began = time.perf_counter()
            got = await read(url, start, stop)
            rates[name].append(got / (time.perf_counter() - began))
    return rates


class _Collector:
    """The garbage collector's time (all generations) since the last `take()`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began

    def take(self) -> float:
        taken, self.seconds = self.seconds, 0.0
        return taken


class Round:
    """One timed run: blocks per second, and the client process's CPU and collector time per block."""

    def __init__(self, blocks: int, wall: float, cpu: float, collector: float) -> None:
        self.rate = blocks / wall
        self.cpu_ms = 1000 * cpu / blocks
        self.gc_ms = 1000 * collector / blocks


async def _timed(run: Any, collector: _Collector) -> tuple[Round, Any]:
    collector.take()
    began, cpu = time.perf_counter(), time.process_time()
    blocks, result = await run
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    return Round(blocks, wall, cpu, collector.take()), result


async def _replay_rounds(url: str, start: int, stop: int, rounds: int) -> tuple[list[Round], list[Round], int]:
    config = ChainConfig(
        name="tron",
        kind="tron",
        network="bench",
        rpc_urls=[url],
        tokens=[{"symbol": "USDT", "contract": USDT, "decimals": 6}],  # type: ignore[list-item]
        internal=False,
    )
    bare_rounds: list[Round] = []
    replay_rounds: list[Round] = []
    found = 0
    collector = _Collector()
    gc.callbacks.append(collector)

    async def bare() -> tuple[int, None]:
        return await bare_fetch(url, start, stop), None

    async def replayed() -> tuple[int, int]:
        out = io.StringIO()
        summary = await replay(chain=config, store=store, start=start, stop=stop - 1, output=out, restart=True)
        return summary.blocks, len(out.getvalue().splitlines())

    with tempfile.TemporaryDirectory(prefix="tron-replay-bench-") as tmp:
        store = await open_store(f"sqlite:///{Path(tmp) / 'bench.db'}", migrate=True)
        try:
            # half active, half revoked long ago: their USDT transfers out are sweeps (matches)
            entries = [
                AddressEntry("tron", tron_address(key), key, status, f"a{n}", "bench", 0 if n % 2 else None)
                for n, key in enumerate(WATCHED)
                for status in [AddressStatus.REVOKED if n % 2 else AddressStatus.ACTIVE]
            ]
            await store.import_addresses(list(enumerate(entries, start=2)))
            await bare_fetch(url, start, stop)  # warm both ends' connections
            for _ in range(rounds):
                bare_rounds.append((await _timed(bare(), collector))[0])
                done, found = await _timed(replayed(), collector)
                replay_rounds.append(done)
        finally:
            gc.callbacks.remove(collector)
            await store.close()
    return bare_rounds, replay_rounds, found


def bench_replay(chain: TronChain, rounds: int, first: int) -> None:
    """Print the replay's blocks/s against the bare client's, from one node process, in one run."""
    # The test chain's millions of objects belong to the node, not to the client: out of the collector's
    # sight, so the client process's garbage collection costs what it would beside a real node.
    gc.collect()
    gc.freeze()
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    server = context.Process(target=_serve, args=(chain, child), daemon=True)
    server.start()
    try:
        url = parent.recv()
        start, stop = first, chain.tip + 1
        calls = asyncio.run(_call_rounds(url, start, stop, rounds))
        bare_rounds, replay_rounds, found = asyncio.run(_replay_rounds(url, start, stop, rounds))
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
    for name, rates in calls.items():
        print(f"blocks only, {name}: {max(rates):.1f} blocks/s (rounds {', '.join(f'{r:.1f}' for r in rates)})")
    bare = max(bare_rounds, key=lambda r: r.rate)
    replayed = max(replay_rounds, key=lambda r: r.rate)
    print(
        f"replay: {replayed.rate:.1f} blocks/s, bare client {bare.rate:.1f} blocks/s: {replayed.rate / bare.rate:.2f}"
        f" of it ({stop - start} blocks, {found} matches, node in its own process)"
    )
    ratios = [r.rate / b.rate for r, b in zip(replay_rounds, bare_rounds, strict=True)]
    print(
        "  rounds side by side (replay / bare, blocks/s): "
        + "; ".join(
            f"{r.rate:.1f} / {b.rate:.1f} = {q:.2f}" for r, b, q in zip(replay_rounds, bare_rounds, ratios, strict=True)
        )
    )
    for name, done in (("replay", replay_rounds), ("bare", bare_rounds)):
        print(
            f"  client CPU per block, {name}: {min(r.cpu_ms for r in done):.2f} ms"
            f" (rounds {', '.join(f'{r.cpu_ms:.2f}' for r in done)}), of which garbage collection"
            f" {', '.join(f'{r.gc_ms:.2f}' for r in done)} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from bench.common import machine_line
    from bench.tron_bench import FIRST, build_chain

    print(machine_line())
    began = time.perf_counter()
    chain = build_chain(args.blocks)
    print(f"built {args.blocks} mainnet-sized blocks in {time.perf_counter() - began:.1f} s")
    bench_replay(chain, args.rounds, FIRST + 1)


if __name__ == "__main__":
    main()
