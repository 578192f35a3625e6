"""A million-block replay through a node: is the rate at block 1,000,000 the rate at block 1,000?

    python bench/replay_million.py --blocks 1000000 --every 10000 --json out.json --plot docs/img/replay_million.png
    python bench/replay_million.py --blocks 1000000 --store-url postgresql://127.0.0.1/depositwatch_bench
    python bench/replay_million.py --replot SQLITE.json --replot POSTGRES.json --plot docs/img/replay_million.png

The node is `bench/evm_synth.py --cycle 1000` in its own process: a generated chain of `--blocks` blocks of
`--txs` ETH transfers each, its 1,000 bodies rendered once and every block filled in with its own number,
hash, parent hash, time and transaction hashes, so every block is distinct, the chain links, and the
node costs little next to the client. `--watched` addresses of its population are watched (half of them
revoked before the first block), so every block brings a few deposits, payments to revoked addresses and
sweeps (about 4 a block with 100 watched of 2,000 and 40 transfers: 4,000,000 matches over a million
blocks), each stored and written out.

One `depositwatch replay --chain eth --rpc-url URL --watch FILE --from 1 --to BLOCKS -o FILE` (the ad-hoc
form, its temporary SQLite store; with `--store-url`, that store: a configured store, durable) runs over
the whole range, node and client sharing the machine's CPUs. Its progress is read from the matches it
writes, once a second; every `--every` blocks it prints the stretch's blocks/s and the CPU the replay
process and the node spent a block in it (from /proc, which the machine's other load does not move).
At the end: the first stretch against the last, the rate over the run, and the replay's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/replay_million.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save_figure
from bench.eth_real_bench import DEPOSITWATCH, PY, REPO, Stretches, _last_height, children_cpu, load_avg, proc_cpu
from bench.evm_synth import SynthChain


def start_node(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    node = subprocess.Popen(
        [PY, str(REPO / "bench" / "evm_synth.py"), "--blocks", str(args.blocks + 10), "--txs", str(args.txs),
         "--watched", str(args.watched), "--cycle", str(args.cycle)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert node.stdout is not None
    url = node.stdout.readline().strip()
    if not url.startswith("http://"):
        raise RuntimeError(f"the node did not start: {url!r}")
    return node, url


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    watch, out, err = tmp / "watch.csv", tmp / "matches.jsonl", tmp / "replay.err"
    watch.write_text(SynthChain(1, txs=1, watched=args.watched).watch_csv())
    node, url = start_node(args)
    command = [DEPOSITWATCH, "replay", "--chain", "eth", "--rpc-url", url, "--watch", str(watch)]
    command += ["--from", "1", "--to", str(args.blocks), "-o", str(out)]
    if args.store_url:
        subprocess.run([DEPOSITWATCH, "db", "migrate", "--store", args.store_url], check=True)
        command += ["--store", args.store_url, "--restart"]
    peak = 0.0
    try:
        cpu_before = children_cpu()
        stretches = Stretches(proc_cpu(node.pid))
        with err.open("w") as stderr:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            while proc.poll() is None:
                time.sleep(1.0)
                reached, now = _last_height(out), time.perf_counter()
                try:
                    peak = max(peak, peak_rss_mib(proc.pid))
                    if reached - stretches.block < args.every:
                        continue
                    spent, served = proc_cpu(proc.pid), proc_cpu(node.pid)
                except (FileNotFoundError, ProcessLookupError):
                    break  # it has just ended
                stretches.close(reached, now, spent, served)
            if proc.wait() != 0:
                raise RuntimeError(f"replay failed: {err.read_text()[-2000:]}")
        ended = time.perf_counter()
        wall = ended - stretches.began
        if args.blocks - stretches.block >= args.every // 2:  # the last stretch: the ended replay's CPU
            stretches.close(args.blocks, ended, children_cpu() - cpu_before, proc_cpu(node.pid))
    finally:
        node.terminate()
        node.wait(timeout=10)
    with out.open("rb") as lines:
        matches = sum(1 for _ in lines)
    return {
        "blocks": args.blocks,
        "wall_s": round(wall, 1),
        "matches": matches,
        "peak_rss_mib": round(peak, 1),
        "store": args.store_url or "sqlite (temporary)",
        "along": stretches.lines,
        "summary": err.read_text()[-600:],
    }


def report(result: dict[str, Any]) -> None:
    along = result["along"]
    first, last = along[0], along[-1]
    tail = along[len(along) // 2 :]
    print(
        f"{result['blocks']} blocks in {result['wall_s']} s ({result['blocks'] / result['wall_s']:.0f} blocks/s),"
        f" {result['matches']} matches, replay peak RSS {result['peak_rss_mib']} MiB; store {result['store']}"
    )
    print(
        f"first stretch (to block {first['block']}): {first['blocks_per_s']} blocks/s, replay CPU"
        f" {first['replay_cpu_ms']} ms a block, node {first['node_cpu_ms']}; last (to {last['block']}):"
        f" {last['blocks_per_s']} blocks/s, {last['replay_cpu_ms']} ms, node {last['node_cpu_ms']};"
        f" ratio of rates {last['blocks_per_s'] / first['blocks_per_s']:.2f},"
        f" of CPU a block {last['replay_cpu_ms'] / first['replay_cpu_ms']:.2f}"
    )
    for name, rows in (("first half", along[: len(along) // 2]), ("second half", tail)):
        print(
            f"{name}: median {statistics.median(r['blocks_per_s'] for r in rows):.0f} blocks/s,"
            f" replay CPU {statistics.median(r['replay_cpu_ms'] for r in rows):.3f} ms a block"
        )


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for n, result in enumerate(results):
        along, colour = result["along"], f"C{n}"
        store = "PostgreSQL" if result["store"].startswith("postgres") else "SQLite (temporary)"
        blocks = [r["block"] for r in along]
        ax.plot(blocks, [r["blocks_per_s"] for r in along], linewidth=1, color=colour,
                label=f"{store}: replay blocks/s")  # fmt: skip
        ax.plot(blocks, [1000 / r["replay_cpu_ms"] for r in along], linewidth=1, linestyle="--", color=colour,
                label=f"{store}: 1 / (replay CPU a block)")  # fmt: skip
    ax.set_xlabel("block")
    ax.set_ylabel("blocks per second")
    ax.set_ylim(bottom=0)
    ax.set_title(f"depositwatch replay along {results[0]['blocks']:,} blocks, node on the same CPUs")
    ax.legend(fontsize=8, loc="lower left")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--txs", type=int, default=40)
    parser.add_argument("--watched", type=int, default=100)
    parser.add_argument("--cycle", type=int, default=1000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--store-url", help="replay into this store (default: the ad-hoc temporary SQLite store)")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--plot", help="write the plot of the rate along the run here (PNG)")
    parser.add_argument(
        "--replot", metavar="JSON", action="append", help="no run: draw --plot from earlier runs' --json (repeatable)"
    )
    args = parser.parse_args()
    if args.replot:
        results = [json.loads(Path(p).read_text()) for p in args.replot]
        for result in results:
            report(result)
        if args.plot:
            plot(results, args.plot)
        return
    print(f"load before: {load_avg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="replay-million-") as folder:
        result = run(args, Path(folder))
    result["load_after"] = load_avg()
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    report(result)
    if args.plot:
        plot([result], args.plot)


if __name__ == "__main__":
    main()
