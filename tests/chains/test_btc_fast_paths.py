"""The Bitcoin source's quick paths, against the regtest stand-in and real aiohttp and ZMQ sockets:
`getblock HASH 0` decoded straight out of the answer's body, the next range read ahead while a
range is used, and a new tip fetched from ZMQ `rawblock` without `getblock` or `getblockhash`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio
from aiohttp import web

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_rpc import BitcoinRpc, InvalidParameter, NotFound, RpcError
from depositwatch.config import ChainConfig
from depositwatch.store import Scope, SqlStore
from depositwatch.sweeps import OutputTracker
from tests.btcnode import BitcoinRegtestServer, RegtestChain, p2wpkh
from tests.chains.test_btc_source import btc_config, source_for, tamper
from tests.pipeline.rigs import live_follower
from tests.pipeline.test_btc_follow import load_book
from tests.util import eventually

REVOKED = p2wpkh(b"\x7e" * 20)


@pytest.fixture
async def node() -> AsyncIterator[BitcoinRegtestServer]:
    async with BitcoinRegtestServer(zmq=True) as server:
        server.chain.mine(101)
        yield server


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition` to hold (a guard against hanging, not a measure of time)."""
    await eventually(condition, 10, what, every=0.005)


# --- getblock HASH 0 out of the body --------------------------------------------------------------------


@pytest.mark.parametrize("version", [250000, 280000], ids=["core25-envelope", "core28-jsonrpc2"])
async def test_hex_result_gives_the_bytes_the_ordinary_call_spells(node: BitcoinRegtestServer, version: int) -> None:
    node.version = version
    node.chain.send([(REVOKED, 50_000)])
    node.chain.mine()
    async with BitcoinRpc([node.url], user=node.user, password=node.password) as rpc:
        for height in (0, 1, node.chain.height):
            hash_ = node.chain.block_at(height).hash
            got = await rpc.hex_result("getblock", hash_, 0)
            assert got == bytes.fromhex(await rpc.call("getblock", hash_, 0)) == node.chain.block_at(height).raw


async def test_hex_result_raises_the_nodes_typed_errors(node: BitcoinRegtestServer) -> None:
    async with BitcoinRpc([node.url], user=node.user, password=node.password) as rpc:
        with pytest.raises(NotFound):
            await rpc.hex_result("getblock", "11" * 32, 0)
        with pytest.raises(InvalidParameter):
            await rpc.hex_result("getblock", "not a hash", 0)


class OddNode:
    """An aiohttp server that answers every POST with the body the test sets."""

    def __init__(self) -> None:
        self.body = b""
        self.posts = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        return web.Response(body=self.body, content_type="application/json")


@pytest.fixture
async def odd() -> AsyncIterator[tuple[OddNode, str]]:
    server = OddNode()
    app = web.Application()
    app.router.add_post("/", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"result":"00ff","error":null,"id":1}', b"\x00\xff"),
        (b'{"result": "00ff", "error": null, "id": 1}\n', b"\x00\xff"),  # spaces: the ordinary path reads it
        (b'{"result":"\\u0030\\u0031","error":null,"id":1}', b"\x01"),  # escapes: the ordinary path reads them
        (b'{"result":"","error":null,"id":1}', b""),
        # a nested object holding the same member first: not taken from the body
        (b'{"x":{"result":"aaaa"},"result":"00ff","error":null,"id":1}', b"\x00\xff"),
    ],
    ids=["plain", "spaces", "escapes", "empty", "nested-first"],
)
async def test_hex_result_reads_any_valid_answer_as_the_ordinary_call_does(
    odd: tuple[OddNode, str], body: bytes, expected: bytes
) -> None:
    server, url = odd
    server.body = body
    async with BitcoinRpc([url], retry_for=0) as rpc:
        assert await rpc.hex_result("getblock", "00" * 32, 0) == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"result":"0f0","error":null,"id":1}', BadNodeAnswer),  # odd length
        (b'{"result":"zz","error":null,"id":1}', BadNodeAnswer),
        (b'{"result":12,"error":null,"id":1}', BadNodeAnswer),
        (b'{"result":"00","error":{"code":-5,"message":"Block not found"},"id":1}', NotFound),
        (b'{"jsonrpc":"2.0","error":{"code":-1,"message":"boom"},"id":1}', RpcError),
        (b'{"result":"00ff"', BadNodeAnswer),  # cut short
    ],
    ids=["odd-length", "not-hex", "a-number", "error-beside-result", "jsonrpc2-error", "truncated"],
)
async def test_hex_result_refuses_what_the_ordinary_call_refuses(
    odd: tuple[OddNode, str], body: bytes, error: type[Exception]
) -> None:
    server, url = odd
    server.body = body
    async with BitcoinRpc([url], retry_for=0) as rpc:
        with pytest.raises(error):
            await rpc.hex_result("getblock", "00" * 32, 0)


# --- reading ahead ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def opened(config: ChainConfig) -> AsyncIterator[BitcoinSource]:
    """A Bitcoin source on `config`, open; closed on leaving."""
    source = source_for(config)
    await source.open()
    try:
        yield source
    finally:
        await source.close()


def getblock_calls(node: BitcoinRegtestServer, since: int = 0) -> int:
    return sum(1 for call in node.calls[since:] if call == "getblock")


async def test_the_next_range_is_read_while_the_caller_uses_this_one(node: BitcoinRegtestServer) -> None:
    node.chain.mine(20)
    start = node.chain.height - 9  # two ranges of five up to the tip
    async with opened(btc_config(node)) as source:
        await source.tip()
        first = await source.fetch(start, start + 5)
        assert [b.hash for b in first] == [node.chain.block_at(h).hash for h in range(start, start + 5)]
        # the caller commits; meanwhile the next five blocks are asked for
        await until(lambda: getblock_calls(node) == 10, "the next range read ahead")
        before = len(node.calls)
        second = await source.fetch(start + 5, start + 10)
        assert node.calls[before:] == []  # neither getblockhash nor getblock: all of it was read ahead
        assert [b.hash for b in second] == [node.chain.block_at(h).hash for h in range(start + 5, start + 10)]
        assert second[0].parent_hash == first[-1].hash
        # a range other than the one read ahead is read as it is asked (and the one after it ahead)
        before = len(node.calls)
        other = await source.fetch(start, start + 2)
        assert [b.hash for b in other] == [node.chain.block_at(h).hash for h in range(start, start + 2)]
        await until(lambda: getblock_calls(node, before) >= 4, "the next range read ahead")
        assert getblock_calls(node, before) == 4


async def test_the_loop_turns_between_the_blocks_of_a_range_already_read(
    node: BitcoinRegtestServer, store: SqlStore
) -> None:
    """Blocks read ahead are all there when their range is fetched: their scans must still leave the event
    loop a turn between two blocks, so the next range's requests go out and its answers come in."""
    node.chain.mine(20)
    start = node.chain.height - 9
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with opened(btc_config(node)) as source:
        source.watch(await load_book(store, [], [REVOKED]), OutputTracker("btc", "BTC", "regtest"))
        await source.tip()
        await source.fetch(start, start + 5)
        await until(lambda: getblock_calls(node) == 10, "the next range read ahead")
        await until(lambda: all(task.done() for _, task in source._ahead.values()), "the next range read")
        seen: list[int] = []
        decode = source._decode

        def counting(*args: Any) -> Any:
            seen.append(ticks)
            return decode(*args)

        source._decode = counting  # type: ignore[method-assign]
        ticker = asyncio.ensure_future(ticking())
        try:
            second = await source.fetch(start + 5, start + 10)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        assert len(second) == len(seen) == 5
        assert all(later > earlier for earlier, later in itertools.pairwise(seen))


async def test_a_range_asked_ahead_is_taken_by_its_fetch(node: BitcoinRegtestServer) -> None:
    """`read_ahead` (a replay's first range, asked while its store is made ready): the fetch of exactly
    that range asks nothing more for it; a fetch of other heights takes the blocks of its own heights
    read ahead, drops the rest and reads what it lacks."""
    node.chain.mine(20)
    start = node.chain.height - 14
    asked: list[str] = []

    def note(params: list[Any], answer: Any) -> Any:
        asked.append(params[0])
        return answer

    tamper(node, "getblock", note)
    height_of = {node.chain.block_at(h).hash: h for h in range(start, start + 10)}
    async with opened(btc_config(node)) as source:
        source.read_until = start + 9
        await source.tip()
        source.read_ahead(start, start + 5)
        await until(lambda: getblock_calls(node) == 5, "the range read ahead")
        before = len(node.calls)
        blocks = await source.fetch(start, start + 5)
        assert [b.hash for b in blocks] == [node.chain.block_at(h).hash for h in range(start, start + 5)]
        await until(lambda: len(source._ahead) == 5, "the next range asked ahead, up to read_until")
        await until(lambda: all(task.done() for _, task in source._ahead.values()), "the next range read")
        assert getblock_calls(node, before) == 5  # the next range's blocks only: none of this range again
        source.read_ahead(start + 10, start + 12)  # past read_until: nothing
        assert source._ahead_task is None and not source._ahead
        source.read_ahead(start, start + 2)
        await until(lambda: getblock_calls(node, before) == 7, "the range asked ahead")
        seen = len(asked)
        other = await source.fetch(start + 1, start + 3)
        assert [b.hash for b in other] == [node.chain.block_at(h).hash for h in range(start + 1, start + 3)]
        # start + 1 was read ahead, start dropped: the fetch asked for start + 2 alone (and, after it, the
        # range that follows)
        assert [height_of[h] for h in asked[seen:]][:1] == [start + 2]
        assert start + 1 not in [height_of[h] for h in asked[seen:]]


async def test_two_ranges_asked_ahead_are_taken_by_two_fetches(node: BitcoinRegtestServer) -> None:
    """A fetch of the first heights read ahead keeps the reads beyond it for the next fetch, and reads
    ahead only what follows them."""
    node.chain.mine(20)
    start = node.chain.height - 14
    async with opened(btc_config(node)) as source:
        await source.tip()
        source.read_ahead(start, start + 10)
        await until(lambda: getblock_calls(node) == 10, "two ranges read ahead")
        before = len(node.calls)
        first = await source.fetch(start, start + 5)
        assert sorted(source._ahead) == list(range(start + 5, start + 10))
        assert source._ahead_task is None  # nothing more to read ahead: the next range is there
        assert node.calls[before:] == []
        second = await source.fetch(start + 5, start + 10)
        assert [b.hash for b in first + second] == [node.chain.block_at(h).hash for h in range(start, start + 10)]
        await until(lambda: len(source._ahead) == 5, "the range after asked ahead")
        await until(lambda: all(task.done() for _, task in source._ahead.values()), "the range after read")
        assert sorted(source._ahead) == list(range(start + 10, start + 15))
        assert getblock_calls(node, before) == 5  # that range's blocks only: none of the first two again


async def test_a_read_ahead_that_failed_is_read_again(node: BitcoinRegtestServer) -> None:
    """A block whose read ahead got a bad answer is asked for again when its range is fetched."""
    node.chain.mine(10)
    start = node.chain.height - 9
    later = {node.chain.block_at(h).hash for h in range(start + 5, start + 10)}
    broken = True
    tamper(node, "getblock", lambda p, r: "zz" if broken and p[0] in later else r)
    async with opened(btc_config(node)) as source:
        await source.tip()
        await source.fetch(start, start + 5)
        # each read ahead got "zz": once out of the body, once by the ordinary call, then it failed
        await until(lambda: getblock_calls(node) == 15, "the reads ahead answered")
        await until(lambda: all(task.done() for _, task in source._ahead.values()), "the reads ahead failed")
        broken = False
        before = len(node.calls)
        second = await source.fetch(start + 5, start + 10)
        assert [b.hash for b in second] == [node.chain.block_at(h).hash for h in range(start + 5, start + 10)]
        assert getblock_calls(node, before) == 5


async def test_nothing_is_read_ahead_above_the_tip(node: BitcoinRegtestServer) -> None:
    async with opened(btc_config(node)) as source:
        tip = await source.tip()
        before = len(node.calls)
        blocks = await source.fetch(tip.height - 4, tip.height + 1)
        assert len(blocks) == 5
        assert source._ahead_task is None and not source._ahead  # the tip: nothing to read ahead
        assert getblock_calls(node, before) == 5
        assert node.calls[before:].count("getblockhash") == 5  # the range's own batch (one a block), no other


async def test_nothing_past_read_until_is_read_ahead(node: BitcoinRegtestServer) -> None:
    """A replay's (or a shard's) last block bounds the read-ahead as the tip does."""
    node.chain.mine(20)
    start = node.chain.height - 19
    source = source_for(btc_config(node))
    source.read_until = start + 7
    await source.open()
    try:
        await source.tip()
        await source.fetch(start, start + 5)
        await until(lambda: getblock_calls(node) == 8, "the next range read ahead, cut at read_until")
        assert sorted(source._ahead) == [start + 5, start + 6, start + 7]
        before = len(node.calls)
        last = await source.fetch(start + 5, start + 8)
        assert [b.height for b in last] == [start + 5, start + 6, start + 7]
        assert source._ahead_task is None and not source._ahead
        assert node.calls[before:] == []
    finally:
        await source.close()


@pytest.mark.parametrize("watched", [True, False], ids=["watched-path", "full-blocks"])
async def test_a_reorg_of_blocks_read_ahead_is_followed(
    node: BitcoinRegtestServer, store: SqlStore, watched: bool
) -> None:
    """The follower commits a range, the node reorganises the blocks already read ahead (dropping a
    payment to a revoked script): the follower ends on the node's new chain with the match retracted."""
    registry = await load_book(store, [], [REVOKED])
    config = btc_config(node, confirmations=1, batch_blocks=4)
    source = source_for(config)
    await source.open()
    hook = OutputTracker("btc", "BTC", "regtest")
    if watched:
        source.watch(registry, hook)
    start = node.chain.height + 1
    node.chain.mine(5)
    tx = node.chain.send([(REVOKED, 70_000)], submit=False)
    node.chain.mine(1, txs=[tx])  # block start + 5
    node.chain.mine(6)
    follower = live_follower(source, store, config, registry, start, hook)
    try:
        await follower.start()
        assert await follower.step() == 4  # blocks start..start+3; start+4..start+7 are read ahead
        await until(lambda: getblock_calls(node) >= 8, "the next range read ahead")
        node.chain.reorg(9)  # start+3 onwards replaced: the payment waits in the mempool
        for _ in range(20):
            if follower.cursor is not None and follower.cursor.hash == node.chain.tip.hash:
                break
            await follower.step()
        assert follower.cursor is not None and follower.cursor.hash == node.chain.tip.hash
        for height in range(start, node.chain.height + 1):
            assert await store.block_hash("live:btc", height) in (None, node.chain.block_at(height).hash)
        rows = await store.matches(Scope.live())
        # committed from the old branch or never: either way not a live match on the new chain
        assert all(r["status"] == "retracted" for r in rows if r["txid"] == tx.txid)
    finally:
        await source.close()


# --- ZMQ ---------------------------------------------------------------------------------------------------


async def subscribed(url: str, node: BitcoinRegtestServer) -> tuple[zmq.asyncio.Context, zmq.asyncio.Socket]:
    """A SUB socket on every topic that has received at least one message (mining until it does:
    a subscription takes a moment to reach the publisher), drained."""
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(url)
    for _ in range(200):
        node.chain.mine()
        if await socket.poll(50):
            break
    else:
        raise AssertionError("no ZMQ message reached the subscriber")
    while await socket.poll(50):
        await socket.recv_multipart()
    return context, socket


async def test_the_stand_in_publishes_blocks_and_transactions_as_core_does(node: BitcoinRegtestServer) -> None:
    assert node.zmq_url is not None
    context, socket = await subscribed(node.zmq_url, node)
    try:
        counts = dict(node.zmq_sent)
        tx = node.chain.send([(REVOKED, 40_000)])
        (record,) = node.chain.mine()
        got = [await socket.recv_multipart() for _ in range(6)]
        topics = [parts[0] for parts in got]
        assert topics == [b"hashtx", b"rawtx", b"sequence", b"hashblock", b"rawblock", b"sequence"]
        by_topic = {parts[0]: parts for parts in got[3:]}
        assert got[0][1].hex() == tx.txid
        assert got[2][1][:32].hex() == tx.txid and got[2][1][32:33] == b"A" and len(got[2][1]) == 41
        assert by_topic[b"hashblock"][1].hex() == record.hash
        assert by_topic[b"rawblock"][1] == record.raw
        assert by_topic[b"sequence"][1] == bytes.fromhex(record.hash) + b"C"
        for parts in got:
            assert len(parts) == 3 and len(parts[2]) == 4
        # each topic numbers its own messages
        assert int.from_bytes(by_topic[b"hashblock"][2], "little") == counts[b"hashblock"]
        assert int.from_bytes(got[0][2], "little") == counts.get(b"hashtx", 0)
        async with BitcoinRpc([node.url], user=node.user, password=node.password) as rpc:
            listed = await rpc.call("getzmqnotifications")
        assert {n["type"] for n in listed} == {"pubhashblock", "pubhashtx", "pubrawblock", "pubrawtx", "pubsequence"}
        assert {n["address"] for n in listed} == {node.zmq_url}
    finally:
        socket.close(linger=0)
        context.term()


async def test_a_new_tip_announced_over_zmq_is_fetched_without_getblock(node: BitcoinRegtestServer) -> None:
    assert node.zmq_url is not None
    async with opened(btc_config(node, zmq_url=node.zmq_url, poll_interval=30)) as source:
        await source.tip()
        # the subscription takes a moment to reach the publisher: mine until the source has heard a block
        for _ in range(200):
            node.chain.mine()
            try:
                await asyncio.wait_for(source.wait_for_head(30), 0.05)
                break
            except TimeoutError:
                continue
        for _ in range(3):
            waiting = asyncio.ensure_future(source.wait_for_head(30))
            (record,) = node.chain.mine()
            await asyncio.wait_for(waiting, 20)  # polling every 30 s: the announcement woke it
            tip = await source.tip()
            assert tip.hash == record.hash
            before = len(node.calls)
            await until(lambda hash_=record.hash: hash_ in source._announced, "the rawblock received")
            (block,) = await source.fetch(tip.height, tip.height + 1)
            assert block.hash == record.hash and block.parent_hash == record.prev_hash
            assert node.calls[before:] == []  # the bytes came with the announcement, the hash with the tip
        # a fetch not right after `tip` asks for the hash again
        before = len(node.calls)
        (block,) = await source.fetch(node.chain.height - 1, node.chain.height)
        assert block.hash == node.chain.block_at(node.chain.height - 1).hash
        assert {"getblockhash", "getblock"} <= set(node.calls[before:])


async def test_a_block_announced_over_zmq_is_checked_like_any_other(node: BitcoinRegtestServer) -> None:
    """Bytes that came with an announcement under the hash of another block are refused."""
    async with opened(btc_config(node)) as source:
        tip = await source.tip()
        wrong = node.chain.block_at(tip.height - 1).raw
        source._announced[tip.hash] = wrong
        with pytest.raises(BadNodeAnswer, match="sent block"):
            await source.fetch(tip.height, tip.height + 1)


def test_the_source_keeps_a_few_announced_blocks_only() -> None:
    source = BitcoinSource(btc_config(BitcoinRegtestServer()))
    chain = RegtestChain()
    made = chain.mine(10)
    for record in made:
        source._keep_announced(record.raw)
    assert list(source._announced) == [r.hash for r in made[-4:]]
    source._keep_announced(b"short")  # not a block: ignored
    assert list(source._announced) == [r.hash for r in made[-4:]]
