"""Replay over real-sized Ethereum blocks: the relinked copies of mainnet block 17,173,049 that bench/eth_realnode.py
serves, and the benchmarks docs/performance.md records for them ("Replay at real scale"), in a small form."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from bench.eth_realnode import RealNode, block_hash, load_block, serve
from bench.store_flat_bench import WATCH_CSV

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.evm import EvmSource
from depositwatch.cli import main
from depositwatch.config import ChainConfig
from tests.realdata import realdata
from tests.recorded_rpc import MAINNET_BLOCK, RecordedNode, mainnet_17173049
from tests.replay.benches import run_bench

ROOT = Path(__file__).resolve().parents[2]


def _call(node: RealNode, method: str, *params: object) -> object:
    return orjson.loads(node.answer(method, list(params)))


def test_the_copies_form_one_chain_of_distinct_transactions() -> None:
    """Block N names block N-1's hash as its parent; its transactions, receipts and logs name block N and
    transaction hashes no other copy has; a topic filter keeps what a node's would."""
    realdata("eth", "mainnet_17173049", "expected_blocks.json")
    node = RealNode(10)
    one, two = _call(node, "eth_getBlockByNumber", "0x1", True), _call(node, "eth_getBlockByNumber", "0x2", True)
    assert isinstance(one, dict) and isinstance(two, dict)
    assert two["parentHash"] == one["hash"] == block_hash(1) and two["number"] == "0x2"
    assert len(two["transactions"]) == 116
    assert {tx["blockHash"] for tx in two["transactions"]} == {block_hash(2)}
    assert not {tx["hash"] for tx in one["transactions"]} & {tx["hash"] for tx in two["transactions"]}
    receipts = _call(node, "eth_getBlockReceipts", "0x2")
    assert isinstance(receipts, list)
    assert [r["transactionHash"] for r in receipts] == [tx["hash"] for tx in two["transactions"]]
    assert sum(len(r["logs"]) for r in receipts) == 271
    assert _call(node, "eth_getBlockByNumber", "0xb", True) is None  # above the tip
    recipient = "0x" + "00" * 12 + "3dfaa087b7b2ab616858a6d23e01c56e5b95705d"  # one USDT payment a block
    assert recipient[-40:] in {to[2:] for to in load_block().transfers_to}
    topic0 = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    logs = _call(node, "eth_getLogs", {"fromBlock": "0x1", "toBlock": "0x3", "topics": [topic0, None, [recipient]]})
    assert isinstance(logs, list) and len(logs) == 3
    assert [entry["blockNumber"] for entry in logs] == ["0x1", "0x2", "0x3"]
    assert all(entry["topics"][2] == recipient for entry in logs)


async def test_ad_hoc_replay_of_real_sized_blocks_finds_every_watched_transfer(tmp_path: Path) -> None:
    """The ad-hoc replay over 45 copies finds the five watched transfers of each (three deposits, a payment to
    a revoked address, a sweep), with each copy's own transaction hashes, and leaves the collector as it was."""
    runner, url, _ = await serve(60)
    watch, out = tmp_path / "watch.csv", tmp_path / "out.jsonl"
    watch.write_text(WATCH_CSV)
    threshold = gc.get_threshold()
    try:
        argv = ["replay", "--chain", "eth", "--rpc-url", url, "--watch", str(watch), "--from", "1", "--to", "45"]
        assert await asyncio.to_thread(main, [*argv, "--output", str(out)]) == 0
    finally:
        await runner.cleanup()
    assert gc.get_threshold() == threshold  # the collector's settings are the process' again
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 45 * 5
    assert Counter(line["kind"] for line in lines) == {"deposit": 135, "revoked_incoming": 45, "revoked_outgoing": 45}
    for height in (1, 45):
        mine = [line for line in lines if line["block_height"] == height]
        assert len(mine) == 5 and all(line["txid"].startswith(f"0x{height:016x}") for line in mine)
        assert all(line["block_hash"] == block_hash(height) and line["status"] == "confirmed" for line in mine)
    assert {line["amount"] for line in lines if line["kind"] == "revoked_incoming"} == {"8062705974"}


def test_eth_real_bench_prints_each_round_and_the_run_along(tmp_path: Path) -> None:
    """`bench/eth_real_bench.py` (the command docs/performance.md records), small: one round of both
    clients with their ratio, a long replay with its rate along the run, and the plot."""
    store_json = tmp_path / "store.json"
    run_bench(
        "store_flat_bench.py", "--blocks", "400", "--every", "200", "--durable", "--json", str(store_json), timeout=300
    )
    plot = tmp_path / "flat.png"
    stdout = run_bench(
        "eth_real_bench.py",
        "--blocks",
        "40",
        "--rounds",
        "1",
        "--long-seconds",
        "1",
        "--long-blocks",
        "120",
        "--every",
        "20",
        "--store-json",
        str(store_json),
        "--plot",
        str(plot),
        "--compare-src",
        str(ROOT / "src"),
        "--json",
        str(tmp_path / "run.json"),
        timeout=600,
    )
    assert "round 1: replay " in stdout and " ratio " in stdout, stdout
    assert "long replay: 120 blocks" in stdout, stdout
    assert f"round 1, replay from {ROOT / 'src'}: " in stdout, stdout
    assert plot.stat().st_size > 10_000
    plot.unlink()
    again = [sys.executable, str(ROOT / "bench" / "eth_real_bench.py"), "--replot", str(tmp_path / "run.json")]
    subprocess.run([*again, "--store-json", str(store_json), "--plot", str(plot)], check=True, timeout=120)
    assert plot.stat().st_size > 10_000


def test_store_flat_bench_runs_on_postgres() -> None:
    """`bench/store_flat_bench.py --store postgres` prints its rate every `--every` blocks."""
    stdout = run_bench("store_flat_bench.py", "--store", "postgres", "--blocks", "200", "--every", "100", timeout=300)
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [row["block"] for row in rows] == [100, 200] and rows[-1]["matches"] == 1000


def _value_txs(block: dict[str, Any]) -> list[dict[str, Any]]:
    return [tx for tx in block["transactions"] if int(tx["value"], 16) > 0 and tx["to"]]


@pytest.mark.parametrize("watched_tampered", [False, True])
async def test_a_watched_transactions_fields_are_validated_an_unwatched_ones_are_not_used(
    watched_tampered: bool,
) -> None:
    """With a watched set, a transaction touching none of its keys is used for its hash only: a broken value
    there changes nothing, while the same break in a watched transaction is refused as before."""
    chain = mainnet_17173049()
    value_txs = _value_txs(chain.blocks[MAINNET_BLOCK])
    watched = next(tx for tx in value_txs if tx["to"] != value_txs[0]["to"] and tx["from"] != value_txs[0]["from"])
    victim = watched if watched_tampered else value_txs[0]

    def tamper(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockByNumber" and params[1]:
            for tx in result["transactions"]:
                if tx["hash"] == victim["hash"]:
                    tx["value"] = 12345
                    tx["from"] = None
        return result

    async with RecordedNode(chain) as node:
        source = EvmSource(ChainConfig(name="eth", kind="evm", chain_id=1, rpc_urls=[node.url], tokens=[]))
        await source.open()
        source.set_log_filter({bytes.fromhex(watched["to"][2:])})
        node.tamper = tamper
        try:
            if watched_tampered:
                with pytest.raises(BadNodeAnswer, match="is None, not a 20-byte hex address"):
                    await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
                return
            (block,) = await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
        finally:
            await source.close()
    key = watched["to"]
    succeeded = {r["transactionHash"] for r in chain.receipts[MAINNET_BLOCK] if r.get("status") == "0x1"}
    expected = [
        (tx["hash"], int(tx["value"], 16))
        for tx in value_txs
        if key in (tx["from"], tx["to"]) and tx["hash"] in succeeded
    ]
    assert (watched["hash"], int(watched["value"], 16)) in expected
    assert [(t.txid, t.amount) for t in block.transfers] == expected
    assert block.tx_count == 116


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_store_flat_bench_side_by_side(store: str, tmp_path: Path) -> None:
    """`bench/store_flat_bench.py --at N`: a fresh store and one prefilled with N blocks' matches, in turns."""
    stdout = run_bench(
        "store_flat_bench.py",
        "--store",
        store,
        "--at",
        "3000",
        "--every",
        "200",
        "--rounds",
        "2",
        "--json",
        str(tmp_path / "side.json"),
        timeout=300,
    )
    first, *rounds = (json.loads(line) for line in stdout.splitlines())
    assert first["prefilled"] == 3000 and first["matches"] == 15_000
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["early"]["from"] == 1001 and rounds[0]["late"]["from"] == 3001
    assert all(r["ratio"] > 0 and r["late"]["cpu_ms"] > 0 for r in rounds)
    assert json.loads((tmp_path / "side.json").read_text())["rounds"] == rounds
