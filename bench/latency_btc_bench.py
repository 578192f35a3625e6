"""Alert latency on Bitcoin: from a block announced by the regtest server to the signed webhook received.

The Bitcoin Core-compatible regtest server of the tests (`tests/btcnode`) runs in this process; the
daemon runs as a subprocess following it, either woken by the server's ZMQ announcements (`zmq_url`,
`hashblock` and `sequence`; polling then only every 5 s, as a fallback) or by `getbestblockhash`
polling alone (the mempool watcher is off, so the alert comes from the block). Each round mines one
block paying a revoked P2WPKH script with a transaction that never went through the mempool (mining
publishes the ZMQ messages before it returns), and times it until the `detected` webhook arrives at
an aiohttp receiver, which checks its signature.

    python bench/latency_btc_bench.py --blocks 200 --modes zmq,0.2,1.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.btcnode import BitcoinRegtestServer, p2wpkh, script_to_address  # noqa: E402

from bench.latency_bench import SECRET, load_avg, percentile, start_daemon, start_hook, stop_daemon  # noqa: E402

REVOKED = p2wpkh(b"\x5e" * 20)


ZMQ_FALLBACK_POLL = 5.0  # with ZMQ, polling stays as a fallback; this far apart it never wakes first


async def one_mode(mode: str, blocks: int, warmup: int, tmp: Path) -> dict[str, Any]:
    hook, runner, port = await start_hook()
    folder = tmp / f"mode-{mode}"
    folder.mkdir()
    zmq = mode == "zmq"
    poll = ZMQ_FALLBACK_POLL if zmq else float(mode)
    pause = 0.2 if zmq else poll  # between blocks: uniform over 50 ms plus this, so blocks fall anywhere in a poll
    async with BitcoinRegtestServer(zmq=zmq) as node:
        chain = node.chain
        chain.mine(101 + blocks + warmup)  # mature coins to pay from
        config = folder / "depositwatch.toml"
        config.write_text(
            f'[store]\nurl = "sqlite:///{folder}/state.db"\n[http]\nenabled = false\n[alerts]\npoll_interval = 0.2\n'
            '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
            f'rpc_urls = ["{node.url}"]\nrpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
            f"poll_interval = {poll}\nconfirmations = 1\nmempool = false\nstart_height = {chain.height + 1}\n"
            + (f'zmq_url = "{node.zmq_url}"\n' if zmq else "")
            + f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "http://127.0.0.1:{port}/hook"\n'
            f'secret = {{ value = "{SECRET}" }}\nretry = {{ initial_backoff = 0.05, max_backoff = 0.5 }}\n'
        )
        revoked = script_to_address(REVOKED, "regtest")
        daemon, log = start_daemon(config, f"btc,{revoked},revoked,old-1,cust-1,2020-01-01T00:00:00Z,bench\n", folder)
        rng = random.Random(7)
        latencies: list[float] = []
        try:
            await asyncio.sleep(1.5)
            for n in range(warmup + blocks):
                tx = chain.send([(REVOKED, 10_000 + n)], submit=False)
                chain.mine(1, txs=[tx])
                announced = time.perf_counter()
                try:
                    arrived = await asyncio.wait_for(hook.wait(tx.txid.lower()), 60 if n < warmup else 20)
                except TimeoutError:
                    raise SystemExit(f"no alert for {tx.txid}:\n{log.read_text()[-3000:]}") from None
                if n >= warmup:
                    latencies.append((arrived - announced) * 1000)
                await asyncio.sleep(rng.uniform(0.05, 0.05 + pause))
        finally:
            stop_daemon(daemon)
            await runner.cleanup()
    result = {
        "mode": f"ZMQ hashblock (polling every {poll:g} s as a fallback)" if zmq else f"polling every {poll:g} s",
        "blocks": len(latencies),
        "p50": round(percentile(latencies, 0.5), 1),
        "p90": round(percentile(latencies, 0.9), 1),
        "p99": round(percentile(latencies, 0.99), 1),
        "min": round(min(latencies), 1),
        "mean": round(statistics.fmean(latencies), 1),
        "max": round(max(latencies), 1),
        "bad_signatures": hook.bad,
        "load": load_avg(),
    }
    print(json.dumps(result), flush=True)
    return result


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="depositwatch-btc-latency-") as tmp:
        for mode in args.modes.split(","):
            await one_mode(mode, args.blocks, args.warmup, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--modes", default="zmq,0.2,1.0", help="what wakes the daemon: zmq, or a poll interval in seconds"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
