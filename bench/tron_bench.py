"""TRON benchmarks on mainnet-sized blocks: integrity-checked decoding, and fetching from a node.

Blocks are built by the TRON test node with real encodings and the shape of a busy mainnet block:
300 transactions, 140 of them USDT `transfer()` calls with their Transfer logs, 100 TRX transfers and
60 other contract calls (each with a Transfer log of some other token, which the decoder must read and
skip).

- `decode`: `tron_decode.decode_block` (txIDs, the trie root over whole transactions, the block id,
  the signed contract fields against the JSON, the infos) against the floor of hashing the block's
  transactions (sha256 of each raw data and of each whole transaction, and the merkle root), per block,
  in CPU time (best round); with 20 watched keys, then with 10 of them revoked as well (the Transfer
  logs of every other contract are read for them: the cost of matching any TRC-20 on the common case,
  where none of those logs touches a revoked key), then with every transfer built.
- `fetch`: `TronSource.fetch` of a range from the test node on loopback against a bare client that
  asks the same calls (`getblockbylimitnext` ranges, `gettransactioninfobyblocknum` for blocks with
  contract calls) and only parses the answers with orjson. The server serves pre-encoded answers.

    python bench/tron_bench.py [--blocks 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

if __package__ in (None, ""):  # run as `python bench/tron_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tronnode.chain import TronChain, Tx, account, trc20, trx
from tests.tronnode.client import PlainTransport
from tests.tronnode.server import TronNodeServer

from bench.common import machine_line
from depositwatch.addresses.tron import parse_tron_address
from depositwatch.chains import tron_wire as wire
from depositwatch.chains.tron import RANGE_LIMIT, TronSource
from depositwatch.chains.tron_decode import TronTokens, decode_block, needs_infos
from depositwatch.models import Asset

USDT_KEY = parse_tron_address("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t").key
TOKENS = TronTokens(trc20={USDT_KEY: Asset("USDT", 6, "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t")})
FIRST = 1000


def mainnet_sized(chain: TronChain, seed: int) -> list[Tx]:
    """300 transactions: 140 USDT transfers, 100 TRX transfers, 60 calls of another token."""
    txs: list[Tx] = []
    for n in range(300):
        sender, recipient = account(seed * 1000 + n), account(seed * 1000 + n + 500)
        nonce = chain.next_nonce()
        if n < 140:
            txs.append(trc20(sender, recipient, USDT_KEY, 1_000_000 + n, nonce=nonce))
        elif n < 240:
            txs.append(trx(sender, recipient, 5_000_000 + n, nonce=nonce))
        else:
            txs.append(trc20(sender, recipient, account(7_000 + n % 10), 10 + n, nonce=nonce))
    return txs


def build_chain(blocks: int) -> TronChain:
    chain = TronChain(FIRST)
    for height in range(blocks):
        chain.mine(mainnet_sized(chain, height))
    return chain


def hashing_floor(block: dict[str, Any]) -> None:
    """What any integrity check must do at least: hash each transaction twice and build the root."""
    leaves = []
    for tx in block["transactions"]:
        raw = bytes.fromhex(tx["raw_data_hex"])
        hashlib.sha256(raw).digest()
        leaves.append(hashlib.sha256(raw + bytes(100)).digest())  # ~ the whole transaction's length
    wire.merkle_root(leaves)


def bench_decode(chain: TronChain, rounds: int) -> None:
    """Decode against the hashing floor, in CPU time of this process.

    Each round times the floor and both decodes back to back over the same blocks, and each figure is
    the best round: CPU time rather than wall time, so that other work on a shared machine (which
    stretches wall time unevenly between the phases) does not move the ratios.
    """
    heights = list(range(FIRST + 1, chain.tip + 1))
    pairs = [(h, chain.block(h), chain.infos(h)) for h in heights]
    watched = frozenset(account(n) for n in range(0, 20_000, 1000))  # 20 keys, a few hits per block
    revoked = frozenset(account(n) for n in range(1000, 20_000, 2000))  # 10 of them revoked
    decode_times: list[float] = []
    watched_times: list[float] = []
    revoked_times: list[float] = []
    floor_times: list[float] = []
    clock = time.process_time
    for _ in range(rounds):
        started = clock()
        for _h, block, _ in pairs:
            hashing_floor(block)
        floor_times.append((clock() - started) / len(pairs))
        started = clock()
        for height, block, infos in pairs:
            decode_block(block, infos, height, TOKENS, watch=watched)
        watched_times.append((clock() - started) / len(pairs))
        started = clock()
        for height, block, infos in pairs:
            decode_block(block, infos, height, TOKENS, watch=watched, revoked=revoked)
        revoked_times.append((clock() - started) / len(pairs))
        started = clock()
        for height, block, infos in pairs:
            decode_block(block, infos, height, TOKENS)
        decode_times.append((clock() - started) / len(pairs))
    floor, decode, narrow = min(floor_times), min(decode_times), min(watched_times)
    any_token = min(revoked_times)
    print(f"hashing floor: {floor * 1000:.2f} ms a block (CPU time)")
    print(f"decode, 20 watched keys: {narrow * 1000:.2f} ms a block: {narrow / floor:.2f}x the floor")
    print(
        f"decode, 20 watched keys, 10 revoked (any TRC-20 to or from them): {any_token * 1000:.2f} ms a block:"
        f" {any_token / floor:.2f}x the floor, {any_token / narrow:.3f}x the line above"
    )
    print(f"decode, every transfer built: {decode * 1000:.2f} ms a block: {decode / floor:.2f}x the floor")


async def bare_fetch(url: str, start: int, stop: int, in_flight: int = 4) -> int:
    """Fetch and parse the same answers the source (and so a replay) asks for, `in_flight` info calls at
    a time, with no checks: the client's floor."""
    count = 0
    async with aiohttp.ClientSession() as session:

        async def post(path: str, body: dict[str, Any]) -> Any:
            async with session.post(url + path, data=orjson.dumps(body)) as response:
                return orjson.loads(await response.read())

        sem = asyncio.Semaphore(in_flight)

        async def infos(num: int) -> Any:
            async with sem:
                return await post("/wallet/gettransactioninfobyblocknum", {"num": num})

        for low in range(start, stop, RANGE_LIMIT):
            high = min(low + RANGE_LIMIT, stop)
            answer = await post("/wallet/getblockbylimitnext", {"startNum": low, "endNum": high, "visible": False})
            blocks = answer["block"]
            await asyncio.gather(*(infos(low + n) for n, b in enumerate(blocks) if needs_infos(b)))
            count += len(blocks)
    return count


async def bench_fetch(chain: TronChain, rounds: int) -> None:
    start, stop = FIRST + 1, chain.tip + 1
    async with TronNodeServer(chain) as node:
        await bare_fetch(node.url, start, stop)  # warm the server's encoded answers
        bare_rates, source_rates = [], []
        for _ in range(rounds):
            began = time.perf_counter()
            got = await bare_fetch(node.url, start, stop)
            bare_rates.append(got / (time.perf_counter() - began))
            source = TronSource("tron", PlainTransport(node.url), TOKENS, internal=False)
            began = time.perf_counter()
            blocks = []
            for low in range(start, stop, RANGE_LIMIT):
                blocks.extend(await source.fetch(low, min(low + RANGE_LIMIT, stop)))
            source_rates.append(len(blocks) / (time.perf_counter() - began))
            await source.close()
    bare, fetched = max(bare_rates), max(source_rates)
    rounds_text = (
        f"source {', '.join(f'{r:.1f}' for r in source_rates)}; bare {', '.join(f'{r:.1f}' for r in bare_rates)}"
    )
    print(f"fetch: source {fetched:.1f} blocks/s, bare client {bare:.1f} blocks/s: {fetched / bare:.2f} of it")
    print(f"  rounds: {rounds_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replay", action="store_true", help="also the end-to-end replay (bench/tron_replay.py)")
    args = parser.parse_args()
    print(machine_line())
    began = time.perf_counter()
    chain = build_chain(args.blocks)
    print(
        f"built {args.blocks} mainnet-sized blocks (300 transactions, 140 USDT) in {time.perf_counter() - began:.1f} s"
    )
    bench_decode(chain, args.rounds)
    asyncio.run(bench_fetch(chain, args.rounds))
    if args.replay:
        from bench.tron_replay import bench_replay

        bench_replay(chain, args.rounds, FIRST + 1)


if __name__ == "__main__":
    main()
