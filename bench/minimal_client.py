"""The node's own limit: a bare batched JSON-RPC client that only downloads what a replay needs.

    python bench/minimal_client.py --rpc-url http://127.0.0.1:8545 --from 11 --to 3010 \\
        --token 0x5FbD...0aa3 --token 0xe7f1...0512 [--batch 20] [--in-flight 4]

For blocks `--from`..`--to` it fetches every block with its full transactions
(`eth_getBlockByNumber(n, true)`) and every block's receipts (`eth_getBlockReceipts`), `--batch` blocks
to a JSON-RPC batch, plus the Transfer logs of the given token contracts (`eth_getLogs`, 1,000 blocks a
call), with at most `--in-flight` requests in flight (aiohttp, one keep-alive session, orjson). Answers
are parsed and counted, nothing more: no validation, no decoding, no matching. It prints one JSON line:
the seconds, blocks/s, the counts and the client's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

import aiohttp
import orjson

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fetch_range(
    url: str, first: int, last: int, tokens: list[str], *, batch: int = 20, in_flight: int = 4, logs_span: int = 1000
) -> dict[str, Any]:
    """Download blocks `first`..`last` (inclusive), their receipts and the tokens' Transfer logs."""
    limit = asyncio.Semaphore(in_flight)
    counts = {"blocks": 0, "txs": 0, "receipts": 0, "logs": 0, "bytes": 0}
    connector = aiohttp.TCPConnector(limit=in_flight + 2, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def post(payload: Any) -> Any:
            async with (
                limit,
                session.post(url, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}) as r,
            ):
                raw = await r.read()
            counts["bytes"] += len(raw)
            return orjson.loads(raw)

        async def chunk(low: int, high: int) -> None:
            heights = range(low, high + 1)
            blocks = post(
                [
                    {"jsonrpc": "2.0", "id": h, "method": "eth_getBlockByNumber", "params": [hex(h), True]}
                    for h in heights
                ]
            )
            receipts = post(
                [{"jsonrpc": "2.0", "id": h, "method": "eth_getBlockReceipts", "params": [hex(h)]} for h in heights]
            )
            for answer in await blocks:
                counts["blocks"] += 1
                counts["txs"] += len(answer["result"]["transactions"])
            for answer in await receipts:
                counts["receipts"] += len(answer["result"])

        async def logs(low: int, high: int) -> None:
            answer = await post(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "eth_getLogs",
                    "params": [
                        {"fromBlock": hex(low), "toBlock": hex(high), "address": tokens, "topics": [TRANSFER_TOPIC]}
                    ],
                }
            )
            counts["logs"] += len(answer["result"])

        cpu = _cpu()
        began = time.perf_counter()
        jobs = (
            [logs(low, min(low + logs_span - 1, last)) for low in range(first, last + 1, logs_span)] if tokens else []
        )
        jobs += [chunk(low, min(low + batch - 1, last)) for low in range(first, last + 1, batch)]
        await asyncio.gather(*jobs)
        seconds = time.perf_counter() - began
        cpu = _cpu() - cpu
    return {
        **counts,
        "seconds": seconds,
        "blocks_per_s": counts["blocks"] / seconds,
        "client_cpu_s": cpu,
        "batch": batch,
        "in_flight": in_flight,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--from", dest="first", type=int, required=True)
    parser.add_argument("--to", dest="last", type=int, required=True)
    parser.add_argument("--token", action="append", default=[], help="a token contract (repeatable)")
    parser.add_argument("--batch", type=int, default=20, help="blocks per JSON-RPC batch")
    parser.add_argument("--in-flight", type=int, default=4, help="requests in flight")
    args = parser.parse_args()
    result = asyncio.run(
        fetch_range(args.rpc_url, args.first, args.last, args.token, batch=args.batch, in_flight=args.in_flight)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
