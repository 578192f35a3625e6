"""What tracing every block costs (`traces = true`), against tracing only blocks where a transaction sends call
data to a contract (the rule before: it missed ETH forwarded by receive() after a plain send, and by
constructors, in blocks with no such call).

    python bench/trace_cost.py
    python bench/trace_cost.py --blocks 300 --rounds 3

Two chains made here on a fresh anvil each (an anvil serving a saved state cannot trace its old blocks);
`EvmSource.fetch` over their blocks with traces off, then on, the node's CPU read from /proc:

1. busy: `--blocks` blocks of 10 plain ETH sends and 2 ERC-20 transfers each (token calls in every block, as
   on mainnet): the old rule traced every block there too, so the new one costs nothing more;
2. quiet: `--blocks` blocks of 10 plain ETH sends each: the old rule traced none of them, the new one
   traces all, so its whole cost shows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/trace_cost.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line
from bench.eth_bench import load_avg, node_cpu
from bench.eth_workload import CHAIN_ID
from depositwatch.chains.evm import EvmSource
from depositwatch.config import ChainConfig
from depositwatch.devnet import Anvil, deploy_token, mine, mint_token, send_eth, send_token


def config(url: str, traces: bool) -> ChainConfig:
    return ChainConfig(name="bench", kind="evm", chain_id=CHAIN_ID, rpc_urls=[url], traces=traces, read_ahead=0)


async def old_rule_blocks(node: Anvil, first: int, last: int) -> int:
    """Blocks the old rule traced: some transaction sends call data to a recipient."""
    count = 0
    for height in range(first, last + 1):
        block = await node.rpc("eth_getBlockByNumber", hex(height), True)
        if any(tx.get("to") and len(tx.get("input") or "0x") > 2 for tx in block["transactions"]):
            count += 1
    return count


async def fetch_cost(node: Anvil, first: int, last: int, traces: bool) -> dict[str, float]:
    source = EvmSource(config(node.http_url, traces))
    await source.open()
    assert node.pid is not None
    try:
        assert source.traces == traces
        cpu, began = node_cpu(node.pid), time.perf_counter()
        for start in range(first, last + 1, 20):
            await source.fetch(start, min(start + 20, last + 1))
        wall, used = time.perf_counter() - began, node_cpu(node.pid) - cpu
    finally:
        await source.close()
    blocks = last - first + 1
    return {"rate": blocks / wall, "node_ms": 1000 * used / blocks}


async def measure(node: Anvil, first: int, last: int, rounds: int) -> dict[str, Any]:
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(rounds):
        for traces in (False, True):
            runs[traces].append(await fetch_cost(node, first, last, traces))

    def median(traces: bool, name: str) -> float:
        values = sorted(r[name] for r in runs[traces])
        return values[len(values) // 2]

    return {
        "blocks": last - first + 1,
        "old_rule": await old_rule_blocks(node, first, last),
        "off": {"rate": median(False, "rate"), "node_ms": median(False, "node_ms")},
        "on": {"rate": median(True, "rate"), "node_ms": median(True, "node_ms")},
    }


async def make_chain(blocks: int, token_calls: bool) -> tuple[Anvil, int, int]:
    node = Anvil(chain_id=CHAIN_ID, no_mining=True)
    await node.start()
    senders = [a.address for a in node.accounts[:5]]
    token = await deploy_token(node.w3, senders[0], "TOK", 6) if token_calls else None
    if token is not None:
        await mint_token(node.w3, token, senders[0], senders[0], 10**15)
        await mine(node.w3)
    first = await node.block_number() + 1
    for n in range(blocks):
        for i in range(10):
            await send_eth(node.w3, senders[i % 5], "0x" + f"{n * 10 + i + 1:040x}", 1)
        if token is not None:
            for i in range(2):
                await send_token(node.w3, token, senders[0], "0x" + f"{n * 2 + i + 1:040x}", 1)
        await mine(node.w3)
    return node, first, await node.block_number()


def line(name: str, r: dict[str, Any]) -> str:
    off, on = r["off"], r["on"]
    return (
        f"| {name} | {r['blocks']:,} | {r['old_rule']:,} | {r['blocks']:,} | {off['rate']:.0f} | {on['rate']:.0f} "
        f"| {off['node_ms']:.2f} | {on['node_ms']:.2f} |"
    )


async def main_async(args: argparse.Namespace) -> None:
    load_before = load_avg()
    found = {}
    for name, token_calls in (("busy", True), ("quiet", False)):
        node, first, last = await make_chain(args.blocks, token_calls)
        try:
            found[name] = await measure(node, first, last, args.rounds)
        finally:
            await node.stop()
    busy, quiet = found["busy"], found["quiet"]
    print(f"`python bench/trace_cost.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    print()
    print(machine_line() + f"; load average {load_before} before, {load_avg()} after.")
    print()
    print(
        "| chain | blocks | traced before (call data to a contract) | traced now | blocks/s traces off "
        "| blocks/s traces on | node CPU ms/block off | node CPU ms/block on |"
    )
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    print(line("busy (10 ETH sends and 2 token transfers a block)", busy))
    print(line("quiet (10 plain ETH sends a block)", quiet))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=300, help="blocks of each chain")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
