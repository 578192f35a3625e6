"""TRON as a `ChainSource`: a java-tron node's HTTP API (or a TronGrid-compatible provider).

- `open()` reads the node's head and block 0, whose id names the network: a node on another network
  than the config's (mainnet, Nile, Shasta) is refused. `identity()` is that genesis block id.
- `tip()` is `/wallet/getnowblock`, its id recomputed from the header; `hash_at` is
  `/wallet/getblockbynum`, None above the tip (the node answers `{}`).
- `fetch(start, stop)` reads ranges of at most 100 blocks with `/wallet/getblockbylimitnext` and, only
  for blocks that hold smart-contract calls, `/wallet/gettransactioninfobyblocknum` (results, logs and
  internal transactions), at most `max_in_flight` requests at a time. Every block is checked against
  its signed bytes by `tron_decode` before anything is matched.
- Internal TRX transfers exist only where the node runs with `vm.saveInternalTx = true`; with
  `internal = "auto"` the source looks at the infos of recent blocks at start-up and says whether it
  saw any (a node that saves them shows some within a few mainnet blocks).
- `wait_for_head(timeout)` polls the head every `poll_interval`.

The source only decodes: requests, retries, failover, size limits and the API key header belong to
the transport it is given (the shared node client).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from depositwatch.chains.base import BadNodeAnswer, WrongChain
from depositwatch.chains.tron_decode import TronTokens, decode_block, decode_header, needs_infos
from depositwatch.models import Block, BlockRef

if TYPE_CHECKING:
    from depositwatch.registry import AddressRegistry, ChainBook

log = structlog.get_logger(__name__)

RANGE_LIMIT = 100  # java-tron's getblockbylimitnext answers at most 100 blocks
INTERNAL_PROBE_BLOCKS = 20
# Block 0's id of each public network, so that a node on another network is refused by name.
GENESIS_IDS = {
    "mainnet": "00000000000000001ebf88508a03865c71d452e25f4d51194196a1d22b6653dc",
    "nile": "0000000000000000d698d4192c56cb6be724a558448e2684802de4d6cd8690dc",
    "shasta": "0000000000000000de1aa88295e1fcf982742f773e0419c5a9c134c994a9059e",
}


class TronTransport(Protocol):
    """What the source needs from the node client: one JSON answer per API call."""

    async def call(self, path: str, body: dict[str, Any]) -> Any:
        """POST `body` as JSON to `path` (e.g. `/wallet/getnowblock`) and return the parsed answer."""

    async def close(self) -> None:
        """Release connections."""


def _node_error(answer: Any) -> str | None:
    """java-tron answers a failed call with HTTP 200 and `{"Error": "..."}`."""
    error = answer.get("Error") if isinstance(answer, dict) else None
    return error[:200] if isinstance(error, str) else None


class _Watched:
    """A chain book's keys, active and revoked, as one container (read at each fetch: reloads are seen)."""

    __slots__ = ("book",)

    def __init__(self, book: ChainBook) -> None:
        self.book = book

    def __contains__(self, key: object) -> bool:
        return key in self.book.revoked or key in self.book.active


class TronSource:
    """A TRON node's view of one chain, reduced to `Block` records."""

    def __init__(
        self,
        name: str,
        transport: TronTransport,
        tokens: TronTokens,
        *,
        network: str | None = None,
        internal: bool | None = None,
        max_in_flight: int = 4,
        poll_interval: float = 3.0,
    ) -> None:
        self.name = name
        self.transport = transport
        self.tokens = tokens
        self.network = network
        self.internal = internal  # None: decide at open() by looking at recent blocks
        self.poll_interval = poll_interval
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._genesis: str | None = None
        self._head: int | None = None
        self._registry: AddressRegistry | None = None

    def watch(self, registry: AddressRegistry) -> None:
        """Build transfers only for keys of the registry's book for this chain. Every block is still
        checked whole; the matches are the same (tested), the address text is built for hits only."""
        self._registry = registry

    async def _call(self, path: str, body: dict[str, Any]) -> Any:
        async with self._in_flight:
            answer = await self.transport.call(path, body)
        error = _node_error(answer)
        if error is not None:
            raise BadNodeAnswer(f"chain {self.name}: {path}: the node says {error!r}")
        return answer

    async def open(self) -> None:
        """Check the network by its genesis id; decide whether internal transactions can be seen."""
        genesis = await self.identity()
        expected = GENESIS_IDS.get(self.network or "")
        if expected is not None and genesis != expected:
            known = {v: k for k, v in GENESIS_IDS.items()}.get(genesis, "an unknown network")
            raise WrongChain(
                f"chain {self.name}: the node follows {known} (block 0 is {genesis}), but the config says "
                f"network = {self.network!r}; point rpc_urls at the right node or fix network"
            )
        tip = await self.tip()
        if self.internal is None:
            self.internal = await self._node_saves_internal(tip.height)
        log.info(
            "tron node checked",
            chain=self.name,
            genesis=genesis,
            height=tip.height,
            internal_transactions="seen" if self.internal else "not seen: internal TRX transfers will be missed",
        )

    async def _node_saves_internal(self, tip: int) -> bool:
        low = max(1, tip - INTERNAL_PROBE_BLOCKS + 1)
        answers = await asyncio.gather(
            *(self._call("/wallet/gettransactioninfobyblocknum", {"num": n}) for n in range(low, tip + 1))
        )
        return any(
            isinstance(info, dict) and "internal_transactions" in info
            for infos in answers
            if isinstance(infos, list)
            for info in infos
        )

    async def close(self) -> None:
        """Release the transport's connections."""
        await self.transport.close()

    async def identity(self) -> str:
        """Block 0's id."""
        if self._genesis is None:
            answer = await self._call("/wallet/getblockbynum", {"num": 0, "visible": False})
            _, block_id, _, _ = decode_header(answer, 0)
            self._genesis = block_id
        return self._genesis

    async def tip(self) -> BlockRef:
        """The node's head block."""
        number, block_id, _, _ = decode_header(await self._call("/wallet/getnowblock", {"visible": False}))
        self._head = number
        return BlockRef(number, block_id)

    async def hash_at(self, height: int) -> str | None:
        """The id of the node's block at `height`, or None above its head."""
        if height < 0:
            raise ValueError(f"height {height} is negative")
        answer = await self._call("/wallet/getblockbynum", {"num": height, "visible": False})
        if answer == {}:
            return None
        return decode_header(answer, height)[1]

    async def fetch(self, start: int, stop: int) -> list[Block]:
        """Blocks `start` to `stop - 1`, in order (fewer if the head is lower)."""
        if start < 0:
            raise ValueError(f"start {start} is negative")
        ranges = [range(low, min(low + RANGE_LIMIT, stop)) for low in range(start, stop, RANGE_LIMIT)]
        raw: list[Any] = []
        for heights in ranges:
            answer = await self._call(
                "/wallet/getblockbylimitnext",
                {"startNum": heights.start, "endNum": heights.stop, "visible": False},
            )
            got = self._blocks_of(answer, heights)
            raw.extend(got)
            if len(got) < len(heights):
                break  # the head is lower
        return await self._decode(start, raw)

    def _blocks_of(self, answer: Any, heights: range) -> list[Any]:
        if answer == {}:
            return []
        blocks = answer.get("block") if isinstance(answer, dict) else None
        if not isinstance(blocks, list) or len(blocks) > len(heights):
            raise BadNodeAnswer(
                f"chain {self.name}: getblockbylimitnext {heights.start}..{heights.stop}: not a list of at most "
                f"{len(heights)} blocks"
            )
        return blocks

    async def _decode(self, start: int, raw: Sequence[Any]) -> list[Block]:
        async def infos_for(height: int, block: Any) -> Any:
            if not needs_infos(block):
                return []
            return await self._call("/wallet/gettransactioninfobyblocknum", {"num": height})

        infos = await asyncio.gather(*(infos_for(start + n, block) for n, block in enumerate(raw)))
        internal = bool(self.internal)
        watch = _Watched(self._registry.book(self.name)) if self._registry is not None else None
        return [
            decode_block(block, block_infos, start + n, self.tokens, internal=internal, watch=watch)
            for n, (block, block_infos) in enumerate(zip(raw, infos, strict=True))
        ]

    async def wait_for_head(self, timeout: float) -> None:
        """Return when the head moved past the last one seen, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = self._head
        while (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(remaining, self.poll_interval))
            if seen is None or (await self.tip()).height > seen:
                return
