"""Alert latency on Ethereum: from a block being mined on anvil to its signed webhook arriving.

    python bench/latency_bench.py                        # 200 blocks in each mode, about four minutes
    python bench/latency_bench.py --blocks 300 --modes ws,poll-0.2 --plot docs/img/latency_eth.png

The real daemon runs as a subprocess (`python -m depositwatch --config FILE run`, SQLite store in a
temporary folder) against an anvil with mining off, and sends its alerts to a webhook receiver (aiohttp on
127.0.0.1, in this process) that checks every signature. For each block this process sends one ETH
transfer to a revoked address, calls `evm_mine`, and takes the time when `evm_mine` returns (the block's
own timestamp has whole seconds only); the latency is the time the receiver gets the first alert for that
transaction, minus that. The next block follows a random pause after the alert, uniform over 50 ms plus
one polling interval (200 ms with WebSocket), so blocks fall at random points of the polling cycle.

Modes: `ws` (new heads over WebSocket: `ws_url` set, `poll_interval` 2 s as the fallback), `poll-0.2`
and `poll-1` (no WebSocket, `poll_interval` 0.2 s and 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

if __package__ in (None, ""):  # run as `python bench/latency_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, markdown_table, save_figure
from depositwatch.alerts.signing import SignatureError, decode_secret, verify
from depositwatch.devnet import Anvil, rpc

REPO = Path(__file__).resolve().parent.parent
PY = REPO / ".venv" / "bin" / "python"
CHAIN_ID = 31337
SECRET = "whsec_" + "bGF0ZW5jeS1iZW5jaC1zZWNyZXQtMzItYnl0ZXMtbG9uZw=="  # a 34-byte key
REVOKED = "0x" + "5e" * 20
MODES = ("ws", "poll-0.2", "poll-1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1), linear between closest ranks."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Hook:
    """The webhook receiver: first arrival time per transaction, signatures checked."""

    arrivals: dict[str, float] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    bad: int = 0
    requests: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.perf_counter()
        self.requests += 1
        try:
            verify(decode_secret(SECRET), dict(request.headers), body)
        except SignatureError:
            self.bad += 1
            return web.Response(status=401, text="bad signature")
        txid = json.loads(body).get("txid", "").lower()
        if txid not in self.arrivals:
            self.arrivals[txid] = at
            waiter = self.waiters.pop(txid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(at)
        return web.Response(text="ok")

    def wait(self, txid: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if txid in self.arrivals:
            future.set_result(self.arrivals[txid])
        else:
            self.waiters[txid] = future
        return future


def config_text(mode: str, tmp: Path, node: Anvil, hook_url: str) -> str:
    ws = mode == "ws"
    poll = 2.0 if ws else float(mode.split("-", 1)[1])
    return (
        f'[store]\nurl = "sqlite:///{tmp}/state.db"\n'
        "[http]\nenabled = false\n"
        "[alerts]\npoll_interval = 0.2\n"
        '[[chains]]\nname = "eth"\nkind = "evm"\n'
        f'chain_id = {CHAIN_ID}\nrpc_urls = ["{node.http_url}"]\n'
        + (f'ws_url = "{node.ws_url}"\n' if ws else "")
        + f"poll_interval = {poll}\nconfirmations = 1\nbatch_blocks = 20\n"
        f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{hook_url}"\nsecret = {{ value = "{SECRET}" }}\n'
        "retry = { initial_backoff = 0.05, max_backoff = 0.5 }\n"
    )


async def start_hook() -> tuple[Hook, web.AppRunner, int]:
    """The webhook receiver on a free loopback port."""
    hook = Hook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return hook, runner, port


def start_daemon(config: Path, book_rows: str, folder: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Import the address book, then start `depositwatch run` logging to folder/daemon.log."""
    book = folder / "book.csv"
    book.write_text("chain,address,status,label,owner,revoked_at,reason\n" + book_rows)
    subprocess.run(
        [str(PY), "-m", "depositwatch", "--config", str(config), "addresses", "import", str(book)],
        check=True,
        capture_output=True,
    )
    log = folder / "daemon.log"
    with log.open("wb") as sink:
        daemon = subprocess.Popen(
            [str(PY), "-m", "depositwatch", "--config", str(config), "--log-format", "json", "run"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return daemon, log


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it lingers."""
    daemon.terminate()
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


async def one_mode(mode: str, blocks: int, warmup: int, tmp: Path) -> dict[str, Any]:
    hook, runner, port = await start_hook()
    folder = tmp / mode
    folder.mkdir()
    async with Anvil(chain_id=CHAIN_ID, no_mining=True) as node:
        config = folder / "depositwatch.toml"
        config.write_text(config_text(mode, folder, node, f"http://127.0.0.1:{port}/hook"))
        daemon, log = start_daemon(config, f"eth,{REVOKED},revoked,hot-1,cust-1,2020-01-01T00:00:00Z,bench\n", folder)
        sender = node.accounts[0].address
        rng = random.Random(7)
        pause = 0.2 if mode == "ws" else float(mode.split("-", 1)[1])
        latencies: list[float] = []
        try:
            await asyncio.sleep(1.0)
            for n in range(warmup + blocks):
                value = 10**15 + n
                tx = await rpc(node.w3, "eth_sendTransaction", {"from": sender, "to": REVOKED, "value": hex(value)})
                await rpc(node.w3, "evm_mine")
                mined = time.perf_counter()
                height = await node.block_number()
                count = int(await rpc(node.w3, "eth_getBlockTransactionCountByNumber", hex(height)), 16)
                if count != 1:
                    raise SystemExit(f"block {height} holds {count} transactions, 1 was sent")
                try:
                    arrived = await asyncio.wait_for(hook.wait(tx.lower()), 60 if n < warmup else 20)
                except TimeoutError:
                    if daemon.poll() is not None:
                        raise SystemExit(f"the daemon exited:\n{log.read_text()[-3000:]}") from None
                    raise SystemExit(f"no alert for block {height} ({mode}):\n{log.read_text()[-3000:]}") from None
                if n >= warmup:
                    latencies.append((arrived - mined) * 1000)
                await asyncio.sleep(rng.uniform(0.05, 0.05 + pause))
        finally:
            stop_daemon(daemon)
            await runner.cleanup()
    result = {
        "mode": mode,
        "blocks": len(latencies),
        "p50": percentile(latencies, 0.5),
        "p90": percentile(latencies, 0.9),
        "p99": percentile(latencies, 0.99),
        "min": min(latencies),
        "max": max(latencies),
        "mean": statistics.fmean(latencies),
        "bad_signatures": hook.bad,
        "requests": hook.requests,
        "latencies_ms": latencies,
        "load": load_avg(),
    }
    short = {k: v for k, v in result.items() if k != "latencies_ms"}
    print(f"# {mode}: {json.dumps(short)}", file=sys.stderr, flush=True)
    return result


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        values = sorted(r["latencies_ms"])
        share = [(i + 1) / len(values) for i in range(len(values))]
        ax.step(values, share, where="post", label=f"{label(r['mode'])} (p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms)")
    ax.set_xscale("log")
    ax.set_xlabel("latency from evm_mine returning to the signed webhook arriving (ms, log scale)")
    ax.set_ylabel("share of blocks")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"Ethereum alert latency, daemon against anvil ({results[0]['blocks']} blocks per mode)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    save_figure(fig, path)
    plt.close(fig)


def label(mode: str) -> str:
    return "WebSocket new heads" if mode == "ws" else f"polling every {mode.split('-', 1)[1]} s"


def section(results: list[dict[str, Any]], command: str, load_before: str, minutes: float, anvil: str) -> str:
    rows = [
        [
            label(r["mode"]),
            str(r["blocks"]),
            f"{r['p50']:.0f}",
            f"{r['p90']:.0f}",
            f"{r['p99']:.0f}",
            f"{r['min']:.0f}",
            f"{r['max']:.0f}",
        ]
        for r in results
    ]
    by_mode = {r["mode"]: r for r in results}
    lines = [
        "## Alert latency",
        "",
        f"`{command}` ({minutes:.1f} minutes)",
        "",
        f"Machine: {machine_line()}; load average {load_before} before, {results[-1]['load']} after (1/5/15 min). "
        f"anvil {anvil}.",
        "",
        "The real daemon (`python -m depositwatch --config FILE run`, SQLite store) follows an anvil with mining "
        "off; for each block the benchmark sends one ETH transfer to a revoked address, calls `evm_mine` and "
        "notes the time `evm_mine` returns; the latency runs to the arrival of the signed webhook (signature "
        "checked) at a receiver on 127.0.0.1. Each block follows the previous alert after a random pause (uniform "
        "over 50 ms plus one polling interval; 200 ms with WebSocket), so blocks fall at random points of the "
        "polling cycle.",
        "",
        markdown_table(["new blocks seen by", "blocks", "p50 ms", "p90 ms", "p99 ms", "min ms", "max ms"], rows),
        "",
        "![alert latency distribution](img/latency_eth.png)",
        "",
    ]
    notes = []
    if "ws" in by_mode:
        ws = by_mode["ws"]
        notes.append(
            f"- With WebSocket new heads the alert is out {ws['p50']:.0f} ms after the block (p99 {ws['p99']:.0f} ms): "
            "the head notice, the tip check, one range fetch (block, receipts, logs), the match, one SQLite commit "
            "(match, outbox and cursor), the dispatcher's wake-up, signing and the POST."
        )
    for mode in ("poll-0.2", "poll-1"):
        if mode in by_mode and "ws" in by_mode:
            r = by_mode[mode]
            interval = float(mode.split("-", 1)[1]) * 1000
            notes.append(
                f"- Polling every {interval / 1000:g} s adds the wait for the next poll: half an interval on average "
                f"(p50 {r['p50']:.0f} ms against {interval / 2 + by_mode['ws']['p50']:.0f} ms expected), a whole "
                f"one at worst (p99 {r['p99']:.0f} ms)."
            )
    return "\n".join(lines + notes) + "\n"


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as scratch:
        return [await one_mode(mode, args.blocks, args.warmup, Path(scratch)) for mode in args.modes.split(",")]


def render(saved: dict[str, Any], args: argparse.Namespace) -> None:
    results = saved["results"]
    for r in results:
        print(
            f"{label(r['mode'])}: p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f} ms over {r['blocks']} blocks "
            f"(bad signatures: {r['bad_signatures']})"
        )
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    text = section(results, saved["command"], saved["load_before"], saved["minutes"], saved["anvil"])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=200, help="measured blocks per mode")
    parser.add_argument("--warmup", type=int, default=5, help="blocks before measuring")
    parser.add_argument("--modes", default=",".join(MODES), help="ws, poll-0.2, poll-1 (any poll-SECONDS)")
    parser.add_argument("--plot", default=str(REPO / "docs" / "img" / "latency_eth.png"))
    parser.add_argument("--markdown", help="write the `## Alert latency` section to this file")
    parser.add_argument("--json", default=str(REPO / "bench" / "out" / "latency_bench.json"))
    parser.add_argument("--report", type=Path, help="only print the report of a saved --json result")
    args = parser.parse_args()
    if args.report:
        render(json.loads(args.report.read_text()), args)
        return
    shown = [a for a in sys.argv[1:] if a not in (args.markdown, "--markdown") and not a.startswith("--markdown=")]
    command = " ".join(["python bench/latency_bench.py", *shown])
    began = time.perf_counter()
    load_before = load_avg()
    from depositwatch.devnet import find_anvil

    anvil = subprocess.run([str(find_anvil()), "--version"], capture_output=True, text=True, check=False)
    anvil_version = anvil.stdout.splitlines()[0].replace("anvil Version: ", "") if anvil.stdout else "unknown"
    results = asyncio.run(main_async(args))
    saved = {
        "command": command,
        "load_before": load_before,
        "minutes": (time.perf_counter() - began) / 60,
        "anvil": anvil_version,
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(saved, indent=1) + "\n")
    render(saved, args)


if __name__ == "__main__":
    main()
