"""EvmSource on real mainnet blocks served by a recorded JSON-RPC node, and on broken or hostile answers."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable, WrongChain
from depositwatch.chains.evm import EvmSource
from depositwatch.config import ChainConfig
from depositwatch.models import Block
from tests.recorded_rpc import (
    MAINNET_BLOCK,
    OLD_BLOCK,
    RecordedNode,
    RpcError,
    assert_fetch_refused,
    block_483920,
    json_lines,
    mainnet_17173049,
    realdata,
)

USDT = "0xdac17f958d2ee523a2206206994597c13d831ec7"
USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
OLD_TOKEN = "0xf4eced2f682ce333f96f2d8966c613ded8fc95dd"

Row = tuple[str, int | None, str, str, str, int]  # txid, index, symbol, from, to, amount


def config(url: str, tokens: dict[str, str], **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "eth",
        "kind": "evm",
        "chain_id": 1,
        "rpc_urls": [url],
        "tokens": [{"symbol": s, "contract": c, "decimals": 6} for s, c in tokens.items()],
    }
    settings.update(overrides)
    return ChainConfig(**settings)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def rows(block: Block) -> list[Row]:
    return [
        (t.txid, t.index, t.asset.symbol, (t.from_address or "").lower(), (t.to_address or "").lower(), t.amount)
        for t in block.transfers
    ]


def expected_mainnet(contracts: dict[str, str]) -> list[Row]:
    """Straight from the ethereum-etl export files, in transaction order then log order."""
    folder = realdata("eth", "mainnet_17173049")
    txs = json_lines(folder / "expected_transactions.json")
    by_contract = {c: s for s, c in contracts.items()}
    keyed: list[tuple[tuple[int, int], Row]] = []
    for tx in txs:
        if tx["receipt_status"] == 1 and tx["value"] > 0 and tx["to_address"] is not None:
            row = (tx["hash"], None, "ETH", tx["from_address"], tx["to_address"], tx["value"])
            keyed.append(((tx["transaction_index"], -1), row))
    position = {tx["hash"]: tx["transaction_index"] for tx in txs}
    for log in json_lines(folder / "expected_logs.json"):
        symbol = by_contract.get(log["address"])
        if symbol is None or log["topics"][0] != TRANSFER or len(log["topics"]) != 3:
            continue
        row = (
            log["transaction_hash"],
            log["log_index"],
            symbol,
            "0x" + log["topics"][1][-40:],
            "0x" + log["topics"][2][-40:],
            int(log["data"], 16),
        )
        keyed.append(((position[log["transaction_hash"]], log["log_index"]), row))
    # Consensus-layer withdrawals come after the transactions: ETH (the amount is in Gwei) with no sender.
    (block,) = json_lines(folder / "expected_blocks.json")
    for w in block["withdrawals"]:
        row = (f"withdrawal:{w['index']}", w["index"], "ETH", "", w["address"], w["amount"] * 10**9)
        keyed.append(((len(txs), w["index"]), row))
    return [row for _, row in sorted(keyed)]


async def fetch_one(node: RecordedNode, height: int, tokens: dict[str, str], **overrides: Any) -> Block:
    source = EvmSource(config(node.url, tokens, **overrides))
    await source.open()
    try:
        blocks = await source.fetch(height, height + 1)
    finally:
        await source.close()
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.parametrize("block_receipts", [True, False])
async def test_mainnet_block_usdt_usdc_and_eth(block_receipts: bool) -> None:
    async with RecordedNode(mainnet_17173049(), block_receipts=block_receipts) as node:
        block = await fetch_one(node, MAINNET_BLOCK, {"USDT": USDT, "USDC": USDC})
        if block_receipts:
            assert "eth_getTransactionReceipt" not in node.methods()
        else:
            assert "eth_getTransactionReceipt" in node.methods()
    folder = realdata("eth", "mainnet_17173049")
    txs = json_lines(folder / "expected_transactions.json")

    assert block.height == MAINNET_BLOCK
    assert block.hash == "0xaa5ab9bb22d8020d438496a7edb4eff508b1c5128b0dc01fdecf57f96aac1bb3"
    assert block.parent_hash == "0x918a700a8e7a9f3fe0b3ccb176c810ded08729331ceef8d6375af5d1eeeaa6c0"
    assert block.time == 1683029999
    assert block.tx_count == 116

    got = rows(block)
    assert got == expected_mainnet({"USDT": USDT, "USDC": USDC})
    assert sum(1 for r in got if r[2] == "USDT") == 15
    assert sum(1 for r in got if r[2] == "USDC") == 5
    assert sum(1 for r in got if r[2] == "ETH" and not r[0].startswith("withdrawal:")) == 51
    assert sum(1 for r in got if r[0].startswith("withdrawal:")) == 16  # the block's withdrawals

    failed_with_value = {tx["hash"] for tx in txs if tx["receipt_status"] == 0 and tx["value"] > 0}
    assert len(failed_with_value) == 3
    assert not failed_with_value & {r[0] for r in got}

    tokens = {t.asset.symbol: t.asset for t in block.transfers if t.asset.contract}
    assert tokens["USDT"].contract == "0xdAC17F958D2ee523a2206206994597C13D831ec7"
    assert tokens["USDC"].contract == "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"


async def test_erc721_transfers_of_a_configured_contract_are_skipped() -> None:
    nft = "0xb5f75c61052cd174c43b4187ca9333a5300d765f"  # five four-topic Transfer logs in this block
    async with RecordedNode(mainnet_17173049()) as node:
        block = await fetch_one(node, MAINNET_BLOCK, {"NFT": nft, "USDC": USDC})
        (logs_call,) = [params for method, params in node.calls if method == "eth_getLogs"]
    assert logs_call[0]["topics"] == [TRANSFER]
    assert {a.lower() for a in logs_call[0]["address"]} == {nft, USDC}
    assert {r[2] for r in rows(block)} == {"ETH", "USDC"}
    assert rows(block) == expected_mainnet({"NFT": nft, "USDC": USDC})


@pytest.mark.parametrize("block_receipts", [True, False])
async def test_pre_byzantium_root_receipts_count_as_success(block_receipts: bool) -> None:
    async with RecordedNode(block_483920(), block_receipts=block_receipts) as node:
        block = await fetch_one(node, OLD_BLOCK, {"OLD": OLD_TOKEN})
    assert block.tx_count == 4
    # ethereum-etl's own expectations for this block: all four transactions succeeded (root receipts)
    export = realdata("eth", "test_export_blocks_job", "block_with_logs", "expected_transactions.csv")
    transfers = realdata(
        "eth", "test_export_token_transfers_job", "block_with_transfers", "expected_token_transfers.csv"
    )
    logs_by_tx: dict[str, list[Row]] = {}
    for row in csv_rows(transfers):
        logs_by_tx.setdefault(row["transaction_hash"], []).append(
            (
                row["transaction_hash"],
                int(row["log_index"]),
                "OLD",
                row["from_address"],
                row["to_address"],
                int(row["value"]),
            )
        )
    expected: list[Row] = []
    for tx in csv_rows(export):
        if int(tx["value"]) > 0:
            expected.append((tx["hash"], None, "ETH", tx["from_address"], tx["to_address"], int(tx["value"])))
        expected.extend(logs_by_tx.get(tx["hash"], []))
    assert len(expected) == 4
    assert rows(block) == expected


async def test_the_probe_notices_a_node_without_block_receipts() -> None:
    async with RecordedNode(mainnet_17173049(), block_receipts=False) as node:
        source = EvmSource(config(node.url, {}, traces=True))
        await source.open()
        await source.close()
    assert not source.block_receipts
    assert not source.traces


async def test_a_probe_that_fails_for_another_reason_keeps_block_receipts() -> None:
    def syncing(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockReceipts":
            raise RpcError(-32000, "header not found")
        return result

    async with RecordedNode(mainnet_17173049(), tamper=syncing) as node:
        source = EvmSource(config(node.url, {}))
        await source.open()
        await source.close()
    assert source.block_receipts


async def test_wrong_chain() -> None:
    async with RecordedNode(mainnet_17173049()) as node:
        source = EvmSource(config(node.url, {}, chain_id=5))
        with pytest.raises(
            WrongChain, match=r"chain eth: node at http://127\.0\.0\.1:[0-9]+/… reports chain id 1, config says 5"
        ):
            await source.open()
        assert source.client._session is None  # a failed open releases its connections


async def test_tip_and_hash_at() -> None:
    async with RecordedNode(mainnet_17173049()) as node:
        source = EvmSource(config(node.url, {}))
        await source.open()
        try:
            tip = await source.tip()
            assert tip.height == MAINNET_BLOCK
            assert await source.hash_at(MAINNET_BLOCK) == tip.hash
            assert await source.hash_at(MAINNET_BLOCK + 1) is None
            assert await source.fetch(MAINNET_BLOCK + 1, MAINNET_BLOCK + 5) == []
        finally:
            await source.close()


async def test_getlogs_ranges_too_large_for_the_node_are_halved() -> None:
    chain = mainnet_17173049()
    chain.add_empty_blocks(6)

    def limited(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs" and params[0]["fromBlock"] != params[0]["toBlock"]:
            raise RpcError(-32005, "query returned more than 10000 results")
        return result

    tokens = {"USDT": USDT, "USDC": USDC}
    async with RecordedNode(chain) as plain_node, RecordedNode(chain, tamper=limited) as limited_node:
        sources = [EvmSource(config(n.url, tokens)) for n in (plain_node, limited_node)]
        for source in sources:
            await source.open()
        try:
            plain, split = [await s.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 7) for s in sources]
        finally:
            for source in sources:
                await source.close()
        assert len([m for m in limited_node.methods() if m == "eth_getLogs"]) > 7
    assert len(plain) == 7
    assert split == plain
    assert rows(plain[0]) == expected_mainnet(tokens)


# --- broken and hostile answers ----------------------------------------------------------------------


def _first_value_tx(block: dict[str, Any]) -> dict[str, Any]:
    return next(tx for tx in block["transactions"] if int(tx["value"], 16) > 0)


def _wrong_number(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getBlockByNumber" and params[1]:
        result["number"] = hex(int(result["number"], 16) + 1)
    return result


def _hashes_only(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getBlockByNumber" and params[1]:
        result["transactions"] = [tx["hash"] for tx in result["transactions"]]
    return result


def _bad_value(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getBlockByNumber" and params[1]:
        _first_value_tx(result)["value"] = 12345
    return result


def _missing_hash(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getBlockByNumber" and params[1]:
        del result["hash"]
    return result


def _receipts_error(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getBlockReceipts":
        raise RpcError(-32000, "header not found")
    return result


def _receipt_missing(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getBlockReceipts":
        return result[:-1]
    return result


def _bad_status(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getBlockReceipts":
        result[0]["status"] = "0x2"
    return result


def _unfiltered_logs(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getLogs":
        return mainnet_17173049().logs
    return result


def _log_of_another_block(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getLogs":
        result[0]["blockHash"] = "0x" + "ab" * 32
    return result


def _log_out_of_range(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getLogs":
        result[0]["blockNumber"] = hex(MAINNET_BLOCK - 5)
    return result


def _log_of_unknown_tx(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getLogs":
        result[0]["transactionHash"] = "0x" + "cd" * 32
    return result


def _logs_error(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getLogs":
        raise RpcError(-32000, "internal error")
    return result


def _not_a_list(method: str, params: list[Any], result: Any) -> Any:
    if method == "eth_getLogs":
        return {"logs": result}
    return result


@pytest.mark.parametrize(
    ("tamper", "method", "detail"),
    [
        (_wrong_number, "eth_getBlockByNumber", "answered with block 17173050"),
        (_hashes_only, "eth_getBlockByNumber", "transaction 0 is str"),
        (_bad_value, "eth_getBlockByNumber", "value is 12345"),
        (_missing_hash, "eth_getBlockByNumber", "hash is None"),
        (_receipts_error, "eth_getBlockReceipts", "header not found"),
        (_receipt_missing, "eth_getBlockReceipts", "115 receipts for 116 transactions"),
        (_bad_status, "eth_getBlockReceipts", "status is '0x2'"),
        (_unfiltered_logs, "eth_getLogs", "which was not asked for"),
        (_log_of_another_block, "eth_getLogs", "the chain moved during the fetch"),
        (_log_out_of_range, "eth_getLogs", "outside the range asked"),
        (_log_of_unknown_tx, "eth_getLogs", "not in the block"),
        (_logs_error, "eth_getLogs", "internal error"),
        (_not_a_list, "eth_getLogs", "not a list"),
    ],
)
async def test_bad_answers_are_refused(tamper: Callable[..., Any], method: str, detail: str) -> None:
    await assert_fetch_refused(lambda url: config(url, {"USDT": USDT, "USDC": USDC}), tamper, method, detail)


async def test_removed_logs_are_skipped() -> None:
    def removed(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs":
            for entry in result:
                if entry["address"] == USDC:
                    entry["removed"] = True
        return result

    async with RecordedNode(mainnet_17173049(), tamper=removed) as node:
        block = await fetch_one(node, MAINNET_BLOCK, {"USDT": USDT, "USDC": USDC})
    assert rows(block) == expected_mainnet({"USDT": USDT})


async def test_logs_of_a_failed_transaction_are_not_believed() -> None:
    chain = mainnet_17173049()
    usdt_tx = next(entry["transactionHash"] for entry in chain.logs if entry["address"] == USDT)

    def failed(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockReceipts":
            for receipt in result:
                if receipt["transactionHash"] == usdt_tx:
                    receipt["status"] = "0x0"
        return result

    async with RecordedNode(chain, tamper=failed) as node:
        block = await fetch_one(node, MAINNET_BLOCK, {"USDT": USDT, "USDC": USDC})
    expected = [r for r in expected_mainnet({"USDT": USDT, "USDC": USDC}) if r[0] != usdt_tx]
    assert rows(block) == expected
    assert len(expected) < len(expected_mainnet({"USDT": USDT, "USDC": USDC}))


async def test_a_node_that_loses_blocks_below_its_tip_gives_fewer_blocks() -> None:
    chain = mainnet_17173049()
    chain.add_empty_blocks(3)

    def gap(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockByNumber" and params[0] == hex(MAINNET_BLOCK + 2):
            return None
        return result

    async with RecordedNode(chain, tamper=gap) as node:
        source = EvmSource(config(node.url, {"USDT": USDT}, batch_blocks=1))
        await source.open()
        try:
            blocks = await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 4)
        finally:
            await source.close()
    assert [b.height for b in blocks] == [MAINNET_BLOCK, MAINNET_BLOCK + 1]


@pytest.mark.parametrize(
    ("http_status", "raw_body", "error"),
    [
        (503, None, NodeUnavailable),
        (404, None, BadNodeAnswer),
        (None, b"<html>gateway</html>", BadNodeAnswer),
        (None, b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "no"}}', BadNodeAnswer),
    ],
)
async def test_transport_failures(http_status: int | None, raw_body: bytes | None, error: type[Exception]) -> None:
    async with RecordedNode(mainnet_17173049()) as node:
        source = EvmSource(config(node.url, {"USDT": USDT}))
        await source.open()
        try:
            node.http_status, node.raw_body = http_status, raw_body
            with pytest.raises(error, match="chain eth"):
                await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
            with pytest.raises(error, match="chain eth"):
                await source.tip()
            with pytest.raises(error, match="chain eth"):
                await source.hash_at(MAINNET_BLOCK)
        finally:
            await source.close()
        fresh = EvmSource(config(node.url, {"USDT": USDT}))
        with pytest.raises(error, match="chain eth"):
            await fresh.open()
        await fresh.close()
