"""Stopping a follower whose node does not answer: no block is in hand yet, so it stops at once."""

from __future__ import annotations

import asyncio

from depositwatch.follower import Follower, FollowerSettings
from depositwatch.models import Block, BlockRef
from depositwatch.registry import AddressRegistry
from depositwatch.store import ChainPolicy, Scope, SqlStore
from depositwatch.testing import MemoryChain


class SilentNode(MemoryChain):
    """Blocks are there, but a fetch never gets its answer (a node that accepted the request and hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.cancelled = False

    async def fetch(self, start: int, stop: int) -> list[Block]:
        self.asked.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


async def stopped_while_asked(
    node: MemoryChain, asked: asyncio.Event, store: SqlStore, *, blocks: int, confirmations: int, batch_blocks: int
) -> Follower:
    """A live follower of `node` (with `blocks` mined) from block 1, stopped once `asked` is set (the node
    holds the call); its run must then end (without the stop, the node would hold it forever)."""
    for _ in range(blocks):
        node.mine()
    follower = Follower(
        source=node,
        store=store,
        registry=AddressRegistry({}),
        policy=ChainPolicy("mem", confirmations=confirmations),
        scope=Scope.live(),
        cursor_name="live:mem",
        settings=FollowerSettings(batch_blocks=batch_blocks, poll_interval=0.01, start_height=1),
    )
    await follower.start()
    running = asyncio.create_task(follower.run())
    await asyncio.wait_for(asked.wait(), 10)
    follower.stop()
    await asyncio.wait_for(running, 10)
    return follower


async def test_stop_does_not_wait_for_a_fetch_that_hangs(store: SqlStore) -> None:
    """stop() while a fetch waits on a silent node: the fetch is abandoned (nothing was read, so nothing is
    half done) and run() returns, instead of waiting for the node's request timeout (minutes)."""
    node = SilentNode()
    follower = await stopped_while_asked(node, node.asked, store, blocks=5, confirmations=3, batch_blocks=4)
    assert node.cancelled
    assert follower.cursor is not None and follower.cursor.height == 0  # nothing committed


class SilentTip(MemoryChain):
    """Answers the first tip call, then the node hangs: the next poll's tip call never gets its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.hanging = asyncio.Event()

    async def tip(self) -> BlockRef:
        self.asked += 1
        if self.asked == 1:
            return await super().tip()
        self.hanging.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_stop_does_not_wait_for_a_tip_call_that_hangs(store: SqlStore) -> None:
    """The follower is caught up and polls its node's tip, which never answers: stop() ends the run at once
    (the tip call is abandoned: no block is in hand), as it does a fetch."""
    node = SilentTip()
    follower = await stopped_while_asked(node, node.hanging, store, blocks=3, confirmations=1, batch_blocks=10)
    assert follower.cursor is not None and follower.cursor.height == 3  # what was read before is committed
