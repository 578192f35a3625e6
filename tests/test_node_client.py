"""The node clients against hostile answers: field domains, block membership, address words, deep JSON,
oversized answers, redirects, failover and chain switches (issue 13, items 1, 2, 4, 6, 7, 12)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.evm import EvmSource
from depositwatch.config import ChainConfig, Secret
from tests.btcnode import BitcoinRegtestServer
from tests.proof.faultproxy import Fault, FaultProxy
from tests.recorded_rpc import MAINNET_BLOCK, RecordedNode, mainnet_17173049

USDT = "0xdac17f958d2ee523a2206206994597c13d831ec7"
USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
TOO_WIDE = "0x" + "f" * 64  # 2^256 - 1: a uint256, but no height, time or index


def evm_config(*urls: str, **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "eth",
        "kind": "evm",
        "chain_id": 1,
        "rpc_urls": list(urls),
        "tokens": [{"symbol": s, "contract": c, "decimals": 6} for s, c in (("USDT", USDT), ("USDC", USDC))],
    }
    settings.update(overrides)
    return ChainConfig(**settings)


def btc_config(*urls: str, node: BitcoinRegtestServer, **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "btc",
        "kind": "bitcoin",
        "network": "regtest",
        "rpc_urls": list(urls),
        "rpc_user": node.user,
        "rpc_password": Secret(value=node.password),
        "poll_interval": 0.05,
    }
    settings.update(overrides)
    return ChainConfig(**settings)


# --- item 2: every field bounded to its domain at the source -----------------------------------------


def _block_field(name: str, value: str) -> Callable[[str, list[Any], Any], Any]:
    def tamper(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockByNumber" and isinstance(result, dict):
            result[name] = value
        return result

    return tamper


def _first_log_field(name: str, value: Any) -> Callable[[str, list[Any], Any], Any]:
    def tamper(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs" and result:
            result[0][name] = value
        return result

    return tamper


def _first_tx_field(name: str, value: Any) -> Callable[[str, list[Any], Any], Any]:
    def tamper(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockByNumber" and isinstance(result, dict) and result["transactions"]:
            tx = result["transactions"][0]
            if isinstance(tx, dict):
                tx[name] = value
        return result

    return tamper


def _first_receipt_field(name: str, value: Any) -> Callable[[str, list[Any], Any], Any]:
    def tamper(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockReceipts" and result:
            result[0][name] = value
        return result

    return tamper


def _topic_word(position: int) -> Callable[[str, list[Any], Any], Any]:
    def tamper(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs":
            for entry in result:
                if len(entry["topics"]) == 3:
                    topic = entry["topics"][position]
                    entry["topics"][position] = "0x" + "00" * 11 + "01" + topic[26:]
                    break
        return result

    return tamper


@pytest.mark.parametrize(
    ("tamper", "method", "detail"),
    [
        (_block_field("timestamp", TOO_WIDE), "eth_getBlockByNumber", "timestamp is 0xffff"),
        (_first_log_field("logIndex", TOO_WIDE), "eth_getLogs", "logIndex is 0xffff"),
        (_first_log_field("logIndex", hex(2**63)), "eth_getLogs", "logIndex is 0x8000000000000000"),
        (_first_tx_field("blockHash", "0x" + "ab" * 32), "eth_getBlockByNumber", "transaction 0 names block 0xabab"),
        (_first_tx_field("blockNumber", hex(MAINNET_BLOCK + 1)), "eth_getBlockByNumber", "names block number"),
        (_first_receipt_field("blockNumber", hex(MAINNET_BLOCK - 1)), "eth_getBlockReceipts", "names block number"),
        (_topic_word(1), "eth_getLogs", "topic 1 (from)"),
        (_topic_word(2), "eth_getLogs", "topic 2 (to)"),
    ],
)
async def test_evm_out_of_domain_and_foreign_fields_are_refused(
    tamper: Callable[..., Any], method: str, detail: str
) -> None:
    async with RecordedNode(mainnet_17173049()) as node:
        source = EvmSource(evm_config(node.url))
        await source.open()
        node.tamper = tamper
        try:
            with pytest.raises(BadNodeAnswer) as caught:
                await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
        finally:
            await source.close()
    message = str(caught.value)
    assert method in message
    assert str(MAINNET_BLOCK) in message
    assert detail in message


async def test_evm_values_up_to_uint256_are_accepted() -> None:
    def huge_value(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockByNumber" and isinstance(result, dict):
            for tx in result["transactions"]:
                if tx["value"] != "0x0":
                    tx["value"] = TOO_WIDE
                    break
        return result

    async with RecordedNode(mainnet_17173049(), tamper=huge_value) as node:
        source = EvmSource(evm_config(node.url))
        await source.open()
        try:
            (block,) = await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
        finally:
            await source.close()
    assert max(t.amount for t in block.transfers) == 2**256 - 1


@pytest.mark.parametrize("height", [2**63, 2**64 - 1, -1])
async def test_bitcoin_heights_out_of_domain_are_refused(height: int) -> None:
    async with BitcoinRegtestServer() as node, FaultProxy(node.url) as proxy:
        node.chain.mine(3)
        source = BitcoinSource(btc_config(proxy.url, node=node), retry_for=0.5)
        await source.open()
        try:
            best = node.chain.tip.hash
            proxy.set(Fault("answer", methods=frozenset({"getblockheader"}), result={"hash": best, "height": height}))
            with pytest.raises(BadNodeAnswer) as caught:
                await source.tip()
        finally:
            await source.close()
    assert f"getblockheader {best}" in str(caught.value)
    assert "is not a block height" in str(caught.value)
