"""The address book's HTTP API: what a wallet system adding addresses all day gets from it.

    python bench/api_bench.py --singles 500 --batches 5 --batch-size 10000 --stores sqlite,postgres

For each store, the API is served as the daemon serves it (`build_app` on a real TCP listener, a real
store, bearer token checked on every request) and an aiohttp client on the same machine sends:
single-address adds one after another (latency p50/p99, requests a second), batches of new addresses
(addresses a second, each batch one transaction with its audit rows), a revocation of a whole batch by
list, and history reads of single addresses. Client and server share this process and its event loop,
so the figures include the client's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/api_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import asyncpg

from bench.common import PG_URL, machine_line, markdown_table, scratch_schema, with_search_path
from depositwatch.addressbook import ChainDirectory
from depositwatch.api import ApiContext, TokenSet, build_app, start_api
from depositwatch.config import ApiToken, Secret
from depositwatch.store import open_store

TOKEN = "bench-token-0123456789abcdef"  # noqa: S105 - the benchmark's own API token


def address(n: int) -> str:
    return "0x" + f"{n:040x}"


async def health() -> tuple[dict[str, Any], bool]:
    return {"healthy": True, "store": True, "chains": {}, "components": {}}, True


async def run_store(url: str, singles: int, batches: int, size: int) -> list[list[str]]:
    store = await open_store(url, migrate=True)
    tokens = TokenSet.from_config([ApiToken(name="bench", scopes=["read", "write"], secret=Secret(value=TOKEN))])
    context = ApiContext(
        store=store,
        directory=ChainDirectory(ChainDirectory.DEFAULTS),
        tokens=tokens,
        health=health,
        max_body=64 * 1024**2,
        max_batch=max(size, 1),
    )
    runner, (host, port) = await start_api(build_app(context), "127.0.0.1", 0)
    base = f"http://{host}:{port}/api/v1"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    rows: list[list[str]] = []
    try:
        async with aiohttp.ClientSession(headers=headers) as http:

            async def post(path: str, body: Any) -> None:
                async with http.post(f"{base}{path}", json=body) as resp:
                    if resp.status not in (200, 201):
                        raise RuntimeError(f"{path}: {resp.status} {await resp.text()}")
                    await resp.read()

            took = []
            started = time.perf_counter()
            for n in range(singles):
                t = time.perf_counter()
                await post("/addresses", {"chain": "eth", "address": address(n + 1), "owner": "wallet"})
                took.append(time.perf_counter() - t)
            total = time.perf_counter() - started
            took.sort()
            rows.append(
                [
                    f"{singles} single adds, one after another",
                    f"{singles / total:,.0f} requests/s",
                    f"p50 {statistics.median(took) * 1000:.1f} ms, p99 {took[int(len(took) * 0.99) - 1] * 1000:.1f} ms",
                ]
            )
            first = 10_000_000
            took = []
            for b in range(batches):
                batch = [{"chain": "eth", "address": address(first + b * size + i)} for i in range(size)]
                t = time.perf_counter()
                await post("/addresses", {"addresses": batch})
                took.append(time.perf_counter() - t)
            rows.append(
                [
                    f"{batches} batches of {size:,} new addresses",
                    f"{size * batches / sum(took):,.0f} addresses/s",
                    f"median batch {statistics.median(took):.2f} s",
                ]
            )
            listed = [address(first + i) for i in range(size)]
            t = time.perf_counter()
            await post("/addresses/revoke", {"chain": "eth", "addresses": listed, "at": 1, "reason": "bench"})
            revoke = time.perf_counter() - t
            rows.append([f"revoke {size:,} listed addresses", f"{size / revoke:,.0f} addresses/s", f"{revoke:.2f} s"])
            took = []
            for n in range(min(singles, 200)):
                t = time.perf_counter()
                async with http.get(f"{base}/addresses/eth/{address(n + 1)}/history") as resp:
                    await resp.read()
                took.append(time.perf_counter() - t)
            rows.append(
                [
                    f"{len(took)} history reads",
                    f"{len(took) / sum(took):,.0f} requests/s",
                    f"p50 {statistics.median(took) * 1000:.1f} ms",
                ]
            )
    finally:
        await runner.cleanup()
        await store.close()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--singles", type=int, default=500)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--stores", default="sqlite,postgres")
    args = parser.parse_args()
    print(machine_line())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for name in args.stores.split(","):
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                rows = await run_store(f"sqlite:///{tmp}/api.db", args.singles, args.batches, args.batch_size)
        else:
            schema = scratch_schema("api_bench")
            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f"CREATE SCHEMA {schema}")
            await conn.close()
            try:
                url = with_search_path(PG_URL, schema)
                rows = await run_store(url, args.singles, args.batches, args.batch_size)
            finally:
                conn = await asyncpg.connect(PG_URL)
                await conn.execute(f"DROP SCHEMA {schema} CASCADE")
                await conn.close()
        print(f"\n**{name}**\n")
        print(markdown_table(["what", "rate", "time"], rows, "lrr"))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
