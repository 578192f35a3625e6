"""Stopping a follower whose node does not answer: no block is in hand yet, so it stops at once."""

from __future__ import annotations

import asyncio

from depositwatch.follower import Follower, FollowerSettings
from depositwatch.models import Block
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


async def test_stop_does_not_wait_for_a_fetch_that_hangs(store: SqlStore) -> None:
    """stop() while a fetch waits on a silent node: the fetch is abandoned (nothing was read, so nothing is
    half done) and run() returns, instead of waiting for the node's request timeout (minutes)."""
    node = SilentNode()
    for _ in range(5):
        node.mine()
    follower = Follower(
        source=node,
        store=store,
        registry=AddressRegistry({}),
        policy=ChainPolicy("mem", confirmations=3),
        scope=Scope.live(),
        cursor_name="live:mem",
        settings=FollowerSettings(batch_blocks=4, poll_interval=0.01, start_height=1),
    )
    await follower.start()
    running = asyncio.create_task(follower.run())
    await asyncio.wait_for(node.asked.wait(), 10)
    follower.stop()
    await asyncio.wait_for(running, 10)
    assert node.cancelled
    assert follower.cursor is not None and follower.cursor.height == 0  # nothing committed
