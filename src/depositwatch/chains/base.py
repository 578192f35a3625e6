"""The `ChainSource` protocol every chain implements, and the errors sources raise."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from depositwatch.models import Block, BlockRef, TokenInfo


class ChainError(Exception):
    """A chain source problem that the follower handles by backing off and trying again."""


class NodeUnavailable(ChainError):
    """The node cannot be reached or is not ready (connection refused, timeout, warming up)."""


class BadNodeAnswer(ChainError):
    """The node answered, but the answer is malformed, inconsistent or hostile; the message says which call."""


class WrongChain(Exception):
    """The node follows another chain than the config or the store says; never retried."""


class ChainSource(Protocol):
    """A node's view of one chain, reduced to `Block` records. No matching, no storage.

    `fetch` returns consecutive blocks in height order; the follower checks that each block's parent
    is the block before it and treats any gap or mismatch as a reorg.
    """

    name: str
    # The last block anyone will ask for (a replay's or a shard's last), or None: reading ahead stops there.
    read_until: int | None

    async def open(self) -> None:
        """Connect and check the node is on the configured chain (raise `WrongChain` if not)."""

    async def close(self) -> None:
        """Release connections."""

    async def identity(self) -> str:
        """What identifies the chain for the store: the EVM chain id, or the Bitcoin genesis hash."""

    async def tip(self) -> BlockRef:
        """The node's best block."""

    async def hash_at(self, height: int) -> str | None:
        """The hash of the node's block at `height`, or None above its tip."""

    async def fetch(self, start: int, stop: int) -> list[Block]:
        """Blocks `start` to `stop - 1`, in order (fewer if the tip is lower)."""

    async def wait_for_head(self, timeout: float) -> None:
        """Return when a new block may be available, or after `timeout` seconds (poll, WebSocket, ZMQ)."""


class TokenMetadataCache(Protocol):
    """Where token metadata looked up from contracts is kept (the store), so each contract is asked once.

    Chain-neutral: EVM sources key it by "0x" + 40 lower-case hex digits; a TRON source would key it by
    its own contract text form. The store implements it.
    """

    async def lookup(self, chain: str, contracts: Collection[str]) -> dict[str, TokenInfo]:
        """The cached entries among `contracts`."""

    async def save(self, chain: str, infos: Sequence[TokenInfo]) -> None:
        """Keep these entries (an entry already kept stays as it is)."""
