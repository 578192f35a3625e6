"""The filtered EVM path (chains/evm_filtered.py) against a real anvil: the same blocks and matches as the full
scan, the fall-backs to the full scan, anvil's 300-block trace_filter cap, and a book change mid-range.

A small aiohttp proxy sits between the source and anvil: it records every call, can refuse a method as a node
without it does (-32601), can run a step when a method is first called, and can add consensus-layer withdrawals
to the block answers (anvil makes none): the same withdrawals in both forms of a block, so both paths see them.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from depositwatch.chains import evm_filtered
from depositwatch.chains.evm import EvmSource
from depositwatch.config import ChainConfig
from depositwatch.devnet import (
    Anvil,
    deploy_token,
    failing_transfer,
    forward_eth,
    mine,
    mint_token,
    send_eth,
    send_token,
    wait_receipt,
)
from depositwatch.matcher import match_block
from depositwatch.models import AddressEntry, AddressStatus, Block
from depositwatch.pipeline import attach, make_source
from depositwatch.registry import AddressRegistry, ChainBook
from depositwatch.replay import replay
from depositwatch.store import Scope, SqlStore
from tests.blind_contracts import forwarder_code
from tests.pipeline.rigs import live_follower
from tests.util import serve

CHAIN_ID = 31337
ACTIVE = "0x" + "a1" * 20  # a deposit address that never sends
LATE = "0x" + "a2" * 20  # added to the book during a range
RELAY = "0x" + "f0" * 20  # a contract passing plain ETH sends on to the revoked address; not watched
GWEI = 10**9


def key(address: str) -> bytes:
    return bytes.fromhex(address[2:].lower())


@dataclass
class Proxy:
    """JSON-RPC between the source and anvil: records, refuses, hooks, adds withdrawals."""

    upstream: str
    refuse: set[str] = field(default_factory=set)
    no_mode: bool = False  # refuse trace_filter's `mode` (as nodes without it do): one call per direction
    withdrawals: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    hooks: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    calls: list[tuple[str, list[Any]]] = field(default_factory=list)
    url: str = ""

    def methods(self, name: str) -> list[list[Any]]:
        return [params for method, params in self.calls if method == name]

    async def _handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        items = body if isinstance(body, list) else [body]
        answers: dict[Any, dict[str, Any]] = {}
        forward = []
        for item in items:
            method = item["method"]
            self.calls.append((method, item.get("params", [])))
            hook = self.hooks.pop(method, None)
            if hook is not None:
                await hook()
            params = item.get("params") or [{}]
            if method in self.refuse:
                error = {"code": -32601, "message": f"the method {method} does not exist/is not available"}
                answers[item["id"]] = {"jsonrpc": "2.0", "id": item["id"], "error": error}
            elif self.no_mode and method == "trace_filter" and "mode" in params[0]:
                error = {"code": -32602, "message": "invalid params: unknown field `mode`"}
                answers[item["id"]] = {"jsonrpc": "2.0", "id": item["id"], "error": error}
            else:
                forward.append(item)
        if forward:
            async with self.session.post(
                self.upstream, data=orjson.dumps(forward), headers={"Content-Type": "application/json"}
            ) as reply:
                got = orjson.loads(await reply.read())
            for answer in got if isinstance(got, list) else [got]:
                answers[answer["id"]] = answer
        for item in items:
            answer = answers[item["id"]]
            result = answer.get("result")
            if item["method"] == "eth_getBlockByNumber" and isinstance(result, dict) and self.withdrawals:
                result["withdrawals"] = self.withdrawals.get(int(result["number"], 16), [])
        out = [answers[item["id"]] for item in items]
        return web.Response(body=orjson.dumps(out if isinstance(body, list) else out[0]))

    async def __aenter__(self) -> Proxy:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/", self._handle)
        self.runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        await self.session.close()


@dataclass
class World:
    node: Anvil
    usdt: str
    revoked: str  # a dev account: it signs its own sweeps
    start: int
    tip: int
    expected: dict[str, str] = field(default_factory=dict)  # case -> transaction id

    def config(self, url: str, **overrides: Any) -> ChainConfig:
        settings: dict[str, Any] = {
            "name": "eth",
            "kind": "evm",
            "chain_id": CHAIN_ID,
            "rpc_urls": [url],
            "tokens": [{"symbol": "USDT", "contract": self.usdt, "decimals": 6}],
            "traces": True,
            "confirmations": 1,
            "mempool": False,
            "poll_interval": 0.1,
        }
        settings.update(overrides)
        return ChainConfig(**settings)

    def keys(self) -> list[bytes]:
        return [key(ACTIVE), key(self.revoked), key(RELAY.replace("f0", "f1"))]  # the last one never appears


async def mined(node: Anvil, tx: Awaitable[str]) -> str:
    txid = str(await tx)
    await wait_receipt(node.w3, txid)
    return txid


@pytest.fixture
async def world() -> AsyncIterator[World]:
    """One chain with every case, over more than 300 blocks (anvil's trace_filter cap), each transaction alone
    in its block; noise between unwatched accounts."""
    async with Anvil(chain_id=CHAIN_ID) as node:
        w3 = node.w3
        alice, bob, carol = (a.address for a in node.accounts[:3])
        revoked = node.accounts[5].address
        usdt = await deploy_token(w3, alice, "USDT", 6)
        other = await deploy_token(w3, alice, "OTHER", 18)  # not configured
        for token, to in ((usdt, alice), (usdt, revoked), (other, alice)):
            await mined(node, mint_token(w3, token, alice, to, 10**15))
        await node.rpc("anvil_setCode", RELAY, "0x" + forwarder_code(key(revoked)).hex())
        start = await node.block_number() + 1
        w = World(node, usdt, revoked, start, 0)
        cases: list[tuple[str, Awaitable[str]]] = [
            ("eth in", send_eth(w3, alice, ACTIVE, 10**16)),
            ("noise", send_eth(w3, bob, carol, 10**16)),
            ("eth sweep", send_eth(w3, revoked, carol, 10**15)),
            ("usdt in", send_token(w3, usdt, alice, ACTIVE, 5 * 10**6)),
            ("usdt sweep", send_token(w3, usdt, revoked, carol, 10**6)),
            ("unlisted to revoked", send_token(w3, other, alice, revoked, 7)),
            ("unlisted to active", send_token(w3, other, alice, ACTIVE, 9)),
            ("reverted", failing_transfer(w3, usdt, alice, ACTIVE, 12345)),
            ("internal in", forward_eth(w3, usdt, alice, [carol, ACTIVE], [4 * 10**15, 3 * 10**15])),
            ("internal to revoked", send_eth(w3, carol, RELAY, 2 * 10**15)),
        ]
        for name, tx in cases:
            w.expected[name] = await mined(node, tx)
        await mine(w3, 320)
        w.expected["eth in, later"] = await mined(node, send_eth(w3, alice, ACTIVE, 10**14))
        w.tip = await node.block_number()
        yield w


@pytest.fixture
async def proxy(world: World) -> AsyncIterator[Proxy]:
    async with Proxy(world.node.http_url) as started:
        started.withdrawals = {
            world.start + 2: [
                {"index": "0x7", "validatorIndex": "0x1", "address": ACTIVE, "amount": hex(32 * GWEI)},
                {"index": "0x8", "validatorIndex": "0x2", "address": "0x" + "cc" * 20, "amount": hex(GWEI)},
            ]
        }
        yield started


async def fetched(world: World, config: ChainConfig, stop: int | None = None) -> tuple[list[Block], str]:
    """Every block of the world's range, read in one call with the world's keys as the watched set."""
    source = EvmSource(config)
    await source.open()
    try:
        source.set_log_filter(world.keys())
        source.set_revoked([key(world.revoked)])
        return await source.fetch(world.start, (stop or world.tip) + 1), source.fetch_path
    finally:
        await source.close()


def shape(blocks: list[Block]) -> list[tuple[Any, ...]]:
    return [(b.height, b.hash, b.parent_hash, b.time, b.tx_count, b.transfers) for b in blocks]


def scans(proxy: Proxy) -> list[dict[str, Any]]:
    """The trace_filter calls that read the watched keys (not open()'s probes, which name the zero address)."""
    found = []
    for (q,) in proxy.methods("trace_filter"):
        named = q.get("fromAddress", []) + q.get("toAddress", [])
        if ACTIVE in named and "0x" + "00" * 20 not in named:
            found.append(q)
    return found


def full_reads(proxy: Proxy) -> int:
    return sum(1 for params in proxy.methods("eth_getBlockByNumber") if params[1] is True)


async def test_filtered_blocks_are_the_full_scans(world: World, proxy: Proxy) -> None:
    """Over 330 blocks with ETH, internal ETH, configured tokens, an unlisted token to a revoked address, a
    reverted transfer and withdrawals, the filtered path returns exactly the full scan's blocks (headers,
    transaction counts, transfers in order with their indices), without reading a block in full, with
    trace_filter calls of at most 300 blocks and receipts only for the transactions found."""
    full, full_path = await fetched(world, world.config(proxy.url, filter_max_keys=0))
    assert full_path == "full scan: filter_max_keys = 0"
    assert full_reads(proxy) == world.tip - world.start + 1
    proxy.calls.clear()
    filtered, path = await fetched(world, world.config(proxy.url))
    assert path == "filtered: 3 keys <= 1000, node has trace_filter"
    assert shape(filtered) == shape(full)
    assert len(filtered) == world.tip - world.start + 1

    assert full_reads(proxy) == 0
    probe = [[hex(world.tip)]]  # what open() asks to find out which methods the node serves
    assert proxy.methods("eth_getBlockReceipts") == probe
    assert [params[:1] for params in proxy.methods("debug_traceBlockByNumber")] == probe
    spans = [int(q["toBlock"], 16) - int(q["fromBlock"], 16) + 1 for q in scans(proxy)]
    assert spans and max(spans) == 300
    assert all(q["mode"] == "union" for q in scans(proxy))  # anvil takes both directions in one call
    receipts = {params[0] for params in proxy.methods("eth_getTransactionReceipt")}
    e = world.expected
    assert receipts == {
        e[name] for name in ("eth in", "eth sweep", "usdt in", "usdt sweep", "unlisted to revoked", "eth in, later")
    }
    assert {params[0] for params in proxy.methods("debug_traceTransaction")} == {
        e["internal in"],
        e["internal to revoked"],
    }

    book = ChainBook()
    book.add(key(ACTIVE), AddressStatus.ACTIVE, None)
    book.add(key(world.revoked), AddressStatus.REVOKED, 0)
    found = {(m.transfer.txid, m.transfer.index, str(m.kind)) for b in filtered for m in match_block("eth", b, book)}
    assert found == {
        (e["eth in"], None, "deposit"),
        (e["eth sweep"], None, "revoked_outgoing"),
        (e["usdt in"], 0, "deposit"),
        (e["usdt sweep"], 0, "revoked_outgoing"),
        (e["unlisted to revoked"], 0, "revoked_incoming"),
        (e["internal in"], -2, "deposit"),  # -1 went to an unwatched account
        (e["internal to revoked"], -1, "revoked_incoming"),
        ("withdrawal:7", 7, "deposit"),
        (e["eth in, later"], None, "deposit"),
    }
    kinds = {t for t, _, _ in found}
    assert e["reverted"] not in kinds and e["unlisted to active"] not in kinds and e["noise"] not in kinds


async def test_too_large_trace_ranges_are_halved(world: World, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans above anvil's cap are refused ("block range too large"): halved until they pass, same blocks."""
    full, _ = await fetched(world, world.config(proxy.url, filter_max_keys=0))
    monkeypatch.setattr(evm_filtered, "TRACE_FILTER_SPAN", 1000)
    proxy.calls.clear()
    filtered, path = await fetched(world, world.config(proxy.url))
    assert path.startswith("filtered")
    assert shape(filtered) == shape(full)
    spans = [int(q["toBlock"], 16) - int(q["fromBlock"], 16) + 1 for q in scans(proxy)]
    assert max(spans) == world.tip - world.start + 1 > 300  # asked whole first, refused
    assert min(spans) <= 300


async def test_one_call_per_direction_without_union_mode(world: World, proxy: Proxy) -> None:
    """A node that refuses trace_filter's `mode` gets one call with `fromAddress` and one with `toAddress`
    (never both lists together, which such nodes read as "from and to"): the same blocks."""
    full, _ = await fetched(world, world.config(proxy.url, filter_max_keys=0))
    proxy.no_mode = True
    proxy.calls.clear()
    blocks, path = await fetched(world, world.config(proxy.url))
    assert path.startswith("filtered")
    assert shape(blocks) == shape(full)
    sides = [tuple(sorted(k for k in q if k.endswith("Address"))) for q in scans(proxy)]
    assert sides and set(sides) == {("fromAddress",), ("toAddress",)}


async def test_full_scan_without_trace_filter(world: World, proxy: Proxy) -> None:
    """A node that answers trace_filter with -32601 (method not found) is read in full, with the same blocks."""
    full, _ = await fetched(world, world.config(proxy.url, filter_max_keys=0))
    proxy.refuse.add("trace_filter")
    proxy.calls.clear()
    blocks, path = await fetched(world, world.config(proxy.url))
    assert path == "full scan: node has no trace_filter"
    assert shape(blocks) == shape(full)
    assert len(proxy.methods("trace_filter")) == 1  # the probe, once
    assert full_reads(proxy) == len(blocks)


async def test_full_scan_when_trace_filter_goes_away(world: World, proxy: Proxy) -> None:
    """A node that stops serving trace_filter during a run: that range and the rest are read in full."""
    full, _ = await fetched(world, world.config(proxy.url, filter_max_keys=0))
    source = EvmSource(world.config(proxy.url))
    await source.open()
    try:
        source.set_log_filter(world.keys())
        source.set_revoked([key(world.revoked)])
        assert source.fetch_path.startswith("filtered")
        proxy.refuse.add("trace_filter")
        blocks = await source.fetch(world.start, world.tip + 1)
        assert source.fetch_path == "full scan: node has no trace_filter"
    finally:
        await source.close()
    assert shape(blocks) == shape(full)


async def test_full_scan_over_the_limit(world: World, proxy: Proxy) -> None:
    """A watched set larger than `filter_max_keys` is read in full, with the same blocks."""
    full, _ = await fetched(world, world.config(proxy.url, filter_max_keys=0))
    proxy.calls.clear()
    blocks, path = await fetched(world, world.config(proxy.url, filter_max_keys=2))
    assert path == "full scan: 3 keys > 2"
    assert shape(blocks) == shape(full)
    assert full_reads(proxy) == len(blocks)
    assert not scans(proxy)


async def entries(store: SqlStore, world: World, *addresses: tuple[str, AddressStatus]) -> None:
    hour_ago = int(time.time()) - 3600
    rows = [
        AddressEntry("eth", a, key(a), s, "l", "o", hour_ago if s is AddressStatus.REVOKED else None)
        for a, s in addresses
    ]
    await store.import_addresses(list(enumerate(rows, start=2)))


async def test_replay_matches_filtered_and_full(world: World, proxy: Proxy, store: SqlStore) -> None:
    """`replay` over the range: the same output lines on both paths; the summary says which path it took; the
    filtered path steps 300 blocks at a time where `batch_blocks` is not set (the full scan: 20)."""
    await entries(store, world, (ACTIVE, AddressStatus.ACTIVE), (world.revoked, AddressStatus.REVOKED))
    outputs, paths, steps = [], [], []
    for limit in (0, 1000):
        out = io.StringIO()
        sizes: list[int] = []

        async def committed(effects: Sequence[Any], sizes: list[int] = sizes) -> None:
            sizes.append(len(effects))

        steps.append(sizes)
        summary = await replay(
            chain=world.config(proxy.url, filter_max_keys=limit),
            store=store,
            start=world.start,
            stop=world.tip,
            output=out,
            restart=True,
            on_commit=committed,
        )
        outputs.append(sorted(out.getvalue().splitlines()))
        paths.append(summary.text())
    assert outputs[0] == outputs[1] and len(outputs[0]) == 9
    assert paths[0].endswith("; full scan: filter_max_keys = 0")
    assert paths[1].endswith("; filtered: 2 keys <= 1000, node has trace_filter")
    blocks = world.tip - world.start + 1
    assert max(steps[0]) == 20 and sum(steps[0]) == blocks
    assert steps[1] == [300, blocks - 300]


async def test_book_change_during_a_filtered_range(world: World, proxy: Proxy, store: SqlStore) -> None:
    """The book gains an address while a filtered range is being read (the reload lands between the source's
    trace_filter request and its answer): the follower reads the range again with the new keys, so the new
    address's deposit in that range is matched."""
    await entries(store, world, (world.revoked, AddressStatus.REVOKED))
    late = await mined(world.node, send_eth(world.node.w3, world.node.accounts[1].address, LATE, 10**13))
    tip = await world.node.block_number()
    config = world.config(proxy.url, batch_blocks=1000)
    registry = await AddressRegistry.load(store)
    source = make_source(config)
    f = live_follower(source, store, config, registry, tip - 5, stop_height=tip)
    attach(source, registry, None, store.tokens)

    async def add_late() -> None:
        await entries(store, world, (LATE, AddressStatus.ACTIVE))
        assert await registry.reload(store)

    await source.open()
    try:
        assert isinstance(source, EvmSource) and source.fetch_path.startswith("filtered: 1 keys")
        proxy.hooks["trace_filter"] = add_late
        await f.start()
        while await f.step():
            pass
        assert source.fetch_path.startswith("filtered: 2 keys")
    finally:
        await source.close()
    assert "trace_filter" not in proxy.hooks  # the reload did happen mid-range
    rows = await store.matches(Scope.live(), heights=(tip - 5, tip))
    assert [(r["txid"], r["kind"]) for r in rows] == [(late, "deposit")]
