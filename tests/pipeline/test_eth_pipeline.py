"""Ethereum end to end on a real anvil node: source, follower, matcher and store together.

Live following and replay of the same blocks must give exactly the same matches; reorgs retract;
a follower stopped for many blocks catches up with no gap; revocation time decides alert or deposit.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from depositwatch.config import ChainConfig, TokenConfig
from depositwatch.devnet import (
    Anvil,
    deploy_nft,
    deploy_token,
    failing_transfer,
    impersonate,
    mint_nft,
    mint_token,
    reorg,
    send_eth,
    send_token,
    send_transaction,
    transfer_nft,
    wait_receipt,
)
from depositwatch.follower import Follower
from depositwatch.models import AddressEntry, AddressStatus, Block
from depositwatch.pipeline import make_source
from depositwatch.registry import AddressRegistry
from depositwatch.replay import replay
from depositwatch.store import Scope, SqlStore
from tests.pipeline.rigs import live_follower

CHAIN_ID = 31337


@dataclass
class World:
    node: Anvil
    usdt: str
    usdc: str
    nft: str
    customer: str
    attacker: str
    revoked: str
    revoked_later: str
    active: str


def key(address: str) -> bytes:
    return bytes.fromhex(address[2:])


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with Anvil(chain_id=CHAIN_ID) as node:
        w3 = node.w3
        deployer, customer, attacker = (node.accounts[i].address for i in (0, 1, 9))
        usdt = await deploy_token(w3, deployer, "USDT", 6)
        usdc = await deploy_token(w3, deployer, "USDC", 18)
        nft = await deploy_nft(w3, deployer)
        for token, amount in ((usdt, 10**12), (usdc, 10**24)):
            await wait_receipt(w3, await mint_token(w3, token, deployer, customer, amount))
        yield World(
            node,
            usdt,
            usdc,
            nft,
            customer,
            attacker,
            revoked="0x" + "a1" * 20,
            revoked_later="0x" + "b2" * 20,
            active="0x" + "c3" * 20,
        )


def chain(world: World, **overrides: object) -> ChainConfig:
    settings: dict[str, object] = {
        "name": "eth",
        "kind": "evm",
        "chain_id": CHAIN_ID,
        "rpc_urls": [world.node.http_url],
        "tokens": [
            TokenConfig(symbol="USDT", contract=world.usdt, decimals=6),
            TokenConfig(symbol="USDC", contract=world.usdc, decimals=18),
        ],
        "confirmations": 2,
        "batch_blocks": 5,
        "poll_interval": 0.05,
        "getlogs_max_range": 7,
    }
    settings.update(overrides)
    return ChainConfig.model_validate(settings)


async def book(store: SqlStore, world: World) -> None:
    now = int(time.time())
    entries = [
        AddressEntry("eth", world.revoked, key(world.revoked), AddressStatus.REVOKED, "r1", "cust-r1", now - 3600),
        AddressEntry(
            "eth", world.revoked_later, key(world.revoked_later), AddressStatus.REVOKED, "r2", "cust-r2", now + 86_400
        ),
        AddressEntry("eth", world.active, key(world.active), AddressStatus.ACTIVE, "a1", "cust-a1"),
        # a contract that rejects ETH: a transfer to it reverts (status 0) while carrying value
        AddressEntry("eth", world.nft, key(world.nft), AddressStatus.REVOKED, "nft", "cust-nft", now - 3600),
    ]
    await store.import_addresses(list(enumerate(entries, start=2)))


def follower(world: World, store: SqlStore, config: ChainConfig, registry: AddressRegistry, start: int) -> Follower:
    return live_follower(make_source(config), store, config, registry, start)


async def drain(f: Follower) -> None:
    while await f.step():
        pass


def summary(rows: list[dict[str, object]]) -> set[tuple[object, ...]]:
    return {(r["kind"], r["txid"], r["index"] if "index" in r else r["idx"], str(r["amount"])) for r in rows}


async def scenario(world: World) -> dict[str, tuple[str, str | None]]:
    """Every case of the matcher once; returns the expected matches: txid → (kind, extra)."""
    w3, customer = world.node.w3, world.customer
    expected: dict[str, tuple[str, str | None]] = {}

    async def tx(coro: object) -> str:
        txid = await coro  # type: ignore[misc]
        await wait_receipt(w3, txid)
        return str(txid)

    expected[await tx(send_eth(w3, customer, world.revoked, 10**18))] = ("revoked_incoming", None)
    expected[await tx(send_token(w3, world.usdt, customer, world.revoked, 250 * 10**6))] = ("revoked_incoming", "USDT")
    expected[await tx(send_eth(w3, customer, world.active, 2 * 10**18))] = ("deposit", None)
    expected[await tx(send_token(w3, world.usdc, customer, world.active, 5 * 10**18))] = ("deposit", "USDC")
    # revoked in the future: still an ordinary deposit at this block's time
    expected[await tx(send_eth(w3, customer, world.revoked_later, 3))] = ("deposit", None)
    # the sweep: the leaked key moves the money out
    await impersonate(w3, world.revoked)
    expected[await tx(send_eth(w3, world.revoked, world.attacker, 10**17))] = ("revoked_outgoing", None)
    expected[await tx(send_token(w3, world.usdt, world.revoked, world.attacker, 250 * 10**6))] = (
        "revoked_outgoing",
        "USDT",
    )
    # no match: a reverted token transfer, ETH to a contract that reverts, an ERC-721 transfer, a zero transfer
    receipt = await wait_receipt(w3, await failing_transfer(w3, world.usdt, customer, world.revoked, 7))
    assert int(receipt["status"], 16) == 0
    receipt = await wait_receipt(w3, await send_transaction(w3, customer, world.nft, value=10**15, gas=100_000))
    assert int(receipt["status"], 16) == 0
    await tx(mint_nft(w3, world.nft, customer, customer, 1))
    await tx(transfer_nft(w3, world.nft, customer, world.revoked, 1))
    await tx(send_eth(w3, customer, world.active, 0))
    return expected


async def test_live_and_replay_find_exactly_the_same(world: World, store: SqlStore) -> None:
    """Every scenario case is classified right, and replay of the range equals live following of it."""
    await book(store, world)
    start = await world.node.block_number() + 1
    expected = await scenario(world)
    end = await world.node.block_number()
    config = chain(world)
    registry = await AddressRegistry.load(store)
    live = follower(world, store, config, registry, start)
    await live.source.open()
    await live.start()
    await drain(live)
    live_rows = await store.matches(Scope.live())
    await live.source.close()
    assert {r["txid"]: r["kind"] for r in live_rows} == {t: k for t, (k, _) in expected.items()}
    assets = {r["txid"]: r["asset_symbol"] for r in live_rows}
    assert all(assets[t] == (symbol or "ETH") for t, (_, symbol) in expected.items())
    owners = {r["txid"]: r["owner"] for r in live_rows if r["kind"] != "deposit"}
    assert set(owners.values()) == {"cust-r1"}

    out = io.StringIO()
    result = await replay(chain=config, store=store, start=start, stop=end, output=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert summary(lines) == summary(live_rows)
    assert result.blocks == end - start + 1
    usdt_in = next(x for x in lines if x["kind"] == "revoked_incoming" and x["asset"] == "USDT")
    assert usdt_in["amount"] == "250000000" and usdt_in["amount_decimal"] == "250"
    assert usdt_in["index"] is not None and usdt_in["label"] == "r1" and usdt_in["owner"] == "cust-r1"
    eth_in = next(x for x in lines if x["kind"] == "revoked_incoming" and x["asset"] == "ETH")
    assert eth_in["index"] is None and eth_in["amount_decimal"] == "1"
    assert eth_in["to"].lower() == world.revoked and eth_in["from"] == world.customer
    # replays are quiet unless asked; live sends revoked alerts only
    kinds = {m.kind for m in await store.outbox.messages()}
    assert kinds <= {"revoked_incoming", "revoked_outgoing", "deposit"}
    assert all(m.payload.count('"mode":"live"') == 1 for m in await store.outbox.messages())


async def test_replay_resumes_after_interruption(world: World, store: SqlStore) -> None:
    """An interrupted replay continues from its own cursor and its output is still whole."""
    await book(store, world)
    start = await world.node.block_number() + 1
    expected = await scenario(world)
    end = await world.node.block_number()
    config = chain(world, batch_blocks=2)
    first = io.StringIO()

    class Interrupt(Exception):
        pass

    calls = 0

    async def interrupt(_: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        await replay(chain=config, store=store, start=start, stop=end, output=first, on_commit=interrupt)
    second = io.StringIO()
    result = await replay(chain=config, store=store, start=start, stop=end, output=second)
    assert result.resumed_from is not None and result.resumed_from >= start
    assert {json.loads(line)["txid"] for line in second.getvalue().splitlines()} == set(expected)


async def test_reorg_retracts_the_orphaned_alert(world: World, store: SqlStore) -> None:
    """anvil replaces the block holding a revoked incoming transfer: the alert is retracted, same id."""
    await book(store, world)
    w3 = world.node.w3
    start = await world.node.block_number() + 1
    txid = await send_eth(w3, world.customer, world.revoked, 10**18)
    await wait_receipt(w3, txid)
    await send_eth(w3, world.customer, world.active, 1)
    config = chain(world)
    f = follower(world, store, config, await AddressRegistry.load(store), start)
    await f.source.open()
    await f.start()
    await drain(f)
    before = f.cursor
    await reorg(w3, 2)  # the last two blocks replaced by empty ones
    await send_eth(w3, world.customer, world.customer, 1)
    await drain(f)
    await drain(f)
    await f.source.close()
    assert f.cursor is not None and before is not None and f.cursor.hash != before.hash
    messages = [m for m in await store.outbox.messages() if m.kind == "revoked_incoming"]
    assert [m.event for m in sorted(messages, key=lambda m: m.rev)] == ["detected", "confirmed", "retracted"]
    assert len({m.alert_id for m in messages}) == 1
    status = {r["txid"]: r["status"] for r in await store.matches(Scope.live())}
    assert status[txid] == "retracted"


async def test_catch_up_after_long_downtime(world: World, store: SqlStore) -> None:
    """Stopped for hundreds of blocks, the follower resumes from its cursor and misses nothing."""
    await book(store, world)
    w3 = world.node.w3
    config = chain(world, batch_blocks=50, getlogs_max_range=100)
    start = await world.node.block_number() + 1
    await wait_receipt(w3, await send_eth(w3, world.customer, world.revoked, 1))
    f = follower(world, store, config, await AddressRegistry.load(store), start)
    await f.source.open()
    await f.start()
    await drain(f)
    await f.source.close()
    sent = []
    for i in range(6):
        await world.node.mine(60)
        txid = await send_token(w3, world.usdt, world.customer, world.revoked, 1000 + i)
        await wait_receipt(w3, txid)
        sent.append(txid)
    tip = await world.node.block_number()
    g = follower(world, store, config, await AddressRegistry.load(store), start)
    await g.source.open()
    cursor = await g.start()
    assert cursor.height == start
    await drain(g)
    assert g.cursor is not None and g.cursor.height == tip
    found = {r["txid"] for r in await store.matches(Scope.live())}
    assert set(sent) <= found and len(found) == 7
    await g.source.close()


async def test_live_log_filter_keeps_up_with_book_changes(world: World, store: SqlStore) -> None:
    """A small book is filtered on the node (topic lists); an address added while the source was
    fetching with the old keys is not missed: the follower reads that range again with the new ones."""
    from depositwatch.chains.evm import EvmSource
    from depositwatch.pipeline import attach

    await book(store, world)
    w3, customer = world.node.w3, world.customer
    newcomer = "0x" + "d4" * 20
    start = await world.node.block_number() + 1
    before = await wait_receipt(w3, await send_token(w3, world.usdt, customer, newcomer, 11))
    config = chain(world)
    registry = await AddressRegistry.load(store)
    live = follower(world, store, config, registry, start)
    source = live.source
    assert isinstance(source, EvmSource)
    attach(source, registry, None)
    await source.open()
    await live.start()
    await drain(live)
    assert await store.matches(Scope.live()) == []  # not watched yet: nothing

    # The address is revoked while a fetch with the old keys is under way (the node leaves its logs out).
    during = await wait_receipt(w3, await send_token(w3, world.usdt, customer, newcomer, 22))
    fetch, calls = source.fetch, []

    async def fetch_then_revoke(begin: int, stop: int) -> list[Block]:
        blocks = await fetch(begin, stop)
        calls.append(begin)
        if len(calls) == 1:
            assert not any(t.to_address == newcomer for b in blocks for t in b.transfers)
            entry = AddressEntry("eth", newcomer, key(newcomer), AddressStatus.REVOKED, "n", "cust-n", 1)
            await store.import_addresses([(2, entry)])
            assert await registry.reload(store)
        return blocks

    source.fetch = fetch_then_revoke  # type: ignore[method-assign]
    await drain(live)
    await source.close()
    assert calls[:2] == [calls[0], calls[0]]  # the same range, read again with the new keys
    rows = await store.matches(Scope.live())
    assert [(r["kind"], r["txid"], r["amount"]) for r in rows] == [
        ("revoked_incoming", during["transactionHash"], "22")
    ]
    assert before["blockNumber"] != during["blockNumber"]
