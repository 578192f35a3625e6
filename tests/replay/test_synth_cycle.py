"""bench/evm_synth.py's cycle mode (`--cycle K`), which serves the million-block replay of the benchmarks:
a chain whose blocks reuse K bodies must still be a chain a replay accepts (numbers, hashes and parents
linked, transaction hashes of each block its own), with block h carrying body (h - 1) % K's transfers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import orjson
from bench.evm_synth import SynthChain, SynthNode

BLOCKS, CYCLE = 60, 25


async def replay(node: SynthNode, watch: Path, last: int) -> list[dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "depositwatch", "--log-level", "warning", "replay", "--chain", "eth",
        "--rpc-url", node.url, "--watch", str(watch), "--from", "1", "--to", str(last),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return [orjson.loads(line) for line in out.splitlines()]


async def test_a_cycled_chain_replays_as_its_bodies_repeated(tmp_path: Path) -> None:
    plain = SynthChain(CYCLE, txs=20, population=400, watched=20)
    cycled = SynthChain(BLOCKS, txs=20, population=400, watched=20, cycle=CYCLE)
    assert len(cycled.full) == CYCLE + 1  # the genesis block and the bodies, not every block
    watch = tmp_path / "watch.csv"
    watch.write_text(plain.watch_csv())
    async with SynthNode(plain) as node:
        once = await replay(node, watch, CYCLE)
    async with SynthNode(cycled) as node:
        repeated = await replay(node, watch, BLOCKS)

    def transfers(matches: list[dict[str, object]], height: int) -> Counter[tuple[object, ...]]:
        return Counter(
            (m["kind"], m["address"], m["amount"], m["from"], m["to"]) for m in matches if m["block_height"] == height
        )

    assert once, "the plain chain has matches to compare"
    for height in range(1, BLOCKS + 1):
        assert transfers(repeated, height) == transfers(once, 1 + (height - 1) % CYCLE), height
    txids = [m["txid"] for m in repeated]
    blocks_of = {txid: {m["block_height"] for m in repeated if m["txid"] == txid} for txid in txids}
    assert all(len(heights) == 1 for heights in blocks_of.values()), "a transaction hash in two blocks"


async def run_million_bench(tmp_path: Path, *extra: str) -> None:
    """bench/replay_million.py over a short chain: stretches recorded to the end of the run, the matches
    counted, the figures printed and the plot drawn."""
    out = tmp_path / "run.json"
    argv = [sys.executable, "bench/replay_million.py", "--blocks", "3000", "--every", "500", "--cycle", "40"]
    argv += ["--txs", "20", "--json", str(out), "--plot", str(tmp_path / "run.png"), *extra]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    printed, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.read_text())
    # stretches to the end (a last one shorter than half a stretch is left out: too short to time)
    assert result["blocks"] == 3000 and len(result["along"]) >= 2 and result["along"][-1]["block"] >= 2750
    assert result["matches"] > 0
    assert "first stretch" in printed.decode() and (tmp_path / "run.png").stat().st_size > 0


async def test_the_million_block_bench_runs_small(tmp_path: Path) -> None:
    await run_million_bench(tmp_path)


async def test_the_million_block_bench_runs_small_on_postgres(tmp_path: Path, pg_url: str) -> None:
    await run_million_bench(tmp_path, "--store-url", pg_url)
