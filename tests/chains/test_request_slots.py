"""The node client's request slots: at most `max_in_flight` requests at a time, short calls before bulk
reads (raw blocks) when both wait for a slot."""

from __future__ import annotations

import asyncio

from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.rpc import Slots
from tests.btcnode import BitcoinRegtestServer
from tests.chains.test_btc_source import btc_config


async def test_a_freed_slot_goes_to_a_short_call_before_queued_bulk_reads() -> None:
    slots = Slots(1)
    order: list[str] = []

    async def hold(name: str, *, bulk: bool) -> None:
        async with slots.hold(bulk=bulk):
            order.append(name)
            await asyncio.sleep(0)

    await slots.acquire(bulk=True)  # a read in flight
    waiting = [
        asyncio.ensure_future(hold("bulk 1", bulk=True)),
        asyncio.ensure_future(hold("bulk 2", bulk=True)),
        asyncio.ensure_future(hold("short 1", bulk=False)),
        asyncio.ensure_future(hold("bulk 3", bulk=True)),
        asyncio.ensure_future(hold("short 2", bulk=False)),
    ]
    await asyncio.sleep(0)
    assert order == []  # every one waits: the slot is held
    slots.release()
    await asyncio.gather(*waiting)
    assert order == ["short 1", "short 2", "bulk 1", "bulk 2", "bulk 3"]
    assert slots.free == 1


async def test_slots_bound_the_holders() -> None:
    slots = Slots(2)
    inside = 0
    most = 0

    async def hold(*, bulk: bool) -> None:
        nonlocal inside, most
        async with slots.hold(bulk=bulk):
            inside += 1
            most = max(most, inside)
            for _ in range(3):
                await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(hold(bulk=i % 3 == 0) for i in range(12)))
    assert most == 2
    assert slots.free == 2


async def test_a_waiter_cancelled_leaves_its_turn_to_the_next() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire(bulk=True))
    second = asyncio.ensure_future(slots.acquire(bulk=True))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    slots.release()
    await second  # the slot went past the cancelled waiter
    assert slots.free == 0
    slots.release()
    assert slots.free == 1


async def test_a_waiter_cancelled_once_handed_the_slot_passes_it_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # handed to `first`, which has not run yet
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await second
    assert slots.free == 0
    slots.release()
    assert slots.free == 1


async def test_a_waiter_cancelled_and_passed_over_in_the_same_turn_is_still_cancelled() -> None:
    """Cancelled, then (before its task runs again) the slot is freed: the release passes over the
    cancelled waiter and keeps the slot; the waiter's task ends cancelled, with no other error."""
    slots = Slots(1)
    await slots.acquire()
    waiting = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    slots.release()  # pops the cancelled waiter, skips it, frees the slot
    [outcome] = await asyncio.gather(waiting, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    assert slots.free == 1


async def test_the_tip_is_asked_before_blocks_queued_ahead_of_it() -> None:
    """Raw blocks read ahead fill the slots; the follower's tip call goes in the first one freed."""
    async with BitcoinRegtestServer() as node:
        node.chain.mine(10)
        source = BitcoinSource(btc_config(node, max_in_flight=1))
        await source.open()
        try:
            hashes = [node.chain.block_at(h).hash for h in range(1, 6)]
            before = len(node.calls)
            reads = [asyncio.ensure_future(source.raw_block(h)) for h in hashes]
            for _ in range(5):
                await asyncio.sleep(0)  # the first read takes the slot, the others wait
            tip = await source.tip()
            raws = await asyncio.gather(*reads)
        finally:
            await source.close()
        assert tip.height == 10
        assert [len(raw) >= 80 for raw in raws] == [True] * 5
        calls = [call for call in node.calls[before:] if call in {"getblock", "getbestblockhash", "getblockheader"}]
        # the tip's first call went in the slot the first read freed, its second before the last reads
        # (in arrival order, every read queued first would have gone before both)
        assert calls[:2] == ["getblock", "getbestblockhash"]
        assert calls.index("getblockheader") <= 3
        assert calls.count("getblock") == 5
