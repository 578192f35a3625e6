"""EvmSource against a real anvil node (`bash scripts/install-anvil.sh` installs it)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from depositwatch.chains.base import NodeUnavailable, WrongChain
from depositwatch.chains.evm import EvmSource
from depositwatch.config import ChainConfig
from depositwatch.devnet import (
    Anvil,
    deploy_nft,
    deploy_token,
    failing_transfer,
    forward_eth,
    impersonate,
    mint_nft,
    mint_token,
    odd_transfer_log,
    reorg,
    send_eth,
    send_token,
    send_token_many,
    send_transaction,
    set_balance,
    snapshot,
    transfer_nft,
    wait_receipt,
)
from depositwatch.models import Block
from tests.util import eventually

CHAIN_ID = 31337
ZERO = "0x0000000000000000000000000000000000000000"
REVOKED = "0x000000000000000000000000000000000000dEaD"

# (height, txid, index, symbol, from, to, amount)
Row = tuple[int, str, int | None, str, str, str, int]


def rows(blocks: list[Block]) -> list[Row]:
    return [
        (b.height, t.txid, t.index, t.asset.symbol, t.from_address or "", t.to_address or "", t.amount)
        for b in blocks
        for t in b.transfers
    ]


def chain_config(node: Anvil, tokens: dict[str, tuple[str, int]], **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "devnet",
        "kind": "evm",
        "chain_id": CHAIN_ID,
        "rpc_urls": [node.http_url],
        "tokens": [{"symbol": s, "contract": c, "decimals": d} for s, (c, d) in tokens.items()],
        "poll_interval": 0.1,
    }
    settings.update(overrides)
    return ChainConfig(**settings)


@pytest.fixture
async def node() -> AsyncIterator[Anvil]:
    async with Anvil(chain_id=CHAIN_ID) as started:
        yield started


async def opened(config: ChainConfig) -> EvmSource:
    source = EvmSource(config)
    await source.open()
    return source


@dataclass
class Scenario:
    tokens: dict[str, tuple[str, int]]
    expected: list[Row] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)  # transactions that must yield no transfer


async def _expect_eth(node: Anvil, sc: Scenario, tx_hash: str, sender: str, to: str, value: int) -> None:
    receipt = await wait_receipt(node.w3, tx_hash)
    assert receipt["status"] == "0x1"
    sc.expected.append((int(receipt["blockNumber"], 16), tx_hash, None, "ETH", sender, to, value))


async def _expect_token(
    node: Anvil, sc: Scenario, tx_hash: str, symbol: str, moves: list[tuple[str, str, int]]
) -> None:
    receipt = await wait_receipt(node.w3, tx_hash)
    assert receipt["status"] == "0x1"
    assert len(receipt["logs"]) == len(moves)
    height = int(receipt["blockNumber"], 16)
    for entry, (sender, to, amount) in zip(receipt["logs"], moves, strict=True):
        sc.expected.append((height, tx_hash, int(entry["logIndex"], 16), symbol, sender, to, amount))


async def _silent(node: Anvil, sc: Scenario, tx_hash: str, status: str) -> None:
    receipt = await wait_receipt(node.w3, tx_hash)
    assert receipt["status"] == status
    sc.silent.append(tx_hash)


async def build_scenario(node: Anvil) -> Scenario:
    """Every case on one chain, one transaction a block; the expected transfers written down as we go."""
    w3 = node.w3
    alice, bob, carol, dave = (a.address for a in node.accounts[:4])
    usdt = await deploy_token(w3, alice, "USDT", 6)
    dai = await deploy_token(w3, alice, "DAI", 18)
    other = await deploy_token(w3, alice, "OTHER", 18)  # not configured
    nft = await deploy_nft(w3, alice)
    sc = Scenario(tokens={"USDT": (usdt, 6), "DAI": (dai, 18)})

    tx = await mint_token(w3, usdt, alice, alice, 10**12)
    await _expect_token(node, sc, tx, "USDT", [(ZERO, alice, 10**12)])
    tx = await send_eth(w3, alice, REVOKED, 3 * 10**18)
    await _expect_eth(node, sc, tx, alice, REVOKED, 3 * 10**18)
    tx = await send_eth(w3, alice, bob, 1)
    await _expect_eth(node, sc, tx, alice, bob, 1)
    tx = await send_token(w3, usdt, alice, REVOKED, 2_500_000)
    await _expect_token(node, sc, tx, "USDT", [(alice, REVOKED, 2_500_000)])
    tx = await mint_token(w3, dai, alice, bob, 5 * 10**18)
    await _expect_token(node, sc, tx, "DAI", [(ZERO, bob, 5 * 10**18)])
    tx = await send_token(w3, dai, bob, carol, 10**18 + 1)
    await _expect_token(node, sc, tx, "DAI", [(bob, carol, 10**18 + 1)])

    recipients = [node.accounts[4 + n % 6].address for n in range(40)]
    amounts = [1000 + n for n in range(40)]
    tx = await send_token_many(w3, usdt, alice, recipients, amounts)
    await _expect_token(node, sc, tx, "USDT", [(alice, r, a) for r, a in zip(recipients, amounts, strict=True)])

    # a reverted transaction carrying value: the token has no receive function
    await _silent(node, sc, await send_eth(w3, alice, usdt, 10**17, gas=100_000), "0x0")
    # a transfer whose transaction reverts after emitting the log
    await _silent(node, sc, await failing_transfer(w3, usdt, alice, carol, 77), "0x0")
    # ERC-721: four topics
    await _silent(node, sc, await mint_nft(w3, nft, alice, bob, 1), "0x1")
    await _silent(node, sc, await transfer_nft(w3, nft, bob, REVOKED, 1), "0x1")
    # a contract creation carrying value (init code: STOP)
    await _silent(node, sc, await send_transaction(w3, alice, None, value=10**15, data="0x00", gas=100_000), "0x1")
    # a Transfer-topic log whose data is not 32 bytes
    await _silent(node, sc, await odd_transfer_log(w3, usdt, alice, carol, 5), "0x1")
    # a token nobody configured
    await mint_token(w3, other, alice, alice, 10)
    await _silent(node, sc, await send_token(w3, other, alice, REVOKED, 10), "0x1")
    # a transaction without value
    await _silent(node, sc, await send_eth(w3, alice, dave, 0), "0x1")

    # the revoked address is swept
    await impersonate(w3, REVOKED)
    tx = await send_eth(w3, REVOKED, dave, 10**18)
    await _expect_eth(node, sc, tx, REVOKED, dave, 10**18)
    tx = await send_token(w3, usdt, REVOKED, dave, 2_500_000)
    await _expect_token(node, sc, tx, "USDT", [(REVOKED, dave, 2_500_000)])
    return sc


async def test_every_case_on_one_chain(node: Anvil) -> None:
    sc = await build_scenario(node)
    source = await opened(chain_config(node, sc.tokens))
    try:
        tip = await source.tip()
        blocks = await source.fetch(0, tip.height + 1)
    finally:
        await source.close()

    assert rows(blocks) == sc.expected
    assert [b.height for b in blocks] == list(range(tip.height + 1))
    assert blocks[-1].hash == tip.hash
    for parent, child in itertools.pairwise(blocks):
        assert child.parent_hash == parent.hash
    seen = {t.txid for b in blocks for t in b.transfers}
    assert not seen & set(sc.silent)

    by_symbol = {t.asset.symbol: t.asset for b in blocks for t in b.transfers}
    assert by_symbol["ETH"].contract is None
    assert by_symbol["ETH"].decimals == 18
    assert (by_symbol["USDT"].contract, by_symbol["USDT"].decimals) == sc.tokens["USDT"]
    assert (by_symbol["DAI"].contract, by_symbol["DAI"].decimals) == sc.tokens["DAI"]
    for block in blocks:
        raw = await node.rpc("eth_getBlockByNumber", hex(block.height), False)
        assert block.hash == raw["hash"]
        assert block.time == int(raw["timestamp"], 16)
        assert block.tx_count == len(raw["transactions"])
        for transfer in block.transfers:
            assert transfer.to_key == bytes.fromhex(transfer.to_address[2:])  # type: ignore[index]
            assert transfer.from_key == bytes.fromhex(transfer.from_address[2:])  # type: ignore[index]
            assert transfer.txid == transfer.txid.lower()


async def test_splitting_the_range_changes_nothing(node: Anvil) -> None:
    sc = await build_scenario(node)
    whole = await opened(chain_config(node, sc.tokens, getlogs_max_range=1000, batch_blocks=50))
    split = await opened(chain_config(node, sc.tokens, getlogs_max_range=3, batch_blocks=2, max_in_flight=1))
    try:
        tip = (await whole.tip()).height
        assert await split.fetch(0, tip + 1) == await whole.fetch(0, tip + 1)
        # and pieces of the range, fetched separately, add up to the same
        pieces = [b for low in range(0, tip + 1, 7) for b in await split.fetch(low, min(low + 7, tip + 1))]
        assert pieces == await whole.fetch(0, tip + 1)
    finally:
        await whole.close()
        await split.close()


async def test_read_ahead_gives_the_same_blocks_and_follows_the_caller(node: Anvil) -> None:
    """Ranges read ahead are what a plain fetch gives; a fetch off the path read ahead, a new log
    filter or a close drops them; ranges are never read ahead past the node's tip."""
    sc = await build_scenario(node)
    plain = await opened(chain_config(node, sc.tokens, read_ahead=0))
    ahead = await opened(chain_config(node, sc.tokens, read_ahead=3))
    try:
        tip = (await plain.tip()).height
        expected = await plain.fetch(0, tip + 1)
        assert plain._ahead == []
        got = await ahead.fetch(0, 3)
        assert [(r.start, r.stop) for r in ahead._ahead] == [(3, 6), (6, 9), (9, 12)]
        first_ahead = ahead._ahead[0].task
        got += await ahead.fetch(3, 6)
        assert first_ahead.done() and [(r.start, r.stop) for r in ahead._ahead] == [(6, 9), (9, 12), (12, 15)]
        got += await ahead.fetch(6, 8)  # shorter than the range read ahead: the rest is dropped
        assert [(r.start, r.stop) for r in ahead._ahead] == [(8, 10), (10, 12), (12, 14)]
        dropped = list(ahead._ahead)
        got += await ahead.fetch(8, 9)
        got += await ahead.fetch(9, 10)  # back on a path of its own
        for low in range(10, tip + 1, 3):
            got += await ahead.fetch(low, min(low + 3, tip + 1))
            assert all(r.stop <= tip + 1 for r in ahead._ahead)
        assert got == expected
        assert all(r.task.done() for r in dropped)
        assert ahead._ahead == []  # the last range reached the tip: nothing more to read
        await ahead.fetch(0, 3)
        pending = list(ahead._ahead)
        assert pending
        ahead.set_log_filter([bytes.fromhex(REVOKED[2:])])
        assert ahead._ahead == []
        await asyncio.sleep(0)
        assert all(r.task.cancelled() or r.task.done() for r in pending)
        narrowed = await ahead.fetch(0, tip + 1)
        key = REVOKED.lower()
        assert rows(narrowed) == [r for r in rows(expected) if key in (r[4].lower(), r[5].lower())]
        await ahead.fetch(0, 3)
        assert ahead._ahead
    finally:
        await plain.close()
        await ahead.close()
    assert ahead._ahead == []


async def test_receipts_one_transaction_at_a_time_give_the_same_blocks(node: Anvil) -> None:
    sc = await build_scenario(node)
    source = await opened(chain_config(node, sc.tokens))
    try:
        assert source.block_receipts
        tip = (await source.tip()).height
        with_block_receipts = await source.fetch(0, tip + 1)
        source.block_receipts = False  # as on a node without eth_getBlockReceipts
        assert await source.fetch(0, tip + 1) == with_block_receipts
    finally:
        await source.close()


async def test_many_transactions_in_one_block_keep_transaction_then_log_order() -> None:
    async with Anvil(chain_id=CHAIN_ID, no_mining=True) as node:
        w3 = node.w3
        alice, bob, carol = (a.address for a in node.accounts[:3])
        usdt = await deploy_token(w3, alice, "USDT", 6)
        await mint_token(w3, usdt, alice, alice, 10**9)
        await node.mine()
        first = await send_eth(w3, alice, bob, 5)
        many = await send_token_many(w3, usdt, alice, [bob, carol, bob], [1, 2, 3])
        failed = await send_eth(w3, bob, usdt, 7, gas=100_000)
        last = await send_eth(w3, bob, carol, 9)
        await node.mine()
        height = await node.block_number()
        source = await opened(chain_config(node, {"USDT": (usdt, 6)}))
        try:
            (block,) = await source.fetch(height, height + 1)
        finally:
            await source.close()
        assert block.tx_count == 4
        assert [(t.txid, t.index, t.amount) for t in block.transfers] == [
            (first, None, 5),
            (many, 0, 1),
            (many, 1, 2),
            (many, 2, 3),
            (last, None, 9),
        ]
        assert failed not in {t.txid for t in block.transfers}


async def test_tip_hash_at_identity_and_ranges(node: Anvil) -> None:
    await node.mine(5)
    source = await opened(chain_config(node, {}))
    try:
        assert await source.identity() == str(CHAIN_ID)
        tip = await source.tip()
        assert tip.height == 5
        assert await source.hash_at(5) == tip.hash
        assert await source.hash_at(6) is None
        assert await source.hash_at(0) == (await node.rpc("eth_getBlockByNumber", "0x0", False))["hash"]
        assert await source.fetch(3, 3) == []
        assert await source.fetch(6, 10) == []
        assert [b.height for b in await source.fetch(4, 100)] == [4, 5]
        with pytest.raises(ValueError):
            await source.hash_at(-1)
    finally:
        await source.close()


async def test_snapshot_revert_reorg_changes_the_block(node: Anvil) -> None:
    w3 = node.w3
    alice, bob, carol = (a.address for a in node.accounts[:3])
    await node.mine(3)
    saved = await snapshot(w3)
    old_tx = await send_eth(w3, alice, bob, 1)
    await wait_receipt(w3, old_tx)  # under load the node's tip can trail the returned hash
    source = await opened(chain_config(node, {}))
    try:
        (old,) = await source.fetch(4, 5)
        assert [t.txid for t in old.transfers] == [old_tx]
        assert await node.revert(saved)
        assert await source.hash_at(4) is None
        new_tx = await send_eth(w3, alice, carol, 2)
        await wait_receipt(w3, new_tx)
        (new,) = await source.fetch(4, 5)
        assert new.hash != old.hash
        assert new.parent_hash == old.parent_hash
        assert await source.hash_at(4) == new.hash
        assert [(t.txid, t.to_address) for t in new.transfers] == [(new_tx, carol)]
    finally:
        await source.close()


async def test_anvil_reorg_changes_the_blocks(node: Anvil) -> None:
    w3 = node.w3
    alice, bob = node.accounts[0].address, node.accounts[1].address
    for n in range(4):
        await wait_receipt(w3, await send_eth(w3, alice, bob, n + 1))
    source = await opened(chain_config(node, {}))
    try:
        before = await source.fetch(1, 5)
        await reorg(w3, 2, [({"from": alice, "to": REVOKED, "value": hex(42)}, 1)])
        after = await source.fetch(1, 5)
        assert after[:2] == before[:2]
        assert [b.hash for b in after[2:]] != [b.hash for b in before[2:]]
        assert after[2].transfers == ()
        assert [(t.to_address, t.amount) for t in after[3].transfers] == [(REVOKED, 42)]
    finally:
        await source.close()


async def test_wrong_chain_id_is_refused(node: Anvil) -> None:
    source = EvmSource(chain_config(node, {}, chain_id=1))
    try:
        with pytest.raises(WrongChain, match=rf"node at http://127\.0\.0\.1:\d+/… reports chain id {CHAIN_ID}, "):
            await source.open()
    finally:
        await source.close()


async def test_passwords_in_urls_are_not_shown(node: Anvil) -> None:
    url = node.http_url.replace("http://", "http://user:hunter2@")
    source = EvmSource(chain_config(node, {}, chain_id=1, rpc_urls=[url]))
    try:
        with pytest.raises(WrongChain) as caught:
            await source.open()
        assert "hunter2" not in str(caught.value)
    finally:
        await source.close()


async def test_a_stopped_node_is_unavailable() -> None:
    node = Anvil(chain_id=CHAIN_ID)
    await node.start()
    source = await opened(chain_config(node, {}))
    try:
        await node.mine(2)
        assert len(await source.fetch(0, 3)) == 3
        await node.stop()
        with pytest.raises(NodeUnavailable, match="devnet"):
            await source.fetch(0, 3)
        with pytest.raises(NodeUnavailable):
            await source.tip()
        with pytest.raises(NodeUnavailable):
            await source.hash_at(1)
    finally:
        await source.close()
        await node.stop()
    fresh = EvmSource(chain_config(node, {}))
    with pytest.raises(NodeUnavailable):
        await fresh.open()
    await fresh.close()


async def test_internal_transfers_with_traces(node: Anvil) -> None:
    w3 = node.w3
    alice, bob, carol = (a.address for a in node.accounts[:3])
    forwarder = await deploy_token(w3, alice, "FWD", 18)
    ok = await forward_eth(w3, forwarder, alice, [bob, REVOKED], [7, 8])
    assert (await wait_receipt(w3, ok))["status"] == "0x1"
    # forwarding to a contract without a receive function fails: nothing moves
    failed = await forward_eth(w3, forwarder, alice, [carol, forwarder], [1, 2])
    assert (await wait_receipt(w3, failed))["status"] == "0x0"
    tip = await node.block_number()

    traced = await opened(chain_config(node, {}, traces=True))
    plain = await opened(chain_config(node, {}))
    try:
        assert traced.traces
        assert not plain.traces
        with_traces = rows(await traced.fetch(0, tip + 1))
        without = rows(await plain.fetch(0, tip + 1))
    finally:
        await traced.close()
        await plain.close()
    top = (tip - 1, ok, None, "ETH", alice, forwarder, 15)
    assert without == [top]
    assert with_traces == [
        top,
        (tip - 1, ok, -1, "ETH", forwarder, bob, 7),
        (tip - 1, ok, -2, "ETH", forwarder, REVOKED, 8),
    ]


async def test_wait_for_head_polls_without_websocket(node: Anvil) -> None:
    source = await opened(chain_config(node, {}, poll_interval=0.2))
    try:
        started = time.monotonic()
        await source.wait_for_head(30)
        assert 0.15 < time.monotonic() - started < 5
        started = time.monotonic()
        await source.wait_for_head(0.05)
        assert time.monotonic() - started < 1
    finally:
        await source.close()


async def _woken_by(source: EvmSource, mining: Coroutine[Any, Any, Any]) -> None:
    """`wait_for_head` returns within 10 s, woken by the head `mining` (run meanwhile) makes."""
    task = asyncio.create_task(mining)
    started = time.monotonic()
    await source.wait_for_head(30)
    assert time.monotonic() - started < 10
    await task


async def _wait_until_subscribed(source: EvmSource) -> None:
    await eventually(lambda: source._ws_live, 10, "the newHeads subscription")


async def test_wait_for_head_wakes_on_a_new_block_over_websocket(node: Anvil) -> None:
    source = await opened(chain_config(node, {}, ws_url=node.ws_url, poll_interval=60))
    try:
        await _wait_until_subscribed(source)
        await source.wait_for_head(0.01)  # the wake-up given at subscription
        started = time.monotonic()
        await source.wait_for_head(0.3)  # nothing comes: the timeout
        assert 0.25 < time.monotonic() - started < 5

        async def later() -> None:
            await asyncio.sleep(0.3)
            await node.mine()

        await _woken_by(source, later())
    finally:
        await source.close()


async def test_websocket_subscribes_again_after_the_node_restarts() -> None:
    node = Anvil(chain_id=CHAIN_ID)
    await node.start()
    node.fixed_port = node.port
    source = await opened(chain_config(node, {}, ws_url=node.ws_url, poll_interval=60))
    try:
        await _wait_until_subscribed(source)
        await node.stop()
        await eventually(lambda: not source._ws_live, 5, "the subscription seen lost")
        await node.start()
        await _wait_until_subscribed(source)
        await source.wait_for_head(0.01)
        await _woken_by(source, node.mine())
    finally:
        await source.close()
        await node.stop()


async def test_sweep_from_a_revoked_address_with_set_balance(node: Anvil) -> None:
    w3 = node.w3
    dave = node.accounts[3].address
    await set_balance(w3, REVOKED, 10**18)
    await impersonate(w3, REVOKED)
    tx = await send_eth(w3, REVOKED, dave, 10**17)
    source = await opened(chain_config(node, {}))
    try:
        tip = (await source.tip()).height
        (block,) = await source.fetch(tip, tip + 1)
    finally:
        await source.close()
    (transfer,) = block.transfers
    assert (transfer.txid, transfer.from_address, transfer.to_address) == (tx, REVOKED, dave)
    assert transfer.from_key == bytes.fromhex(REVOKED[2:])
