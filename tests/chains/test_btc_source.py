"""BitcoinSource against the regtest stand-in (`tests/btcnode`): real serialized blocks over real HTTP
with auth, every script type, REST, the watched path, faults (warm-up, outage, failover, bad auth,
wrong network) and hostile answers."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from depositwatch.addresses import parse_bitcoin_address
from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable, WrongChain
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_prevouts import prevouts_paying
from depositwatch.chains.btc_rpc import RpcAuthError
from depositwatch.config import ChainConfig, Secret, redact_url
from depositwatch.matcher import match_block
from depositwatch.models import AddressStatus, Spend
from depositwatch.registry import AddressRegistry
from depositwatch.store.base import RegistryRow
from depositwatch.sweeps import OutputTracker
from tests.btcnode import (
    REGTEST_GENESIS_HASH,
    BitcoinRegtestServer,
    RegtestChain,
    op_return,
    p2pkh,
    p2sh,
    p2tr,
    p2wpkh,
    p2wsh,
    script_to_address,
)
from tests.util import eventually

# One script of each type, distinct per seed.
SCRIPT_MAKERS: dict[str, Callable[[bytes], bytes]] = {
    "p2pkh": lambda seed: p2pkh(seed[:20]),
    "p2sh": lambda seed: p2sh(seed[:20]),
    "p2wpkh": lambda seed: p2wpkh(seed[:20]),
    "p2wsh": lambda seed: p2wsh(seed[:32]),
    "p2tr": lambda seed: p2tr(seed[:32]),
}


def script_of(kind: str, n: int) -> bytes:
    seed = bytes([n % 251 + 1]) * 32
    return SCRIPT_MAKERS[kind](seed)


def btc_config(node: BitcoinRegtestServer | list[BitcoinRegtestServer], **extra: Any) -> ChainConfig:
    nodes = node if isinstance(node, list) else [node]
    options: dict[str, Any] = {
        "name": "btc",
        "kind": "bitcoin",
        "network": "regtest",
        "rpc_urls": [n.url for n in nodes],
        "rpc_user": nodes[0].user,
        "rpc_password": Secret(value=nodes[0].password),
        "poll_interval": 0.05,
        "confirmations": 3,
        "batch_blocks": 5,
    }
    options.update(extra)
    return ChainConfig(**options)


def source_for(config: ChainConfig, **options: Any) -> BitcoinSource:
    options.setdefault("retry_for", 2.0)
    options.setdefault("backoff_initial", 0.02)
    options.setdefault("backoff_max", 0.1)
    return BitcoinSource(config, **options)


@pytest.fixture
async def node() -> AsyncIterator[BitcoinRegtestServer]:
    async with BitcoinRegtestServer() as server:
        server.chain.mine(101)
        yield server


@pytest.fixture
async def source(node: BitcoinRegtestServer) -> AsyncIterator[BitcoinSource]:
    src = source_for(btc_config(node))
    await src.open()
    yield src
    await src.close()


def pay_every_type(chain: RegtestChain, n: int = 0) -> dict[str, tuple[str, int, bytes, int]]:
    """One transaction paying one output of each script type (plus an OP_RETURN and a zero output)."""
    outputs = [(script_of(kind, n), 10_000 + i) for i, kind in enumerate(SCRIPT_MAKERS)]
    outputs += [(op_return(b"hello"), 0), (p2wpkh(b"\x77" * 20), 0)]
    tx = chain.send(outputs)
    return {kind: (tx.txid, i, script_of(kind, n), 10_000 + i) for i, kind in enumerate(SCRIPT_MAKERS)}


# --- the node's identity and position --------------------------------------------------------------


async def test_identity_tip_and_hashes(node: BitcoinRegtestServer, source: BitcoinSource) -> None:
    assert source.node_chain == "regtest"
    assert await source.identity() == REGTEST_GENESIS_HASH
    tip = await source.tip()
    assert (tip.height, tip.hash) == (101, node.chain.tip.hash)
    assert await source.hash_at(50) == node.chain.block_at(50).hash
    assert await source.hash_at(102) is None
    assert await source.hashes(99, 110) == [node.chain.block_at(h).hash for h in (99, 100, 101)]
    with pytest.raises(ValueError):
        await source.hash_at(-1)


@pytest.mark.parametrize(
    ("node_chain", "network"),
    [("main", "regtest"), ("regtest", "mainnet"), ("signet", "testnet"), ("test", "signet")],
)
async def test_a_node_on_another_network_is_refused(node_chain: str, network: str) -> None:
    async with BitcoinRegtestServer(chain_name=node_chain) as server:
        src = source_for(btc_config(server, network=network))
        with pytest.raises(WrongChain) as caught:
            await src.open()
        await src.close()
    message = str(caught.value)
    assert repr(node_chain) in message and repr(network) in message


async def test_testnet4_is_accepted_as_testnet() -> None:
    async with BitcoinRegtestServer(chain_name="testnet4") as server:
        src = source_for(btc_config(server, network="testnet"))
        await src.open()
        assert src.node_chain == "testnet4"
        await src.close()


# --- blocks ----------------------------------------------------------------------------------------


async def test_fetch_decodes_outputs_of_every_script_type_and_every_spend(
    node: BitcoinRegtestServer, source: BitcoinSource
) -> None:
    paid = pay_every_type(node.chain)
    (record,) = node.chain.mine()
    blocks = await source.fetch(record.height, record.height + 5)
    assert [b.height for b in blocks] == [record.height]
    (block,) = blocks
    assert (block.hash, block.parent_hash, block.time) == (record.hash, record.prev_hash, record.header.time)
    assert block.tx_count == 2
    by_key = {(t.txid, t.index): t for t in block.transfers}
    for kind, (txid, vout, script, value) in paid.items():
        transfer = by_key[(txid, vout)]
        assert transfer.to_key == script, kind
        assert transfer.amount == value and transfer.asset.symbol == "BTC" and transfer.asset.decimals == 8
        assert transfer.to_address is not None and transfer.to_address == script_to_address(script, "regtest")
        assert parse_bitcoin_address(transfer.to_address, "regtest").key == script
    # the coinbase pays the miner; no OP_RETURN, no zero-value output (the witness commitment, the 0 payment)
    assert len(block.transfers) == 1 + len(paid) + 1  # + the change output
    assert all(t.amount > 0 and t.to_key and t.to_key[0] != 0x6A for t in block.transfers)
    spending = record.txs[1]
    assert block.spends == tuple(
        Spend(spending.txid, i, txin.prev_txid_hex, txin.prev_vout) for i, txin in enumerate(spending.inputs)
    )


async def test_fetch_from_rest_gives_the_same_blocks(node: BitcoinRegtestServer, source: BitcoinSource) -> None:
    pay_every_type(node.chain)
    node.chain.mine(3)
    rest = source_for(btc_config(node, rest_url=node.url))
    await rest.open()
    try:
        node.calls.clear()
        from_rest = await rest.fetch(95, 110)
        assert "getblock" not in node.calls and "getblockhash" in node.calls
        assert from_rest == await source.fetch(95, 110)
        assert len(from_rest) == 10
    finally:
        await rest.close()


async def test_fetch_stops_at_the_tip_and_handles_empty_ranges(source: BitcoinSource) -> None:
    assert [b.height for b in await source.fetch(100, 200)] == [100, 101]
    assert await source.fetch(102, 110) == []
    assert await source.fetch(5, 5) == []
    assert [b.height for b in await source.fetch(0, 3)] == [0, 1, 2]


async def test_at_most_max_in_flight_requests(node: BitcoinRegtestServer) -> None:
    node.latency = 0.01
    src = source_for(btc_config(node, max_in_flight=3))
    await src.open()
    try:
        blocks = await src.fetch(1, 60)
    finally:
        await src.close()
    assert len(blocks) == 59
    assert node.max_in_flight == 3


def registry_of(revoked: list[bytes], active: list[bytes], at: int = 0) -> AddressRegistry:
    rows = [RegistryRow("btc", k, AddressStatus.REVOKED, at) for k in revoked]
    rows += [RegistryRow("btc", k, AddressStatus.ACTIVE, None) for k in active]
    return AddressRegistry.from_rows(rows)


async def test_the_watched_path_finds_exactly_what_the_full_blocks_give(node: BitcoinRegtestServer) -> None:
    """Random payments, sweeps within a block and across blocks of one fetch: same matches and sweeps."""
    rng = random.Random(7)
    chain = node.chain
    kinds = list(SCRIPT_MAKERS)
    watched = [script_of(k, n) for k in kinds for n in range(4)]
    revoked, active = watched[::2], watched[1::2]
    others = [script_of(k, 100 + n) for k in kinds for n in range(4)]
    chain.mine(40)  # mature coins for every payment below
    start = chain.height + 1
    unspent: list[tuple[str, int, int]] = []  # outputs on watched scripts, confirmed or not
    for _ in range(12):
        for _ in range(rng.randint(1, 4)):
            outs = [(rng.choice(watched + others), rng.randint(1_000, 90_000)) for _ in range(rng.randint(1, 4))]
            tx = chain.send(outs)
            unspent += [(tx.txid, i, value) for i, (script, value) in enumerate(outs) if script in watched]
        # spend some coins sitting on watched scripts (sweeps), sometimes in the block that paid them
        rng.shuffle(unspent)
        for txid, vout, value in unspent[:3]:
            chain.spend([(txid, vout)], [(rng.choice(others), value - 500)])
        del unspent[:3]
        chain.mine()
    stop = chain.height + 1
    full_source = source_for(btc_config(node, batch_blocks=4))
    watched_source = source_for(btc_config(node, batch_blocks=4))
    await full_source.open()
    await watched_source.open()
    try:
        results = []
        for src in (full_source, watched_source):
            registry = registry_of(revoked, active)
            tracker = OutputTracker("btc", "BTC", "regtest")
            if src is watched_source:
                src.watch(registry, tracker)
            matches, sweeps = [], []
            for low in range(start, stop, 4):  # the follower's batches: sweeps cross fetch boundaries too
                for block in await src.fetch(low, min(low + 4, stop)):
                    found = match_block("btc", block, registry.book("btc"))
                    effects = tracker.effects(block, found, registry)
                    matches += [(m.kind, m.transfer.txid, m.transfer.index, m.transfer.to_address) for m in found]
                    sweeps += [(m.kind, m.transfer.txid, m.transfer.index) for m in effects.matches[len(found) :]]
            results.append((matches, sweeps))
            blocks_full = await src.fetch(start, stop)
            assert all(b.tx_count > 0 for b in blocks_full)
    finally:
        await full_source.close()
        await watched_source.close()
    (full_matches, full_sweeps), (watched_matches, watched_sweeps) = results
    assert full_matches == watched_matches and len(full_matches) > 20
    assert full_sweeps == watched_sweeps and len(full_sweeps) > 3


# --- faults ----------------------------------------------------------------------------------------


async def test_warming_up_is_retried_then_works(node: BitcoinRegtestServer) -> None:
    node.warming_up(True)
    src = source_for(btc_config(node), retry_for=5.0)
    asked = len(node.calls)
    opening = asyncio.ensure_future(src.open())
    await eventually(lambda: len(node.calls) >= asked + 2, 10, "the source asking again after -28")
    assert not opening.done()
    node.warming_up(False)
    await opening
    assert await src.identity() == REGTEST_GENESIS_HASH
    await src.close()


async def test_node_down_then_up(node: BitcoinRegtestServer, source: BitcoinSource) -> None:
    await node.go_down()
    fetching = asyncio.ensure_future(source.fetch(90, 100))
    await eventually(lambda: source.rpc.failures >= 2, 10, "the source retrying the node that is down")
    assert not fetching.done()
    await node.come_up()
    assert [b.height for b in await fetching] == list(range(90, 100))
    await node.go_down()
    with pytest.raises(NodeUnavailable, match=r"127\.0\.0\.1"):
        await source_for(btc_config(node), retry_for=0.2).open()
    await node.come_up()


async def test_failover_to_a_second_node_on_the_same_chain(node: BitcoinRegtestServer) -> None:
    async with BitcoinRegtestServer(node.chain, user=node.user, password=node.password) as second:
        src = source_for(btc_config([node, second]))
        await src.open()
        try:
            await node.go_down()
            tip = await src.tip()
            assert tip.hash == node.chain.tip.hash
            assert src.rpc.url == redact_url(second.url)  # the URL as shown in logs and health
            assert len(await src.fetch(1, 11)) == 10
        finally:
            await src.close()
            await node.come_up()


async def test_bad_credentials_give_a_clear_error(node: BitcoinRegtestServer) -> None:
    src = source_for(btc_config(node, rpc_password=Secret(value="wrong")))
    with pytest.raises(RpcAuthError) as caught:
        await src.open()
    await src.close()
    assert "HTTP 401" in str(caught.value) and "rpc_user/rpc_password" in str(caught.value)
    assert "wrong" not in str(caught.value)


async def test_credentials_in_the_url_and_cookie_file(node: BitcoinRegtestServer, tmp_path: Any) -> None:
    url = node.url.replace("http://", f"http://{node.user}:{node.password}@")
    src = source_for(btc_config(node, rpc_urls=[url], rpc_user=None, rpc_password=None))
    await src.open()
    assert await src.identity() == REGTEST_GENESIS_HASH
    await src.close()
    cookie = tmp_path / ".cookie"
    cookie.write_text(f"{node.user}:{node.password}")
    src = source_for(btc_config(node, rpc_user=None, rpc_password=None, cookie_file=cookie))
    await src.open()
    await src.close()


# --- hostile answers -------------------------------------------------------------------------------


def tamper(node: BitcoinRegtestServer, method: str, change: Callable[[list[Any], Any], Any]) -> None:
    spec = node._methods[method]
    original = spec.handler
    node._methods[method] = dataclasses.replace(spec, handler=lambda params: change(params, original(params)))


@pytest.mark.parametrize(
    ("method", "change", "message"),
    [
        ("getblock", lambda p, r: r[:-10], "not whole hex bytes|not a valid block"),
        ("getblock", lambda p, r: r[: len(r) // 4 * 2], "not a valid block"),
        ("getblock", lambda p, r: 12, "not hex"),
        ("getblock", lambda p, r: r[:160] + "00" + r[162:], "not a valid block"),
        ("getblockhash", lambda p, r: 5, "getblockhash"),
        ("getblockhash", lambda p, r: r.upper(), "getblockhash"),
    ],
)
async def test_hostile_answers_are_bad_node_answers(
    node: BitcoinRegtestServer, source: BitcoinSource, method: str, change: Any, message: str
) -> None:
    node.chain.send([(p2wpkh(b"\x01" * 20), 5_000)])
    node.chain.mine()
    tamper(node, method, change)
    with pytest.raises(BadNodeAnswer, match=message):
        await source.fetch(102, 103)


async def test_a_block_other_than_the_one_asked_for_is_refused(
    node: BitcoinRegtestServer, source: BitcoinSource
) -> None:
    other = node.chain.block_at(5).raw.hex()
    tamper(node, "getblock", lambda p, r: other)
    with pytest.raises(BadNodeAnswer, match=f"getblock {node.chain.block_at(7).hash} 0: the node sent block"):
        await source.fetch(7, 8)


async def test_hostile_tip_answers(node: BitcoinRegtestServer, source: BitcoinSource) -> None:
    tamper(node, "getblockheader", lambda p, r: {**r, "height": "101"})
    with pytest.raises(BadNodeAnswer, match="getblockheader"):
        await source.tip()
    tamper(node, "getbestblockhash", lambda p, r: None)
    with pytest.raises(BadNodeAnswer, match="getbestblockhash"):
        await source.tip()


async def test_hostile_chain_info_is_refused(node: BitcoinRegtestServer) -> None:
    tamper(node, "getblockchaininfo", lambda p, r: ["regtest"])
    src = source_for(btc_config(node))
    with pytest.raises(BadNodeAnswer, match="getblockchaininfo"):
        await src.open()
    await src.close()


# --- new heads -------------------------------------------------------------------------------------


async def test_wait_for_head_polls_the_best_hash(node: BitcoinRegtestServer, source: BitcoinSource) -> None:
    await source.tip()
    await asyncio.wait_for(source.wait_for_head(0.3), 5)  # nothing new: returns at the timeout
    waiting = asyncio.ensure_future(source.wait_for_head(10))
    node.chain.mine()  # before or after the wait begins: the best hash changed either way
    await asyncio.wait_for(waiting, 5)


async def test_wait_for_head_wakes_on_zmq(node: BitcoinRegtestServer) -> None:
    context = zmq.asyncio.Context()
    publisher = context.socket(zmq.XPUB)  # a PUB socket that also hears its subscribers subscribe
    port = publisher.bind_to_random_port("tcp://127.0.0.1")
    sent: list[str] = []

    def announce(event: str, value: str) -> None:
        if event == "block":
            sent.append(value)
            publisher.send_multipart([b"hashblock", bytes.fromhex(value), b"\x00\x00\x00\x00"])

    node.chain.listeners.append(announce)
    src = source_for(btc_config(node, zmq_url=f"tcp://127.0.0.1:{port}", poll_interval=30))
    await src.open()
    try:
        await src.tip()
        subscribed: set[bytes] = set()
        while not {b"hashblock", b"sequence"} <= subscribed:  # the subscriptions have reached the publisher
            frame = await asyncio.wait_for(publisher.recv(), 10)
            if frame[:1] == b"\x01":
                subscribed.add(frame[1:])
        waiting = asyncio.ensure_future(src.wait_for_head(20))
        node.chain.mine()
        await asyncio.wait_for(waiting, 5)  # polling every 30 s: the ZMQ announcement woke it
        assert sent
        publisher.send_multipart([b"sequence", bytes(32) + b"A" + bytes(8), b"\x01\x00\x00\x00"])
        await asyncio.wait_for(src.mempool_changed.wait(), 5)
    finally:
        await src.close()
        publisher.close(linger=0)
        context.term()


async def test_malformed_prevouts_are_bad_node_answers(node: BitcoinRegtestServer, source: BitcoinSource) -> None:
    paid = node.chain.send([(p2wpkh(b"\x05" * 20), 9_000)])
    node.chain.mine()
    node.chain.spend([(paid.txid, 0)], [(p2wpkh(b"\x06" * 20), 8_000)])
    node.chain.mine()
    height = node.chain.height
    assert [o.amount for o in await prevouts_paying(source, height, height + 1, {p2wpkh(b"\x05" * 20)})] == [9_000]

    def strip(params: list[Any], result: Any) -> Any:
        for tx in result["tx"]:
            for txin in tx["vin"]:
                txin.pop("prevout", None)
        return result

    tamper(node, "getblock", strip)
    with pytest.raises(BadNodeAnswer, match=r"getblock \w+ 3: malformed prevout"):
        await prevouts_paying(source, height, height + 1, {p2wpkh(b"\x05" * 20)})
