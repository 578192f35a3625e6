"""Parallel replay: blocks per second with 1, 2 and 4 workers, against a node that is not the limit.

The node is bench/evm_synth.py in a process of its own: a generated chain whose answers are rendered to
bytes once, so that serving a block costs it a small fraction of what decoding, matching and committing
it costs the client. Each round runs, one after the other under the same load, the ad-hoc command a
user runs (`depositwatch replay --rpc-url ... --watch ... --workers N`) for every worker count and store:

- `temporary`: the ad-hoc replay's own temporary SQLite store;
- `postgres`: `--store` on the local PostgreSQL, a fresh schema each run;
- `independent`: no parallel replay at all, but N single-worker replays of the N parts of the range
  started at once, each with its own temporary store: what N processes can get from this machine at that
  moment, the ceiling to compare `temporary` with (on a shared machine the other work decides it);
- `tasks`: the same shards over a temporary SQLite store, but the N workers are tasks of one process
  (the library's `replay_shards.work`, N at once), to see whether processes are needed.

`--workers 1` is the single-worker replay (one process, no shards); N > 1 is N processes sharing the
run's shards. The rate is the range's blocks over the command's whole wall time (process start-up,
book import and output included, as a user waits for it); client CPU is every depositwatch process's,
node CPU the node process's, both per block. `uptime` is printed beside each round.

    python bench/replay_workers.py --blocks 3000 --txs 100 --rounds 3 \\
        --markdown out.md --plot docs/img/replay_workers.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

if __package__ in (None, ""):  # run as `python bench/replay_workers.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save_figure
from bench.evm_synth import SynthChain
from depositwatch.store.shards import cut

TASKS = "tasks"  # the store name of the in-process measurement
INDEPENDENT = "independent"  # the ceiling: N processes with nothing shared
LABELS = {
    "temporary": "replay --workers N (temporary SQLite store)",
    "postgres": "replay --workers N --store postgresql://...",
    "independent": "N single-worker replays of N parts, nothing shared",
    "tasks": "N workers as tasks of one process (SQLite)",
}
PG_URL = os.environ.get("DEPOSITWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Measure:
    store: str
    workers: int
    wall: float
    client_cpu: float
    node_cpu: float
    load: str
    lines: int


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_node(blocks: int, txs: int) -> tuple[subprocess.Popen[str], str]:
    """The synthetic node in its own process; its URL once it listens."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("evm_synth.py")), "--blocks", str(blocks), "--txs", str(txs)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"the synthetic node did not start: {url!r}")
    return proc, url


async def _schema(action: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"{action} SCHEMA {schema}{' CASCADE' if action == 'DROP' else ''}")
    finally:
        await conn.close()


async def in_process(url: str, watch: Path, blocks: int, tasks: int) -> int:
    """The run's shards replayed by `tasks` workers that are tasks of this one process (over one temporary
    SQLite store), the matches written in block order; returns how many."""
    import io
    from collections import Counter

    from depositwatch.addressbook import ChainDirectory, ChainInfo, read_book_csv
    from depositwatch.commands.trees import import_book
    from depositwatch.config import ChainConfig
    from depositwatch.replay_shards import default_shard_blocks, leadership_for, open_run, work, write_in_order
    from depositwatch.store import open_store

    chain = ChainConfig(
        name="eth", kind="evm", network="adhoc", chain_id=1337, rpc_urls=[url], confirmations=1, mempool=False
    )
    rows = read_book_csv(watch.read_text(), ChainDirectory({"eth": ChainInfo("evm", None)}))
    with tempfile.TemporaryDirectory() as tmp:
        store = await open_store(f"sqlite:///{tmp}/replay.db", migrate=True)
        try:
            await import_book(store, rows, dry_run=False)
            run = await open_run(store, chain, 1, blocks, shard_blocks=default_shard_blocks(blocks, tasks))
            leaderships = [leadership_for(store, 10.0) for _ in range(tasks)]
            await asyncio.gather(*(work(chain=chain, store=store, run=run, leadership=lead) for lead in leaderships))
            out = io.StringIO()
            await write_in_order(store, run, chain.chain_id, out, Counter())
            return out.getvalue().count("\n")
        finally:
            await store.close()


def run_once(url: str, watch: Path, blocks: int, workers: int, store: str, node: psutil.Process) -> Measure:
    argv = [sys.executable, "-m", "depositwatch", "--log-level", "warning", "replay", "--chain", "eth"]
    argv += ["--rpc-url", url, "--watch", str(watch), "--from", "1", "--to", str(blocks), "--workers", str(workers)]
    if store == TASKS:  # the same work by tasks of one process, this script run again as that process
        argv = [sys.executable, __file__, "--in-process", url, str(watch), str(blocks), str(workers)]
    schema = None
    if store == "postgres":
        schema = f"dw_bench_{uuid.uuid4().hex[:10]}"
        asyncio.run(_schema("CREATE", schema))
        argv += ["--store", f"{PG_URL}{'&' if '?' in PG_URL else '?'}search_path={schema}"]
    load = load_avg()
    node_before = sum(node.cpu_times()[:2])
    cpu_before = children_cpu()
    began = time.perf_counter()
    if store == INDEPENDENT:  # N single-worker replays of the N parts of the range at once, nothing shared
        head = argv[: argv.index("--from")]
        ranges = cut(1, blocks, -(-blocks // workers))
        parts = [[*head, "--from", str(a), "--to", str(b), "--workers", "1"] for a, b in ranges]
        procs = [subprocess.Popen(part, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for part in parts]
        answers = [proc.communicate() for proc in procs]
        code = max(proc.returncode for proc in procs)
        done = subprocess.CompletedProcess(argv, code, b"".join(a[0] for a in answers), b"".join(a[1] for a in answers))
    else:
        done = subprocess.run(argv, capture_output=True, check=False)
    wall = time.perf_counter() - began
    client = children_cpu() - cpu_before
    node_cpu = sum(node.cpu_times()[:2]) - node_before
    if schema is not None:
        asyncio.run(_schema("DROP", schema))
    if done.returncode != 0:
        raise SystemExit(f"replay --workers {workers} ({store}) failed: {done.stderr.decode()[-2000:]}")
    lines = int(done.stdout) if store == TASKS else done.stdout.count(b"\n")
    return Measure(store, workers, wall, client, node_cpu, load, lines)


def median(values: list[float]) -> float:
    return statistics.median(values)


def render(results: list[Measure], args: argparse.Namespace, uptimes: list[str]) -> str:
    out = [
        "## Parallel replay",
        "",
        f"`python bench/replay_workers.py --blocks {args.blocks} --txs {args.txs} --rounds {args.rounds}"
        f" --stores {','.join(args.stores)} --workers {','.join(map(str, args.workers))}`:"
        f" {args.blocks:,} generated blocks of {args.txs} ETH transfers, 20 watched addresses,"
        " served by bench/evm_synth.py (answers rendered once),"
        f" {os.cpu_count()} cores; medians of {args.rounds} rounds, every worker count and store once a round"
        " under the same load. Rate: the range over the command's whole wall time (start-up of the worker"
        " processes included).",
        "",
        "| store | workers | blocks/s (median) | min–max | vs 1 worker | client CPU ms/block | node CPU ms/block |",
        "|---|---|---|---|---|---|---|",
    ]
    for store in args.stores:
        base = median([args.blocks / m.wall for m in results if m.store == store and m.workers == args.workers[0]])
        for workers in args.workers:
            mine = [m for m in results if m.store == store and m.workers == workers]
            rates = [args.blocks / m.wall for m in mine]
            client = median([m.client_cpu for m in mine]) / args.blocks * 1000
            node = median([m.node_cpu for m in mine]) / args.blocks * 1000
            out.append(
                f"| {store} | {workers} | {median(rates):.0f} | {min(rates):.0f}–{max(rates):.0f}"
                f" | {median(rates) / base:.2f} | {client:.2f} | {node:.2f} |"
            )
    out += ["", "Load (`uptime`) at the start of each round:", ""]
    out += [f"- round {n}: {text}" for n, text in enumerate(uptimes, start=1)]
    return "\n".join(out) + "\n"


def plot(results: list[Measure], args: argparse.Namespace, path: str) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for store in args.stores:
        rates = [
            median([args.blocks / m.wall for m in results if m.store == store and m.workers == w]) for w in args.workers
        ]
        ax.plot(args.workers, rates, "o-", label=LABELS.get(store, store))
    ax.set_xticks(args.workers)
    ax.set_xlabel(f"workers N ({os.cpu_count()} cores)")
    ax.set_ylabel("blocks per second")
    ax.set_ylim(bottom=0)
    loads = [float(m.load.split()[0]) for m in results]
    ax.set_title(f"Replay of {args.blocks:,} blocks by N processes (load average {min(loads):.0f}-{max(loads):.0f})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=3000)
    parser.add_argument("--txs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--stores", default="temporary,independent,postgres,tasks")
    parser.add_argument("--markdown", help="write the docs/performance.md section here")
    parser.add_argument("--plot", help="write the plot of blocks/s against workers here (PNG)")
    parser.add_argument("--in-process", nargs=4, metavar=("URL", "WATCH", "BLOCKS", "TASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        from depositwatch.logging import setup_logging

        setup_logging("warning", "auto")
        url, watch, blocks, tasks = args.in_process
        print(asyncio.run(in_process(url, Path(watch), int(blocks), int(tasks))))
        return
    args.workers = [int(w) for w in args.workers.split(",")]
    args.stores = args.stores.split(",")
    chain = SynthChain(1, txs=1)  # only for its watch list (the node process generates the chain itself)
    node_proc, url = start_node(args.blocks, args.txs)
    results: list[Measure] = []
    uptimes: list[str] = []
    try:
        node = psutil.Process(node_proc.pid)
        with tempfile.TemporaryDirectory() as tmp:
            watch = Path(tmp) / "watch.csv"
            watch.write_text(chain.watch_csv())
            expected: dict[str, int] = {}
            for n in range(args.rounds):
                uptimes.append(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip())
                print(f"round {n + 1}: {uptimes[-1]}", flush=True)
                order = args.workers[n % len(args.workers) :] + args.workers[: n % len(args.workers)]
                for store in args.stores:
                    for workers in order:
                        m = run_once(url, watch, args.blocks, workers, store, node)
                        if expected.setdefault(store, m.lines) != m.lines:
                            raise SystemExit(f"{store}, {workers} workers: {m.lines} matches, not {expected[store]}")
                        results.append(m)
                        print(
                            f"  {store:9} workers={workers}: {args.blocks / m.wall:7.1f} blocks/s"
                            f" wall {m.wall:6.2f}s client CPU {m.client_cpu / args.blocks * 1000:5.2f} ms/block"
                            f" node CPU {m.node_cpu / args.blocks * 1000:5.2f} ms/block load {m.load}",
                            flush=True,
                        )
    finally:
        node_proc.kill()
        node_proc.wait()
    text = render(results, args, uptimes)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.plot:
        plot(results, args, args.plot)


if __name__ == "__main__":
    main()
