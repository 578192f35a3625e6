"""Test helpers that ship beside the real thing: an in-memory ChainSource true to the protocol.

It lets the Follower's reorg and resume logic be checked over thousands of random chains in seconds;
the real nodes (anvil, the Bitcoin regtest server) check the sources themselves.
"""

from __future__ import annotations

import asyncio
import hashlib

from depositwatch.chains.base import NodeUnavailable
from depositwatch.models import Block, BlockRef, Transfer


def _hash(parent: str, height: int, salt: str) -> str:
    return hashlib.sha256(f"{parent}|{height}|{salt}".encode()).hexdigest()


class MemoryChain:
    """A chain of `Block`s held in memory, with reorgs and outages on demand."""

    def __init__(self, name: str = "mem", identity: str = "memory-1", genesis_time: int = 1_700_000_000) -> None:
        self.name = name
        self._identity = identity
        self.blocks: list[Block] = [Block(0, _hash("", 0, "genesis"), "", genesis_time)]
        self.down = False
        self.new_head = asyncio.Event()
        self.read_until: int | None = None  # nothing is read ahead here

    def mine(self, transfers: tuple[Transfer, ...] = (), salt: str = "") -> Block:
        """Append a block with these transfers."""
        parent = self.blocks[-1]
        block = Block(
            parent.height + 1, _hash(parent.hash, parent.height + 1, salt), parent.hash, parent.time + 12, transfers
        )
        self.blocks.append(block)
        self.new_head.set()
        return block

    def reorg(self, depth: int) -> None:
        """Drop the top `depth` blocks (mine a competing branch afterwards)."""
        del self.blocks[len(self.blocks) - depth :]

    def _check(self) -> None:
        if self.down:
            raise NodeUnavailable(f"chain {self.name}: node down")

    async def open(self) -> None:
        self._check()

    async def close(self) -> None:
        return None

    async def identity(self) -> str:
        self._check()
        return self._identity

    async def tip(self) -> BlockRef:
        self._check()
        return self.blocks[-1].ref

    async def hash_at(self, height: int) -> str | None:
        self._check()
        return self.blocks[height].hash if 0 <= height < len(self.blocks) else None

    async def fetch(self, start: int, stop: int) -> list[Block]:
        self._check()
        return self.blocks[start:stop]

    async def wait_for_head(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.new_head.wait(), timeout)
        except TimeoutError:
            pass
        self.new_head.clear()
