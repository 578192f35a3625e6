"""A chain's loop stops at once on SIGTERM while it reconnects to a node that does not answer: nothing is in
hand while it opens the source or positions the follower, so the node call is abandoned, not waited for
(the node client retries a refused connection for 30 s; a silent node holds a call for its read timeout)."""

from __future__ import annotations

import asyncio

from depositwatch.chain_runner import ChainRunner
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.health import ChainState
from depositwatch.leadership import open_leadership
from depositwatch.metrics import Metrics
from depositwatch.models import BlockRef
from depositwatch.registry import AddressRegistry
from depositwatch.store import SqlStore
from depositwatch.testing import MemoryChain


class Unanswered(MemoryChain):
    """A node that takes the named call and never answers it."""

    def __init__(self, hangs: str) -> None:
        super().__init__()
        self.hangs = hangs
        self.asked = asyncio.Event()

    async def _hang(self) -> None:
        self.asked.set()
        await asyncio.Event().wait()

    async def open(self) -> None:
        if self.hangs == "open":
            await self._hang()
        await super().open()

    async def tip(self) -> BlockRef:
        if self.hangs == "tip":
            await self._hang()
        return await super().tip()


async def stop_while_asked(store: SqlStore, node: Unanswered, state: str) -> None:
    """The chain's loop (its state `state`) runs until the node is asked the call it hangs on; then the
    stop is set, and the loop must end (the node would hold it forever)."""
    config = ChainConfig.model_validate(
        {"name": "eth", "kind": "evm", "chain_id": 1, "rpc_urls": ["http://127.0.0.1:9/"], "poll_interval": 0.05}
    )
    chain = ChainState(config=config, source=node, state=state)
    stopping = asyncio.Event()

    async def reload_book() -> None:
        return None

    leases = open_leadership(store, ttl=5.0)
    runner = ChainRunner(
        store=store,
        leases=leases,
        registry=AddressRegistry({}),
        alerts=AlertsConfig(),
        metrics=Metrics(),
        components={},
        stopping=stopping,
        wake=lambda: None,
        reload_book=reload_book,
    )
    loop = asyncio.create_task(runner.follow(chain))
    try:
        await asyncio.wait_for(node.asked.wait(), 10)
        stopping.set()
        if chain.follower is not None:
            chain.follower.stop()  # as the service does
        await asyncio.wait_for(loop, 10)  # the node never answers: without the stop, never
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await leases.release_all()


async def test_stop_while_reconnecting_to_a_node_that_does_not_answer(store: SqlStore) -> None:
    """The node was down (the chain is `node-down`): the loop reopens the source, and the node hangs."""
    await stop_while_asked(store, Unanswered("open"), "node-down")


async def test_stop_while_positioning_a_fresh_cursor_at_a_silent_node(store: SqlStore) -> None:
    """A live follower with no start height asks the node's tip for its first cursor, and the node hangs."""
    await stop_while_asked(store, Unanswered("tip"), "starting")
