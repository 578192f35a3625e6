"""Ethereum replay on real-sized blocks: `depositwatch replay` against a bare batched client, and along a long run.

    python bench/eth_real_bench.py --blocks 2000 --rounds 3
    python bench/eth_real_bench.py --blocks 0 --long-seconds 600 --store-json bench/out/flat_sqlite.json \\
        --store-json bench/out/flat_postgres.json --plot docs/img/replay_flat.png

The node is `bench/eth_realnode.py` in its own process: relinked copies of mainnet block 17,173,049 (116
transactions, 271 logs, 20 of them USDT or USDC Transfers), answered from bytes encoded once, so it costs
little and the client is the limit. Node, client and store share the machine's CPUs, as for a user.

1. `--rounds` rounds over blocks 1..`--blocks`, each running, one after the other on the same node:
   - `bench/minimal_client.py`: batched aiohttp + orjson (20 blocks a batch, 4 requests in flight), every
     block with its full transactions, every block's receipts, the USDT and USDC Transfer logs; parsed and
     counted only;
   - `depositwatch replay --chain eth --rpc-url URL --watch watch.csv --from 1 --to N` (the ad-hoc form:
     chain id 1, so USDT and USDC are watched; its temporary SQLite store), matches to a file.
   Each round prints both rates, their ratio, and the CPU each client and the node spent per block
   (`--compare-src DIR`: then the same replay run from another version's `src/` folder, such as an
   earlier commit's `git archive`, for a before/after on the same node and load). The
   watched set (five addresses, `WATCH_CSV` of `bench/store_flat_bench.py`) meets five transfers in every
   copy: three deposits, one payment to a revoked address, one sweep.
2. `--long-seconds S`: one replay from block 1 over as many blocks as fit in about S seconds (the range is
   sized from round 1's rate), its progress read from the matches it writes (every block has some) once a
   second; prints the rate for every `--every` blocks.
`--plot` draws the long run's rate, and the store's commit-path rate from `bench/store_flat_bench.py`'s
`--json` files given with `--store-json`, along the run; `--replot RUN.json` draws it from an earlier
run's `--json` without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/eth_real_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save_figure
from bench.store_flat_bench import WATCH_CSV

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
DEPOSITWATCH = str(Path(PY).parent / "depositwatch")
TOKENS = ["0xdac17f958d2ee523a2206206994597c13d831ec7", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"]
SUMMARY = re.compile(r"(\d+) blocks, (\d+) transfers in [\d.]+s \(([\d.]+) blocks/s\)")
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Stretches:
    """A replay's rate along its run: a line for each stretch, with the CPU the replay process and the
    node spent a block in it (printed as JSON and kept in `lines`)."""

    def __init__(self, node_cpu: float) -> None:
        self.began = time.perf_counter()
        self.time, self.block, self.cpu, self.node = self.began, 0, 0.0, node_cpu
        self.lines: list[dict[str, Any]] = []

    def close(self, reached: int, now: float, spent: float, served: float) -> None:
        """The stretch from the last mark to block `reached` at `now`; `spent` and `served`: the replay's and
        the node's CPU seconds so far."""
        span = reached - self.block
        line = {
            "block": reached,
            "blocks_per_s": round(span / (now - self.time), 1),
            "replay_cpu_ms": round(1000 * (spent - self.cpu) / span, 4),
            "node_cpu_ms": round(1000 * (served - self.node) / span, 4),
            "seconds": round(now - self.began, 1),
            "load": load_avg(),
        }
        print(json.dumps(line), flush=True)
        self.lines.append(line)
        self.time, self.block, self.cpu, self.node = now, reached, spent, served


class Node:
    """bench/eth_realnode.py in its own process."""

    def __init__(self, tip: int) -> None:
        self.proc = subprocess.Popen(
            [PY, str(REPO / "bench" / "eth_realnode.py"), "--blocks", str(tip)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"the node did not start: {self.url!r}")

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def bare(node: Node, last: int) -> dict[str, Any]:
    """The bare client over blocks 1..last."""
    node_before, cpu_before = node.cpu(), children_cpu()
    done = subprocess.run(
        [PY, str(REPO / "bench" / "minimal_client.py"), "--rpc-url", node.url, "--from", "1", "--to", str(last)]
        + [arg for token in TOKENS for arg in ("--token", token)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "blocks_per_s": result["blocks_per_s"],
        "client_ms": 1000 * result["client_cpu_s"] / last,
        "process_ms": 1000 * (children_cpu() - cpu_before) / last,
        "node_ms": 1000 * (node.cpu() - node_before) / last,
    }


def replay(node: Node, last: int, tmp: Path, every: int = 0, src: str | None = None) -> dict[str, Any]:
    """`depositwatch replay` (ad hoc) over blocks 1..last; with `every`, its rate along the run; with `src`,
    the package found in that folder (another version's `src/`) instead of the installed one."""
    watch, out, err = tmp / "watch.csv", tmp / "matches.jsonl", tmp / "replay.err"
    watch.write_text(WATCH_CSV)
    out.unlink(missing_ok=True)
    program = [DEPOSITWATCH] if src is None else [PY, "-m", "depositwatch"]
    command = [*program, "replay", "--chain", "eth", "--rpc-url", node.url, "--watch", str(watch)]
    command += ["--from", "1", "--to", str(last), "-o", str(out)]
    env = None if src is None else {**os.environ, "PYTHONPATH": src}
    node_before, cpu_before = node.cpu(), children_cpu()
    stretches = Stretches(node_before)
    began = stretches.began
    with err.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        while every and proc.poll() is None:
            time.sleep(1.0)
            reached, now = _last_height(out), time.perf_counter()
            if reached - stretches.block >= every:
                try:
                    spent, served = proc_cpu(proc.pid), node.cpu()
                except (FileNotFoundError, ProcessLookupError):
                    break  # it has just ended
                stretches.close(reached, now, spent, served)
        if proc.wait() != 0:
            raise RuntimeError(f"replay failed: {err.read_text()[-2000:]}")
    summary = SUMMARY.search(err.read_text())
    if summary is None:
        raise RuntimeError(f"no replay summary in: {err.read_text()[-2000:]}")
    return {
        "blocks_per_s": float(summary.group(3)),
        "process_ms": 1000 * (children_cpu() - cpu_before) / last,
        "node_ms": 1000 * (node.cpu() - node_before) / last,
        "matches": sum(1 for _ in out.open()),
        "wall_s": time.perf_counter() - began,
        "along": stretches.lines,
    }


def _last_height(path: Path) -> int:
    """The block of the last match written so far (0 before the first)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    for raw in reversed(lines):
        try:
            return int(json.loads(raw)["block_height"])
        except (ValueError, KeyError):
            continue
    return 0


def plot(path: str, along: list[dict[str, Any]], stores: list[dict[str, Any]]) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    panels = (1 if along else 0) + (1 if stores else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(6 * max(panels, 1), 4), squeeze=False)
    column = 0
    if stores:
        ax = axes[0][column]
        column += 1
        for run in stores:
            rows = run["rows"]
            blocks = [r["block"] for r in rows]
            ax.plot(blocks, [r["blocks_per_s"] for r in rows], label=f"{run['store']}: blocks/s", linewidth=1)
            spans = [b - (blocks[i - 1] if i else 0) for i, b in enumerate(blocks)]
            ax.plot(blocks, [span / max(r["cpu_s"], 1e-6) for span, r in zip(spans, rows, strict=True)],
                    linestyle="--", linewidth=1, label=f"{run['store']}: 1 / (process CPU a block)")  # fmt: skip
        ax.set_xlabel("block")
        ax.set_ylabel("blocks per second")
        ax.set_title("store commit path, replay batches of 20 blocks")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    if along:
        ax = axes[0][column]
        blocks = [r["block"] for r in along]
        ax.plot(blocks, [r["blocks_per_s"] for r in along], marker=".", linewidth=1, label="replay blocks/s")
        ax.set_xlabel("block")
        ax.set_ylabel("blocks per second")
        ax.set_title("depositwatch replay, real-sized blocks, node on the same CPUs")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="lower left")
        if all("replay_cpu_ms" in r for r in along):
            cpu_ax = ax.twinx()
            cpu_ax.plot(blocks, [r["replay_cpu_ms"] for r in along], linestyle="--", color="tab:orange",
                        linewidth=1, label="replay process CPU ms a block")  # fmt: skip
            cpu_ax.plot(blocks, [r["node_cpu_ms"] for r in along], linestyle=":", color="tab:green",
                        linewidth=1, label="node CPU ms a block")  # fmt: skip
            cpu_ax.set_ylabel("CPU ms a block")
            cpu_ax.set_ylim(bottom=0)
            cpu_ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2000, help="blocks a round (0: no rounds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long-seconds", type=float, default=0.0, help="then one replay of about this long")
    parser.add_argument("--long-blocks", type=int, default=0, help="the long replay's blocks (default: sized)")
    parser.add_argument("--every", type=int, default=2000, help="long replay: a rate every N blocks")
    parser.add_argument("--store-json", action="append", default=[], help="bench/store_flat_bench.py --json output")
    parser.add_argument("--plot", help="write the plot here (PNG)")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--compare-src", metavar="DIR", help="each round also replays with the package in DIR")
    parser.add_argument("--replot", metavar="JSON", help="no run: draw --plot from an earlier run's --json")
    args = parser.parse_args()
    if args.replot:
        earlier = json.loads(Path(args.replot).read_text())
        stores = [json.loads(Path(p).read_text()) for p in args.store_json]
        plot(args.plot, earlier.get("long", {}).get("along", []), stores)
        return
    result: dict[str, Any] = {"load_before": load_avg(), "rounds": []}
    long_blocks = args.long_blocks or 200_000
    node = Node(max(args.blocks, long_blocks) + 10)
    try:
        with tempfile.TemporaryDirectory(prefix="eth-real-bench-") as folder:
            tmp = Path(folder)
            for n in range(args.rounds if args.blocks else 0):
                b = bare(node, args.blocks)
                r = replay(node, args.blocks, tmp)
                ratio = r["blocks_per_s"] / b["blocks_per_s"]
                row = {"round": n + 1, "bare": b, "replay": {k: v for k, v in r.items() if k != "along"}}
                row["ratio"] = ratio
                row["load"] = load_avg()
                result["rounds"].append(row)
                print(
                    f"round {n + 1}: replay {r['blocks_per_s']:.1f} blocks/s, bare client {b['blocks_per_s']:.1f}:"
                    f" ratio {ratio:.2f}; CPU a block: replay process {r['process_ms']:.2f} ms, bare"
                    f" {b['process_ms']:.2f} ms, node {r['node_ms']:.2f} / {b['node_ms']:.2f} ms;"
                    f" {r['matches']} matches; load {row['load']}",
                    flush=True,
                )
                if args.compare_src:
                    c = replay(node, args.blocks, tmp, src=args.compare_src)
                    row["compared"] = {k: v for k, v in c.items() if k != "along"}
                    print(
                        f"round {n + 1}, replay from {args.compare_src}: {c['blocks_per_s']:.1f} blocks/s, ratio"
                        f" {c['blocks_per_s'] / b['blocks_per_s']:.2f}; CPU a block: process {c['process_ms']:.2f}"
                        f" ms, node {c['node_ms']:.2f} ms; {c['matches']} matches; load {load_avg()}",
                        flush=True,
                    )
            if args.long_seconds:
                rate = result["rounds"][0]["replay"]["blocks_per_s"] if result["rounds"] else 50.0
                blocks = args.long_blocks or int(rate * args.long_seconds)
                long = replay(node, blocks, tmp, every=args.every)
                result["long"] = {"blocks": blocks, **long}
                print(
                    f"long replay: {blocks} blocks, {long['blocks_per_s']:.1f} blocks/s overall,"
                    f" {long['wall_s']:.0f} s; load {load_avg()}",
                    flush=True,
                )
    finally:
        node.close()
    result["load_after"] = load_avg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        stores = [json.loads(Path(p).read_text()) for p in args.store_json]
        plot(args.plot, result.get("long", {}).get("along", []), stores)


if __name__ == "__main__":
    main()
