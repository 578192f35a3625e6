"""Ethereum replay: depositwatch against ethereum-etl and against the node's own limit, on one anvil chain.

    python bench/eth_bench.py                       # about five minutes once the chain is generated
    python bench/eth_bench.py --no-pin              # node and clients share every CPU
    python bench/eth_bench.py --rounds 3 --sweep-blocks 1000 --markdown out.md --plot docs/img/eth_batch.png

One anvil (`--load-state` of the chain `bench/eth_workload.py` generates and saves) serves every part:

1. The same block range, interleaved `--rounds` times (medians reported):
   - `depositwatch replay` (the real CLI, ad hoc form: `--rpc-url --watch FILE.csv --token ...`, its SQLite
     store in a temporary folder), stderr and the match lines to files;
   - ethereum-etl's CLI from its own virtualenv (`bench/out/etl-venv`, made here with a Python it supports):
     `export_blocks_and_transactions` then `export_token_transfers` for USDT and USDC, then a filter of
     their CSV output by the watched set (to a watched address, or from a revoked one);
   - `bench/minimal_client.py`: batched aiohttp + orjson, the same blocks (full transactions), block
     receipts and Transfer logs, parsed and counted only: what the node can serve;
   - depositwatch's `EvmSource.fetch` and the matcher in this process, without the store: the source's share.
   depositwatch's matches are checked against ethereum-etl's filtered transfers (transaction hash, log
   index or ETH, amount, sender, recipient, asset): they must be the same set.
2. Throughput against `batch_blocks` (1, 5, 20, 50, 100): the replay CLI with a config file, and the
   minimal client with the same batch size, over the first `--sweep-blocks` blocks; a plot with `--plot`.
3. Node-side log filtering (`EvmSource.set_log_filter`): the source's fetch and the matcher, the way the
   follower steps (`batch_blocks` at a time), without and with the filter, for the small watched set
   (node-side topic lists) and the full one (filtered in the client); the matches must be the same.

4. With `--filtered` (alone: parts 1-3 are skipped): the filtered replay (`chains/evm_filtered.py`) against
   the full scan, `--watched` addresses watched (20 by default: `watch-small.csv`), the replay CLI with a
   config file, `filter_max_keys = 0` (full scan) then the default (filtered), interleaved `--rounds` times;
   the two runs' output lines must be the same. `--watched-sizes 20,100,1000` adds one pair per size.

    python bench/eth_bench.py --filtered --rounds 3 --markdown out.md

anvil's CPU time is read from /proc for every run. By default (`--pin`) anvil runs on one CPU and every client on
the others, as with a node on its own machine: the minimal client then keeps the node busy all the time, and
its rate is the node's own limit. With `--no-pin` they share the CPUs and the rate follows the CPU a block costs
node and client together.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

if __package__ in (None, ""):  # run as `python bench/eth_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, markdown_table, save_figure
from bench.eth_workload import CHAIN, CHAIN_ID, OUT, Params, Workload, ensure

REPO = Path(__file__).resolve().parent.parent
PY = REPO / ".venv" / "bin" / "python"
DEPOSITWATCH = REPO / ".venv" / "bin" / "depositwatch"
ETL_VENV = REPO / "bench" / "out" / "etl-venv"
ETL = ETL_VENV / "bin" / "ethereumetl"
BATCHES = (1, 5, 20, 50, 100)
# The replay summary: its seconds have one decimal, its rate four or more digits: the work time comes from the rate.
SUMMARY = re.compile(r"(\d+) blocks, (\d+) transfers in [\d.]+s \(([\d.]+) blocks/s\)")


# --- helpers ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """One contender's run over a range."""

    name: str
    blocks: int
    seconds: float  # the work itself (without process start-up where the tool reports it)
    wall: float  # the whole command line(s), start-up included
    node_cpu: float  # anvil's CPU seconds during the run
    transfers: int = 0
    client_cpu: float = 0.0  # the command lines' CPU seconds (start-up included)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.blocks / self.seconds

    @property
    def wall_rate(self) -> float:
        return self.blocks / self.wall


def pin_cpus() -> tuple[set[int], set[int]]:
    """The node's CPU and the clients' CPU(s) for `--pin`: the first one allowed, and the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    return {cpus[0]}, set(cpus[1:])


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def node_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def process_cpu() -> float:
    """CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    """CPU seconds of the finished child processes so far (the commands run here)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(
    cmd: list[str], *, stdout: Path | None = None, stderr: Path | None = None, env: dict[str, str] | None = None
) -> float:
    """Run a command to completion; its wall time. Output goes to the files given (else discarded)."""
    began = time.perf_counter()
    with (
        Path(stdout or os.devnull).open("wb") as out,
        Path(stderr or os.devnull).open("wb") as err,
    ):
        done = subprocess.run(cmd, stdout=out, stderr=err, env=env, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        tail = Path(stderr).read_text(errors="replace")[-3000:] if stderr else ""
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} ... exited {done.returncode}\n{tail}")
    return wall


def version_of(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


# --- ethereum-etl in its own virtualenv ------------------------------------------------------------


def etl_python() -> str:
    """A Python ethereum-etl runs on: its pinned web3 5 needs parsimonious < 0.9, which fails on 3.11+.
    Each candidate is run once: a pyenv shim is on PATH even where its version is not selected."""
    pyenv = Path.home() / ".pyenv" / "versions"
    found = [shutil.which(name) for name in ("python3.10", "python3.9", "python3.8")]
    found += map(str, sorted(pyenv.glob("3.10.*/bin/python")) + sorted(pyenv.glob("3.9.*/bin/python")))
    for candidate in filter(None, found):
        if subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False).returncode == 0:
            return candidate
    return sys.executable  # 3.11+: patched below


def ensure_etl() -> str:
    """Install ethereum-etl into bench/out/etl-venv (never into the project's venv); its version."""
    if not ETL.exists():
        print("# installing ethereum-etl into bench/out/etl-venv", file=sys.stderr, flush=True)
        subprocess.run([etl_python(), "-m", "venv", str(ETL_VENV)], check=True)
        pip = [str(ETL_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "ethereum-etl"], check=True, stdout=subprocess.DEVNULL)
        check = subprocess.run([str(ETL), "--help"], capture_output=True, check=False)
        if check.returncode != 0 and b"getargspec" in check.stderr:
            # Python 3.11 removed inspect.getargspec, which parsimonious 0.8 (pinned through eth-abi 2) uses.
            subprocess.run([*pip, "--no-deps", "parsimonious==0.9.0", "regex"], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run(
        [str(ETL_VENV / "bin" / "python"), "-m", "pip", "show", "ethereum-etl"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    version = re.search(r"^Version: (.+)$", out, re.MULTILINE)
    web3 = subprocess.run(
        [str(ETL_VENV / "bin" / "python"), "-c", "import web3, sys; print(web3.__version__, sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    web3_version, python = [*web3, "?", "?"][:2]
    return f"{version.group(1) if version else '?'} (web3 {web3_version}, Python {python})"


# --- the watched set -------------------------------------------------------------------------------


def watched_sets(path: Path) -> tuple[set[str], set[str]]:
    """(every watched address, the revoked ones), lower-case hex."""
    watched, revoked = set(), set()
    with path.open() as handle:
        for row in csv.DictReader(handle):
            address = row["address"].lower()
            watched.add(address)
            if row["status"] == "revoked":
                revoked.add(address)
    return watched, revoked


Key = tuple[str, str, str, str, str, str]  # txid, log index or ETH, amount, from, to, asset contract or ETH


def depositwatch_transfers(path: Path) -> tuple[set[Key], dict[str, int]]:
    """The distinct transfers behind replay's JSON lines, and the count of matches by kind."""
    found: set[Key] = set()
    kinds: dict[str, int] = {}
    with path.open() as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("token_listed") is False:  # a token outside the compared list, to or from a revoked address
                kinds["unlisted token"] = kinds.get("unlisted token", 0) + 1
                continue
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
            index = "ETH" if row["index"] is None else str(row["index"])
            contract = row["asset_contract"].lower() if row["asset_contract"] else "ETH"
            found.add((row["txid"].lower(), index, row["amount"], row["from"].lower(), row["to"].lower(), contract))
    return found, kinds


def etl_transfers(folder: Path, watched: set[str], revoked: set[str], tokens: set[str]) -> set[Key]:
    """ethereum-etl's output filtered the way the product matches: to a watched address, or from a revoked one."""
    found: set[Key] = set()
    with (folder / "transactions.csv").open() as handle:
        for row in csv.DictReader(handle):
            to, frm = (row["to_address"] or "").lower(), row["from_address"].lower()
            if int(row["value"]) > 0 and to and (to in watched or frm in revoked):
                found.add((row["hash"].lower(), "ETH", row["value"], frm, to, "ETH"))
    with (folder / "token_transfers.csv").open() as handle:
        for row in csv.DictReader(handle):
            token = row["token_address"].lower()
            to, frm = row["to_address"].lower(), row["from_address"].lower()
            if token in tokens and (to in watched or frm in revoked):
                found.add((row["transaction_hash"].lower(), row["log_index"], row["value"], frm, to, token))
    return found


# --- the contenders --------------------------------------------------------------------------------


def minimal(url: str, pid: int, first: int, last: int, tokens: list[str], batch: int = 20) -> Run:
    cpu, client = node_cpu(pid), children_cpu()
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        wall = run(
            [
                str(PY),
                str(REPO / "bench" / "minimal_client.py"),
                "--rpc-url",
                url,
                "--from",
                str(first),
                "--to",
                str(last),
                *[a for t in tokens for a in ("--token", t)],
                "--batch",
                str(batch),
            ],
            stdout=Path(out.name),
        )
        result = json.loads(Path(out.name).read_text())
    return Run(
        "minimal client",
        result["blocks"],
        result["seconds"],
        wall,
        node_cpu(pid) - cpu,
        client_cpu=children_cpu() - client,
        extra=result,
    )


def depositwatch_adhoc(url: str, pid: int, w: Workload, first: int, last: int, tmp: Path, watch: Path) -> Run:
    out, err = tmp / "dw-matches.jsonl", tmp / "dw-stderr.log"
    out.unlink(missing_ok=True)
    cpu, client = node_cpu(pid), children_cpu()
    wall = run(
        [
            str(DEPOSITWATCH),
            "replay",
            "--chain",
            CHAIN,
            "--from",
            str(first),
            "--to",
            str(last),
            "--rpc-url",
            url,
            "--watch",
            str(watch),
            *w.token_args(),
            "--output",
            str(out),
        ],
        stderr=err,
    )
    return _replay_run("depositwatch replay", wall, node_cpu(pid) - cpu, children_cpu() - client, err, out)


def _replay_run(name: str, wall: float, cpu: float, client: float, err: Path, out: Path) -> Run:
    summary = SUMMARY.findall(err.read_text(errors="replace"))
    if not summary:
        raise SystemExit(f"no replay summary in {err}")
    blocks, transfers, rate = summary[-1]
    run_ = Run(name, int(blocks), int(blocks) / float(rate), wall, cpu, int(transfers), client)
    run_.extra["matches"] = str(out)
    return run_


def depositwatch_config(url: str, pid: int, w: Workload, first: int, last: int, tmp: Path, batch: int) -> Run:
    """The replay CLI with a config file (batch_blocks set), its SQLite store filled by `addresses import`."""
    folder = tmp / f"cfg-{batch}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    tokens = ", ".join(f'{{ symbol = "{s}", contract = "{w.tokens[s]}", decimals = 6 }}' for s in ("USDT", "USDC"))
    config = folder / "depositwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{folder}/state.db"\n[http]\nenabled = false\n'
        f'[[chains]]\nname = "{CHAIN}"\nkind = "evm"\nchain_id = {CHAIN_ID}\nrpc_urls = ["{url}"]\n'
        f"confirmations = 1\nmempool = false\nbatch_blocks = {batch}\ntokens = [{tokens}]\n"
    )
    run(
        [str(DEPOSITWATCH), "--config", str(config), "addresses", "import", str(w.watch_csv)],
        stderr=folder / "import.log",
    )
    out, err = folder / "matches.jsonl", folder / "stderr.log"
    cpu, client = node_cpu(pid), children_cpu()
    wall = run(
        [
            str(DEPOSITWATCH),
            "--config",
            str(config),
            "replay",
            "--chain",
            CHAIN,
            "--from",
            str(first),
            "--to",
            str(last),
            "--output",
            str(out),
        ],
        stderr=err,
    )
    name = f"depositwatch replay, batch_blocks {batch}"
    return _replay_run(name, wall, node_cpu(pid) - cpu, children_cpu() - client, err, out)


def ethereum_etl(url: str, pid: int, w: Workload, first: int, last: int, tmp: Path, watch: Path) -> Run:
    folder = tmp / "etl"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    cpu, client = node_cpu(pid), children_cpu()
    common = ["-s", str(first), "-e", str(last), "-p", url]
    wall_blocks = run(
        [
            str(ETL),
            "export_blocks_and_transactions",
            *common,
            "--blocks-output",
            str(folder / "blocks.csv"),
            "--transactions-output",
            str(folder / "transactions.csv"),
        ],
        stderr=folder / "blocks.log",
    )
    wall_logs = run(
        [
            str(ETL),
            "export_token_transfers",
            *common,
            "-t",
            w.tokens["USDT"],
            "-t",
            w.tokens["USDC"],
            "-o",
            str(folder / "token_transfers.csv"),
        ],
        stderr=folder / "transfers.log",
    )
    cpu, client = node_cpu(pid) - cpu, children_cpu() - client
    began = time.perf_counter()
    watched, revoked = watched_sets(watch)
    found = etl_transfers(folder, watched, revoked, {w.tokens["USDT"].lower(), w.tokens["USDC"].lower()})
    filtering = time.perf_counter() - began
    total = wall_blocks + wall_logs + filtering
    result = Run("ethereum-etl", last - first + 1, total, total, cpu, len(found), client + filtering)
    result.extra.update(blocks_s=wall_blocks, transfers_s=wall_logs, filter_s=filtering, found=found)
    return result


# --- part 4: the filtered replay against the full scan ----------------------------------------------


def watch_file(w: Workload, size: int, tmp: Path) -> Path:
    """An import CSV of `size` watched addresses: the workload's small set for its size, else the first tenth
    of the revoked (the sweepers first) and the rest active, from the full watched set."""
    if size == w.params.small:
        return w.small_csv
    rows = w.watch_csv.read_text().splitlines()
    header, body = rows[0], rows[1:]
    revoked = [r for r in body if ",revoked," in r][: max(1, size // 10)]
    active = [r for r in body if ",active," in r][: size - len(revoked)]
    path = tmp / f"watch-{size}.csv"
    path.write_text("\n".join([header, *revoked, *active]) + "\n")
    return path


def replay_config(
    url: str, pid: int, w: Workload, first: int, last: int, folder: Path, watch: Path, limit: int | None
) -> Run:
    """The replay CLI with a config file and `watch` imported; `filter_max_keys = limit` (None: the default)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tokens = ", ".join(f'{{ symbol = "{s}", contract = "{w.tokens[s]}", decimals = 6 }}' for s in ("USDT", "USDC"))
    setting = "" if limit is None else f"filter_max_keys = {limit}\n"
    config = folder / "depositwatch.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{folder}/state.db"\n[http]\nenabled = false\n'
        f'[[chains]]\nname = "{CHAIN}"\nkind = "evm"\nchain_id = {CHAIN_ID}\nrpc_urls = ["{url}"]\n'
        f"confirmations = 1\nmempool = false\n{setting}tokens = [{tokens}]\n"
    )
    run([str(DEPOSITWATCH), "--config", str(config), "addresses", "import", str(watch)], stderr=folder / "import.log")
    out, err = folder / "matches.jsonl", folder / "stderr.log"
    cpu, client = node_cpu(pid), children_cpu()
    cmd = [str(DEPOSITWATCH), "--config", str(config), "replay", "--chain", CHAIN, "--from", str(first)]
    wall = run([*cmd, "--to", str(last), "--output", str(out)], stderr=err)
    name = "full scan" if limit == 0 else "filtered"
    result = _replay_run(name, wall, node_cpu(pid) - cpu, children_cpu() - client, err, out)
    summary = [line for line in err.read_text(errors="replace").splitlines() if SUMMARY.search(line)]
    result.extra["path"] = summary[-1].rsplit("; ", 1)[-1] if summary else "?"
    result.extra["lines"] = sorted(out.read_text().splitlines())
    return result


def filtered_pairs(
    url: str, pid: int, w: Workload, first: int, last: int, tmp: Path, sizes: list[int], rounds: int
) -> list[dict[str, Any]]:
    """Per watched-set size: `rounds` interleaved pairs (full scan, filtered); medians and per-round ratios."""
    rows = []
    for size in sizes:
        watch = watch_file(w, size, tmp)
        pairs = []
        for n in range(1, rounds + 1):
            load = load_avg()
            full = replay_config(url, pid, w, first, last, tmp / "full", watch, 0)
            show(n, full)
            filtered = replay_config(url, pid, w, first, last, tmp / "filtered", watch, max(1000, size))
            show(n, filtered)
            pairs.append((full, filtered, load))
        same = all(f.extra["lines"] == pairs[0][0].extra["lines"] for pair in pairs for f in pair[:2])
        ratios = [b.rate / a.rate for a, b, _ in pairs]
        full = median_run([a for a, _, _ in pairs])
        filtered = median_run([b for _, b, _ in pairs])
        blocks = last - first + 1
        rows.append(
            {
                "watched": size,
                "blocks": blocks,
                "full_rate": full.rate,
                "filtered_rate": filtered.rate,
                "ratio": statistics.median(ratios),
                "ratios": ratios,
                "loads": [load for _, _, load in pairs],
                "full_node_ms": 1000 * full.node_cpu / blocks,
                "filtered_node_ms": 1000 * filtered.node_cpu / blocks,
                "full_client_ms": 1000 * full.client_cpu / blocks,
                "filtered_client_ms": 1000 * filtered.client_cpu / blocks,
                "full_path": full.extra["path"],
                "filtered_path": filtered.extra["path"],
                "matches": len(pairs[0][0].extra["lines"]),
                "same": same,
            }
        )
        print(f"# filtered {size} watched: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return rows


def filtered_section(r: dict[str, Any]) -> str:
    w = r["workload"]
    table = markdown_table(
        [
            "watched",
            "full scan blocks/s",
            "filtered blocks/s",
            "ratio (median)",
            "ratio by round",
            "node CPU ms/block",
            "client CPU ms/block",
            "matches",
            "same output",
        ],
        [
            [
                f"{row['watched']:,}",
                f"{row['full_rate']:.1f}",
                f"{row['filtered_rate']:.1f}",
                f"×{row['ratio']:.1f}",
                ", ".join(f"{x:.1f}" for x in row["ratios"]),
                f"{row['full_node_ms']:.2f} → {row['filtered_node_ms']:.2f}",
                f"{row['full_client_ms']:.2f} → {row['filtered_client_ms']:.2f}",
                f"{row['matches']:,}",
                "yes" if row["same"] else "NO",
            ]
            for row in r["rows"]
        ],
    )
    paths = "; ".join(f'{row["watched"]:,} watched: "{row["filtered_path"]}"' for row in r["rows"])
    return "\n".join(
        [
            "## Filtered replay",
            "",
            f"`{r['command']}` ({r['minutes']:.1f} minutes)",
            "",
            f"Machine: {r['machine']}; `uptime` load average {r['load_before']} before, {r['load_after']} after "
            f"(1/5/15 min; per round: {'; '.join(', '.join(row['loads']) for row in r['rows'])}). anvil {r['anvil']}. "
            + (
                "With `--pin`: anvil on one CPU, the replay on the other."
                if r["pinned"]
                else "Node and replay share both CPUs."
            ),
            "",
            f"Blocks {w['first']:,}-{w['last']:,} of the generated anvil chain of the Ethereum replay section "
            f"({r['rows'][0]['blocks']:,} blocks, {w['txs']:,} transactions). The replay CLI with a config file "
            "(SQLite store, `batch_blocks` not set: 20, which the filtered path raises to 300 a step), "
            "the watched set imported; `filter_max_keys = 0` reads every block "
            "in full (the full scan), the default takes the filtered path. Each round runs both, back to back "
            f"({r['rounds']} rounds); the ratio is filtered over full-scan blocks/s within a round. CPU is per block, "
            "start-up and address import included for the client.",
            "",
            table,
            "",
            f'Paths the runs reported: {paths}; full scan: "{r["rows"][0]["full_path"]}".',
            "",
        ]
    )


def main_filtered(args: argparse.Namespace, command: str) -> None:
    began = time.perf_counter()
    load_before = load_avg()
    w = ensure(Params(blocks=args.blocks), args.workload)
    first, last = w.first, w.last
    anvil = version_of([str(w.node().command()[0]), "--version"]).replace("anvil Version: ", "")
    sizes = [int(x) for x in args.watched_sizes.split(",")] if args.watched_sizes else [args.watched]
    loop = asyncio.new_event_loop()
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        args.pin = False
    if args.pin:
        node_cpus, client_cpus = pin_cpus()
        os.sched_setaffinity(0, node_cpus)
    node = loop.run_until_complete(_serve(w))
    if args.pin:
        os.sched_setaffinity(0, client_cpus)
    try:
        assert node.pid is not None
        with tempfile.TemporaryDirectory(prefix="eth-filtered-") as scratch:
            rows = filtered_pairs(node.http_url, node.pid, w, first, last, Path(scratch), sizes, args.rounds)
    finally:
        loop.run_until_complete(node.stop())
        loop.close()
    result = {
        "command": command,
        "machine": machine_line(),
        "load_before": load_before,
        "load_after": load_avg(),
        "anvil": anvil,
        "pinned": args.pin,
        "rounds": args.rounds,
        "workload": {**asdict(w.params), "first": first, "last": last, "txs": w.txs, "transfers": w.transfers},
        "rows": rows,
        "minutes": (time.perf_counter() - began) / 60,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = filtered_section(result)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if not all(row["same"] for row in rows):
        raise SystemExit("the filtered and full-scan replays' outputs differ")


# --- part 3: node-side log filtering ---------------------------------------------------------------


async def source_pass(
    url: str, pid: int, w: Workload, first: int, last: int, watch: Path, use_filter: bool
) -> dict[str, Any]:
    """EvmSource.fetch + match_block, `batch_blocks` at a time as the follower steps, one pass."""
    import structlog

    from depositwatch.addressbook import ChainDirectory, ChainInfo, read_import_csv
    from depositwatch.chains.evm import EvmSource
    from depositwatch.chains.evm_decode import _checksum
    from depositwatch.config import ChainConfig, TokenConfig
    from depositwatch.matcher import match_block
    from depositwatch.registry import ChainBook

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    entries = read_import_csv(watch.read_text(), ChainDirectory({CHAIN: ChainInfo("evm", None)}))
    book = ChainBook()
    for _, entry in entries:
        book.add(entry.key, entry.status, entry.revoked_at)
    config = ChainConfig(
        name=CHAIN,
        kind="evm",
        chain_id=CHAIN_ID,
        rpc_urls=[url],
        confirmations=1,
        mempool=False,
        tokens=[TokenConfig(symbol=s, contract=w.tokens[s], decimals=6) for s in ("USDT", "USDC")],
        filter_max_keys=0,  # the full scan with its log filter; part 4 measures the filtered path
    )
    _checksum.cache_clear()  # every pass pays for the addresses it encodes, as a fresh process would
    source = EvmSource(config)
    await source.open()
    try:
        if use_filter:
            source.set_log_filter(list(book.active) + list(book.revoked))
        matches = set()
        transfers = 0
        cpu, own = node_cpu(pid), process_cpu()
        began = time.perf_counter()
        for low in range(first, last + 1, config.batch_blocks):
            for block in await source.fetch(low, min(low + config.batch_blocks, last + 1)):
                transfers += len(block.transfers)
                for m in match_block(CHAIN, block, book):
                    matches.add((str(m.kind), m.transfer.txid, m.transfer.index, m.key.hex()))
        seconds = time.perf_counter() - began
        return {
            "seconds": seconds,
            "rate": (last - first + 1) / seconds,
            "node_cpu": node_cpu(pid) - cpu,
            "client_cpu": process_cpu() - own,
            "transfers": transfers,
            "matches": matches,
            "node_side": bool(use_filter and source._watch is not None and source._watch.topics is not None),
        }
    finally:
        await source.close()


def filter_gain(url: str, pid: int, w: Workload, first: int, last: int, rounds: int) -> list[dict[str, Any]]:
    rows = []
    for label, watch in ((f"{w.params.small} watched", w.small_csv), (f"{w.params.watched:,} watched", w.watch_csv)):
        passes: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for _ in range(rounds):
            for use in (False, True):
                passes[use].append(asyncio.run(source_pass(url, pid, w, first, last, watch, use)))
        plain, filtered = (sorted(passes[u], key=lambda p: p["seconds"])[len(passes[u]) // 2] for u in (False, True))
        same = all(p["matches"] == passes[False][0]["matches"] for p in passes[False] + passes[True])
        rows.append(
            {
                "label": label,
                "blocks": last - first + 1,
                "plain_rate": plain["rate"],
                "filtered_rate": filtered["rate"],
                "plain_node_ms": 1000 * plain["node_cpu"] / (last - first + 1),
                "filtered_node_ms": 1000 * filtered["node_cpu"] / (last - first + 1),
                "plain_client_ms": 1000 * plain["client_cpu"] / (last - first + 1),
                "filtered_client_ms": 1000 * filtered["client_cpu"] / (last - first + 1),
                "gain": filtered["rate"] / plain["rate"],
                "matches": len(plain["matches"]),
                "same": same,
                "node_side": filtered["node_side"],
            }
        )
        print(f"# filter {label}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return rows


# --- report ----------------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def plot_batches(sweep: list[dict[str, Any]], path: str) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sizes = [row["batch"] for row in sweep]
    ax.plot(sizes, [row["dw_rate"] for row in sweep], "o-", label="depositwatch replay (CLI, SQLite store)")
    ax.plot(sizes, [row["min_rate"] for row in sweep], "s--", label="minimal batched client (fetch only)")
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel("batch_blocks (blocks per JSON-RPC batch and per follower step)")
    ax.set_ylabel("blocks per second")
    ax.set_ylim(bottom=0)
    ax.set_title("Ethereum replay from anvil: throughput against batch size")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def per_block(seconds: float, blocks: int) -> str:
    return f"{1000 * seconds / blocks:.1f}"


def section(r: dict[str, Any]) -> str:
    w = r["workload"]
    dw, etl, mini, src = r["depositwatch"], r["etl"], r["minimal"], r["source"]
    n = dw["blocks"]
    rounds = ", ".join(f"{x:.2f}" for x in r["ratios_min"])

    def row(what: str, m: dict[str, Any], *, wall: bool = True) -> list[str]:
        """One contender's row: rates over its work seconds, CPU per block (no wall time for the in-process one)."""
        return [
            what,
            f"{m['rate']:.1f}",
            f"{w['transfers'] / m['seconds']:,.0f}",
            f"{m['seconds']:.1f}",
            f"{m['wall']:.1f}" if wall else "",
            per_block(m["node_cpu"], n),
            per_block(m["client_cpu"], n),
        ]

    lines = [
        "## Ethereum replay",
        "",
        f"`{r['command']}` ({r['minutes']:.1f} minutes; the chain is generated once by `bench/eth_workload.py`, "
        "about five minutes, and served again through anvil's `--load-state`)",
        "",
        f"Machine: {r['machine']}; load average {r['load_before']} before, {r['load_after']} after (1/5/15 min). "
        f"anvil {r['anvil']}, ethereum-etl {r['etl_version']}. "
        + (
            "With `--pin`: anvil on one CPU, every client on the other, as with a node on its own machine."
            if r.get("pinned")
            else "Node and clients share both CPUs."
        ),
        "",
        f"**Workload:** blocks {w['first']:,}-{w['last']:,} of a generated anvil chain ({n:,} blocks, "
        f"{w['txs']:,} transactions, {w['transfers']:,} ETH, USDT and USDC transfers; each block holds 10 ETH sends, "
        "one `transferMany` of USDT and one of USDC to 8 recipients each, one of an unfollowed token, 2 sweeps "
        "from revoked addresses, and every 50th block a reverted USDT transfer). Recipients are drawn from "
        f"{w['population']:,} addresses; {w['watched']:,} of them are watched ({w['revoked']} revoked). Medians of "
        f"{r['rounds']} interleaved rounds. CPU figures are per block: the node's (anvil) and the client's own "
        "(the command lines, start-up included; in-process for the source row).",
        "",
        markdown_table(
            ["what", "blocks/s", "transfers/s", "work s", "wall s", "node CPU ms/block", "client CPU ms/block"],
            [
                row("depositwatch replay (CLI, ad hoc, SQLite store)", dw),
                row("ethereum-etl: blocks and transactions, token transfers, filter", etl),
                row("minimal client: blocks, receipts, logs, parsed only", mini),
                row("depositwatch's EvmSource.fetch (filter set) + matcher, no store", src, wall=False),
            ],
        ),
        "",
        '"work s" leaves out process start-up where the tool times itself (depositwatch\'s replay summary, the '
        "minimal client's timer); ethereum-etl's is the wall time of its two commands plus the filter. Rates are "
        f"blocks over work seconds, and transfers/s counts all {w['transfers']:,} ETH, USDT and USDC transfers of the "
        "range over work seconds for every row. Replay gives its source the book's keys (`set_log_filter`, "
        f"{w['watched']:,} keys: filtered in the client), and so does the source row.",
        "",
        f"- **depositwatch / ethereum-etl: {r['ratio_etl']:.2f}** (wall clock, start-up included on both sides; "
        f"rounds {', '.join(f'{x:.2f}' for x in r['ratios_etl'])}). ethereum-etl's blocks export took "
        f"{etl['extra']['blocks_s']:.1f} s, its token transfers {etl['extra']['transfers_s']:.1f} s, the filter "
        f"{etl['extra']['filter_s']:.2f} s.",
        f"- **depositwatch / minimal client: {r['ratio_min']:.2f}** (rounds {rounds}); target 0.9: "
        + ("**met**." if r["ratio_min"] >= 0.9 else "**not met**; the cause is below."),
        f"- **Same findings:** {r['compare']}",
        "",
    ]
    lines += r["explain"]
    sweep_rows = [
        [str(x["batch"]), f"{x['dw_rate']:.1f}", f"{x['min_rate']:.1f}", f"{x['dw_rate'] / x['min_rate']:.2f}"]
        for x in r["sweep"]
    ]
    lines += [
        "",
        f"**Throughput against batch size** (blocks {w['first']:,}-{w['first'] + r['sweep_blocks'] - 1:,}; the replay "
        "CLI with a config file setting `batch_blocks`, and the minimal client with the same batch, 4 requests in "
        f"flight; best of {r['sweep_repeat']} runs each, to keep out the other work on the machine):",
        "",
        markdown_table(["batch_blocks", "depositwatch blocks/s", "minimal client blocks/s", "ratio"], sweep_rows),
        "",
        "![throughput against batch size](img/eth_batch.png)",
        "",
        r["sweep_explain"],
        "",
        "**Node-side log filtering** (`EvmSource.set_log_filter(keys)`): `EvmSource.fetch` and the matcher over the "
        f"{n:,} blocks, {r['filter_batch']} blocks a step as the follower takes them, without and with the filter "
        f"(medians of {r['filter_rounds']} interleaved passes each; each pass starts with an empty address-encoding "
        "cache, as a new process would); the matches of every pass are compared.",
        "",
        markdown_table(
            [
                "watched set",
                "filtering",
                "blocks/s without",
                "blocks/s with",
                "gain",
                "gain in CPU",
                "node CPU ms/block",
                "client CPU ms/block",
                "same matches",
            ],
            [
                [
                    f["label"],
                    "topic OR-lists on the node" if f["node_side"] else "in the client",
                    f"{f['plain_rate']:.1f}",
                    f"{f['filtered_rate']:.1f}",
                    f"×{f['gain']:.2f}",
                    f"×{cpu_gain(f, bool(r.get('pinned'))):.2f}",
                    f"{f['plain_node_ms']:.1f} → {f['filtered_node_ms']:.1f}",
                    f"{f['plain_client_ms']:.1f} → {f['filtered_client_ms']:.1f}",
                    "yes" if f["same"] else "NO",
                ]
                for f in r["filter"]
            ],
            align="llrrrrrrl",
        ),
        "",
    ]
    lines += r["filter_explain"]
    return "\n".join(lines) + "\n"


def explain(r: dict[str, Any]) -> list[str]:
    """What the main figures say, from the measured numbers."""
    dw, etl, mini, src = r["depositwatch"], r["etl"], r["minimal"], r["source"]
    n = dw["blocks"]
    node = 1000 * mini["node_cpu"] / n
    dw_node = 1000 * dw["node_cpu"] / n
    cli = 1000 * dw["client_cpu"] / n
    source = 1000 * src["client_cpu"] / n
    start = dw["wall"] - dw["seconds"]  # start-up and address import, CPU-bound: about its wall time in CPU
    cli_work = 1000 * max(dw["client_cpu"] - start, 0.0) / n
    busy_min, busy_dw, busy_src = (x["node_cpu"] / x["seconds"] for x in (mini, dw, src))
    src_ratio = src["rate"] / mini["rate"]
    out = [
        "What the figures say:",
        "",
        f"- Every contender but ethereum-etl asks the node for about the same work (blocks with their transactions, "
        f"block receipts, Transfer logs): anvil spends {node:.1f} ms of CPU a block serving the minimal client, "
        f"{dw_node:.1f} ms serving replay. ethereum-etl asks "
        f"for no receipts ({1000 * etl['node_cpu'] / n:.1f} ms), so it cannot tell a failed ETH transfer from a "
        "good one; its web3 5 client turns every block into Python objects in worker threads, "
        f"{1000 * etl['client_cpu'] / n:.1f} ms of client CPU a block.",
    ]
    if r.get("pinned"):
        out.append(
            "- **The node's own limit.** With `--pin` anvil has a CPU to itself and every client runs on the other "
            "one, as with a node on its own machine. Serving the minimal client anvil was busy "
            f"{busy_min:.0%} of the time, so that client's rate is what the node can serve."
        )
        verdict = (
            f"**depositwatch / minimal client {r['ratio_min']:.2f}: within 10 % of the node's limit, target met.**"
            if r["ratio_min"] >= 0.9
            else f"**depositwatch / minimal client {r['ratio_min']:.2f}: not within 10 % of the node's limit.**"
        )
        out.append(
            f"- {verdict} The replay CLI needs about {cli_work:.1f} ms of its own CPU a block (validating every "
            "answer, decoding every transaction and log, matching, the SQLite commit with its cursor; "
            f"{cli:.1f} ms with its {start:.1f} s of start-up and address import), "
            + ("less than" if cli_work < dw_node else "more than")
            + f" the {dw_node:.1f} ms the node spends a block, and it reads `read_ahead` ranges ahead while it "
            f"matches and commits. The node was busy {busy_dw:.0%} of the replay's time against {busy_min:.0%} of "
            "the minimal client's: what is left of the gap is the node waiting between a range's answer and the "
            "next request. The source and matcher alone (no store) keep it "
            f"{busy_src:.0%} busy and reach {src_ratio:.2f} of the minimal client."
        )
        return out
    if r["ratio_min"] < 0.9:
        mini_cpu = 1000 * mini["client_cpu"] / n
        bound = (node + mini_cpu) / (dw_node + cli)
        cores = max(x["node_cpu"] / x["seconds"] for x in r["runs"]["minimal"])
        out.append(
            "- **Why depositwatch is not within 10 % of the minimal client in this run: CPU.** Without `--pin` anvil "
            f"answers on several threads (serving the minimal client it used up to {cores:.1f} cores' worth) and the "
            "client runs on the same two cores: the machine's CPU is the limit, so the rate follows the CPU a block "
            f"costs in all: {node:.1f} + {mini_cpu:.1f} ms for the minimal client (it parses and counts), "
            f"{dw_node:.1f} + {cli:.1f} ms for the replay CLI. That alone predicts a ratio of {bound:.2f}, against "
            f"{r['ratio_min']:.2f} measured. The minimal client's rate is then not the node's own limit: "
            "`--pin` gives the node a CPU of its own, as on its own machine, and measures that."
        )
        out.append(
            f"- Where the CLI's {cli:.1f} ms go: the source (fetch, validation of every answer, decoding every "
            "transaction and log, transfers and EIP-55 addresses for the watched ones) and the matcher take "
            f"{source:.1f} ms (the source row). The other {cli - source:.1f} ms are process start-up with the "
            f"address import ({start:.1f} s of wall time before the replay starts), the follower's step and the "
            "SQLite commit of each batch (one statement per table)."
        )
    else:
        out.append(
            "- depositwatch stays within 10 % of the minimal client although it validates every answer, decodes "
            "every transaction and log, matches and commits every block to SQLite with its cursor."
        )
    return out


def sweep_explain(sweep: list[dict[str, Any]]) -> str:
    best = max(sweep, key=lambda x: x["dw_rate"])
    one = next(x for x in sweep if x["batch"] == 1)
    default = next(x for x in sweep if x["batch"] == 20)
    wide = [x["dw_rate"] for x in sweep if x["batch"] >= 20]
    flat = max(wide) <= 1.15 * min(wide)
    return (
        f"With one block a step replay manages {one['dw_rate']:.0f} blocks/s: every step pays its own tip check, "
        "`eth_blockNumber`, `eth_getLogs` and SQLite transaction. The best rate here is "
        f"{best['dw_rate']:.0f} blocks/s at {best['batch']} blocks a step; the default `batch_blocks` of 20 gives "
        f"{default['dw_rate']:.0f} ({default['dw_rate'] / best['dw_rate']:.0%} of it)."
        + (
            " From 20 blocks a step on, the rates are within 15 % of each other: the per-step costs are spread "
            "thin and the per-block client CPU is what is left."
            if flat
            else ""
        )
    )


def cpu_gain(row: dict[str, Any], pinned: bool) -> float:
    """The gain the CPU figures predict where CPU is the limit: with the node and the client on CPUs of their own
    (`--pin`) the busier of the two sets the pace; sharing the CPUs, their sum does."""
    if pinned:
        plain = max(row["plain_node_ms"], row["plain_client_ms"])
        return plain / max(row["filtered_node_ms"], row["filtered_client_ms"])
    return (row["plain_node_ms"] + row["plain_client_ms"]) / (row["filtered_node_ms"] + row["filtered_client_ms"])


def filter_explain(rows: list[dict[str, Any]], pinned: bool) -> list[str]:
    small, large = rows[0], rows[-1]
    limit = (
        "where the node's CPU is the limit, as it is here with a CPU to itself (the client's is the smaller cost)"
        if pinned
        else "where CPU is the limit, as it is here with the node and the client on the same two CPUs"
    )
    return [
        f"With {small['label']} addresses the source sends two `eth_getLogs` a range (Transfer from a key, and "
        "Transfer to a key, the keys as topic OR-lists), asks for receipts only for blocks where a key sends or "
        "receives, and builds transfers only for the keys: node CPU "
        f"{small['plain_node_ms']:.1f} → {small['filtered_node_ms']:.1f} ms a block and client CPU "
        f"{small['plain_client_ms']:.1f} → {small['filtered_client_ms']:.1f} ms, so ×{cpu_gain(small, pinned):.2f} "
        f"the throughput {limit}; measured: ×{small['gain']:.2f} (fewer and smaller answers also leave the node "
        "less time waiting for the client). The blocks themselves (every transaction, for ETH) must still be "
        "fetched and are most of the node's work, which bounds the gain. "
        f"With {large['label']} addresses (more than `LOG_FILTER_MAX_KEYS` = 100) the logs are filtered in the "
        "client; almost every block of this workload pays a watched address, so receipts are still needed nearly "
        f"everywhere, and the gain (×{cpu_gain(large, pinned):.2f} in CPU, ×{large['gain']:.2f} measured) comes "
        "from the client: no transfer objects or address encodings for the unwatched, so less time in which the "
        "node waits for it. Replay sets the filter from its "
        "book, every size; the live follower sets it for books of at most `LOG_FILTER_MAX_KEYS` keys (now the "
        "larger of that and `filter_max_keys`, 1,000 by default), and again before each reloaded book is used.",
    ]


async def _serve(w: Workload) -> Any:
    node = w.node()
    await node.start()
    return node


def compare_text(dw_found: set[Key], kinds: dict[str, int], etl_found: set[Key]) -> str:
    if etl_found == dw_found:
        unlisted = kinds.get("unlisted token", 0)
        compared = {k: v for k, v in kinds.items() if k != "unlisted token"}
        found = ", ".join(f"{v:,} {k}" for k, v in sorted(compared.items()))
        extra = (
            f" Beside them, {unlisted:,} matches of the unfollowed token to or from revoked addresses "
            "(`token_listed` false), which ethereum-etl's two-token export does not hold."
            if unlisted
            else ""
        )
        return (
            f"identical: depositwatch's {sum(compared.values()):,} matches ({found}) are {len(dw_found):,} distinct "
            f"transfers, exactly the {len(etl_found):,} transfers of ethereum-etl's filtered output (transaction "
            "hash, log index or ETH, amount, sender, recipient, asset)." + extra
        )
    return (
        f"DIFFERENT: {len(dw_found - etl_found)} transfers only in depositwatch's output, "
        f"{len(etl_found - dw_found)} only in ethereum-etl's; e.g. "
        f"{sorted(dw_found - etl_found)[:2]} / {sorted(etl_found - dw_found)[:2]}"
    )


def show(n: int, run_: Run) -> None:
    print(
        f"# round {n} {run_.name}: {run_.rate:.1f} blocks/s ({run_.seconds:.1f} s work, {run_.wall:.1f} s wall, "
        f"client {run_.client_cpu:.1f} s CPU, node {run_.node_cpu:.1f} s CPU) load {load_avg()}",
        file=sys.stderr,
        flush=True,
    )


def best_rate(runs: list[Run]) -> float:
    return max(r.rate for r in runs)


def render(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the figures, draw the plot, write the section."""
    dw, etl, mini = result["depositwatch"], result["etl"], result["minimal"]
    print(f"comparison: {result['compare']}")
    transfers = result["workload"]["transfers"]
    print(f"depositwatch replay: {dw['rate']:.1f} blocks/s, {transfers / dw['seconds']:,.0f} transfers/s")
    print(f"ethereum-etl: {etl['rate']:.1f} blocks/s (wall {etl['wall']:.1f} s)")
    print(f"minimal client: {mini['rate']:.1f} blocks/s")
    print(f"source + matcher, no store: {result['source']['rate']:.1f} blocks/s")
    print(
        f"depositwatch/ethereum-etl = {result['ratio_etl']:.2f} "
        f"(rounds: {', '.join(f'{x:.2f}' for x in result['ratios_etl'])}); "
        f"depositwatch/minimal client = {result['ratio_min']:.2f} "
        f"(rounds: {', '.join(f'{x:.2f}' for x in result['ratios_min'])})"
    )
    if args.plot:
        plot_batches(result["sweep"], args.plot)
        print(f"plot: {args.plot}")
    text = section(result)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=Params.blocks, help="blocks of the generated chain")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the contenders")
    parser.add_argument("--sweep-blocks", type=int, default=1000, help="blocks for the batch-size sweep")
    parser.add_argument("--sweep-repeat", type=int, default=2, help="runs per batch size (the best is kept)")
    parser.add_argument("--filter-rounds", type=int, default=2)
    parser.add_argument("--plot", default=str(REPO / "docs" / "img" / "eth_batch.png"))
    parser.add_argument("--markdown", help="write the `## Ethereum replay` section to this file")
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "eth_bench.json"))
    parser.add_argument("--workload", type=Path, default=OUT, help="where the generated chain is kept")
    parser.add_argument("--report", type=Path, help="only print the report of a saved --json result")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the node on one CPU and every client on the others, as with a node on its own machine, so that "
        "the minimal client's rate is the node's own limit (the default where there are two CPUs or more); "
        "--no-pin lets them share every CPU",
    )
    parser.add_argument("--filtered", action="store_true", help="only the filtered replay against the full scan")
    parser.add_argument("--watched", type=int, default=Params.small, help="--filtered: addresses watched")
    parser.add_argument("--watched-sizes", help="--filtered: several sizes, comma-separated (e.g. 20,100,1000)")
    args = parser.parse_args()
    if args.filtered:
        shown = [a for a in sys.argv[1:] if a not in (args.markdown, "--markdown")]
        if args.json == parser.get_default("json"):
            args.json = str(REPO / "bench" / "out" / "eth_filtered.json")
        main_filtered(args, " ".join(["python bench/eth_bench.py", *shown]))
        return
    if args.report:
        result = json.loads(args.report.read_text())
        result["explain"] = explain(result)
        result["filter_explain"] = filter_explain(result["filter"], bool(result.get("pinned")))
        result["sweep_explain"] = sweep_explain(result["sweep"])
        render(result, args)
        return
    shown = [a for a in sys.argv[1:] if a not in (args.markdown, "--markdown") and not a.startswith("--markdown=")]
    command = " ".join(["python bench/eth_bench.py", *shown])
    began = time.perf_counter()
    load_before = load_avg()
    etl_version = ensure_etl()
    w = ensure(Params(blocks=args.blocks), args.workload)
    first, last = w.first, w.last
    anvil = version_of([str(w.node().command()[0]), "--version"]).replace("anvil Version: ", "")
    loop = asyncio.new_event_loop()
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        print("# one CPU only: the node and the clients share it (--no-pin)", file=sys.stderr)
        args.pin = False
    if args.pin:
        node_cpus, client_cpus = pin_cpus()
        os.sched_setaffinity(0, node_cpus)  # anvil and its threads inherit this
    node = loop.run_until_complete(_serve(w))
    if args.pin:
        os.sched_setaffinity(0, client_cpus)  # this process and every client it starts
    try:
        url, pid = node.http_url, node.pid
        assert pid is not None
        tokens = [w.tokens["USDT"], w.tokens["USDC"]]
        runs: dict[str, list[Run]] = {"minimal": [], "depositwatch": [], "etl": [], "source": []}
        comparisons = []
        with tempfile.TemporaryDirectory(prefix="eth-bench-") as scratch:
            tmp = Path(scratch)
            for n in range(1, args.rounds + 1):
                runs["minimal"].append(minimal(url, pid, first, last, tokens))
                show(n, runs["minimal"][-1])
                runs["depositwatch"].append(depositwatch_adhoc(url, pid, w, first, last, tmp, w.watch_csv))
                show(n, runs["depositwatch"][-1])
                dw_found, kinds = depositwatch_transfers(Path(runs["depositwatch"][-1].extra["matches"]))
                runs["etl"].append(ethereum_etl(url, pid, w, first, last, tmp, w.watch_csv))
                show(n, runs["etl"][-1])
                comparisons.append(compare_text(dw_found, kinds, runs["etl"][-1].extra.pop("found")))
                p = asyncio.run(source_pass(url, pid, w, first, last, w.watch_csv, True))
                runs["source"].append(
                    Run(
                        "source + matcher",
                        last - first + 1,
                        p["seconds"],
                        p["seconds"],
                        p["node_cpu"],
                        p["transfers"],
                        p["client_cpu"],
                    )
                )
                show(n, runs["source"][-1])
            compare = comparisons[0] if len(set(comparisons)) == 1 else " / ".join(comparisons)
            print(f"comparison: {compare}", flush=True)

            sweep = []
            sweep_last = min(last, first + args.sweep_blocks - 1)
            for batch in BATCHES:
                dws, minis = [], []
                for _ in range(args.sweep_repeat):
                    dws.append(depositwatch_config(url, pid, w, first, sweep_last, tmp, batch))
                    minis.append(minimal(url, pid, first, sweep_last, tokens, batch))
                sweep.append(
                    {"batch": batch, "dw_rate": best_rate(dws), "min_rate": best_rate(minis), "load": load_avg()}
                )
                print(f"# batch {batch}: {json.dumps(sweep[-1])}", file=sys.stderr, flush=True)
        filters = filter_gain(url, pid, w, first, last, args.filter_rounds)
    finally:
        loop.run_until_complete(node.stop())
        loop.close()

    dw, mini, etl, src = (median_run(runs[k]) for k in ("depositwatch", "minimal", "etl", "source"))
    ratios_min = [m.seconds / d.seconds for m, d in zip(runs["minimal"], runs["depositwatch"], strict=True)]
    ratios_etl = [e.wall / d.wall for e, d in zip(runs["etl"], runs["depositwatch"], strict=True)]
    result: dict[str, Any] = {
        "command": command,
        "machine": machine_line(),
        "load_before": load_before,
        "load_after": load_avg(),
        "anvil": anvil,
        "etl_version": etl_version,
        "rounds": args.rounds,
        "workload": {**asdict(w.params), "first": first, "last": last, "txs": w.txs, "transfers": w.transfers},
        "depositwatch": {**asdict(dw), "rate": dw.rate},
        "minimal": {**asdict(mini), "rate": mini.rate},
        "etl": {**asdict(etl), "rate": etl.rate},
        "source": {**asdict(src), "rate": src.rate},
        "runs": {k: [asdict(r) for r in v] for k, v in runs.items()},
        "ratio_etl": statistics.median(ratios_etl),
        "ratios_etl": ratios_etl,
        "ratio_min": statistics.median(ratios_min),
        "ratios_min": ratios_min,
        "compare": compare,
        "sweep": sweep,
        "sweep_blocks": sweep_last - first + 1,
        "pinned": args.pin,
        "sweep_repeat": args.sweep_repeat,
        "filter": filters,
        "filter_batch": 20,
        "filter_rounds": args.filter_rounds,
        "minutes": (time.perf_counter() - began) / 60,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str) + "\n")
    result["explain"] = explain(result)
    result["filter_explain"] = filter_explain(filters, args.pin)
    result["sweep_explain"] = sweep_explain(sweep)
    render(result, args)


if __name__ == "__main__":
    main()
