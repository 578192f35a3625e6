"""TRON as a `ChainSource`: a java-tron node's HTTP API (or a TronGrid-compatible provider).

- `open()` reads the node's head and block 0, whose id names the network: a node on another network
  than the config's (mainnet, Nile, Shasta) is refused. `identity()` is that genesis block id.
- `tip()` is `/wallet/getnowblock`, its id recomputed from the header; `hash_at` is
  `/wallet/getblockbynum`, None above the tip (the node answers `{}`).
- `fetch(start, stop)` reads ranges of at most 100 blocks with `/wallet/getblockbylimitnext` and, only
  for blocks that hold smart-contract calls, `/wallet/gettransactioninfobyblocknum` (results, logs and
  internal transactions), at most `max_in_flight` requests at a time. Every block is checked against
  its signed bytes by `tron_decode` before anything is matched. While catching up (or replaying) the
  next range's answers are read ahead during this range's decoding and commit (`read_ahead > 0`). A
  range whose answer passes `max_response_bytes` (busy blocks) is asked again in halves, down to one
  block; a single block over the cap is the error.
- Internal TRX transfers exist only where the node runs with `vm.saveInternalTx = true`; with
  `internal = "auto"` the source looks at the infos of recent blocks at start-up and says whether it
  saw any (a node that saves them shows some within a few mainnet blocks).
- `wait_for_head(timeout)` polls the head every `poll_interval`.
- Any TRC-20 to or from a revoked address (`any_tokens`, the default): Transfer logs of contracts
  outside `tokens` are kept when their `from` or `to` is revoked, with the keys given to `set_revoked`,
  or else the watched book's revoked keys as they stand at each fetch. Their assets (`listed = False`)
  are named from the contracts, asked over `/wallet/triggerconstantcontract` once each and kept in the
  store given to `set_metadata_cache` (`chains/tron_tokens.py`).

The source only decodes: requests, retries, failover, size limits and the API key header belong to
the transport it is given (the shared node client, `NodeTransport`). After a failover (the client's
`switches` moved) `tip`, `hash_at` and `fetch` read block 0 again before they answer: a node of another
network is refused by name.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from depositwatch.addresses.tron import parse_tron_address
from depositwatch.chains.base import BadNodeAnswer, TokenMetadataCache, WrongChain
from depositwatch.chains.rpc import AnswerTooLarge, NodeClient, chain_client
from depositwatch.chains.tron_decode import TronTokens, decode_block, decode_header, needs_infos
from depositwatch.chains.tron_tokens import TronTokenDirectory
from depositwatch.config import TRON_API_KEY_HEADER, ChainConfig
from depositwatch.models import Asset, Block, BlockRef

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


class NodeTransport:
    """The shared node client as a `TronTransport`: POST JSON to a path under each configured URL."""

    def __init__(self, client: NodeClient) -> None:
        self.client = client

    @property
    def switches(self) -> int:
        """Failed attempts so far (a change: the next answer may come from another node)."""
        return self.client.switches

    async def call(self, path: str, body: dict[str, Any]) -> Any:
        return await self.client.post_path(path, body)

    async def close(self) -> None:
        await self.client.close()


def tron_client(config: ChainConfig) -> NodeClient:
    """The node client of a configured TRON chain: one round over the URLs per request (the follower
    backs off), the configured limits, and the API key header (if any) to those URLs only."""
    headers = {TRON_API_KEY_HEADER: config.api_key.resolve()} if config.api_key is not None else None
    return chain_client(config, "tron", headers=headers)


def tron_tokens(config: ChainConfig) -> TronTokens:
    """The configured TRC-20 contracts (by their 20 bytes) and TRC-10 ids."""
    return TronTokens(
        trc20={parse_tron_address(t.contract).key: Asset(t.symbol, t.decimals, t.contract) for t in config.tokens},
        trc10={t.id: Asset(t.symbol, t.decimals) for t in config.trc10},
    )


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve a dropped read-ahead's outcome, so that its failure is not reported as never retrieved."""
    if not task.cancelled():
        task.exception()


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
        read_ahead: bool = True,
        any_tokens: bool = True,
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
        self._checked_switches = 0
        self.read_ahead = read_ahead
        self._ahead: tuple[int, int, asyncio.Task[list[tuple[Any, Any]]]] | None = None
        self.read_until: int | None = None  # a replay's (or shard's) last block: nothing past it is read ahead
        self.any_tokens = any_tokens
        self._revoked: Container[bytes] | None = None
        self.unlisted = TronTokenDirectory(name, self)

    @classmethod
    def from_config(cls, config: ChainConfig, *, transport: TronTransport | None = None) -> TronSource:
        """The source of a `kind = "tron"` chain section."""
        if config.kind != "tron":
            raise ValueError(f"chain {config.name} is not a TRON chain")
        return cls(
            config.name,
            transport or NodeTransport(tron_client(config)),
            tron_tokens(config),
            network=config.network if config.network in GENESIS_IDS else None,
            internal=None if config.internal == "auto" else config.internal,
            max_in_flight=config.max_in_flight,
            poll_interval=config.poll_interval,
            read_ahead=config.read_ahead > 0,
            any_tokens=config.any_tokens,
        )

    def watch(self, registry: AddressRegistry) -> None:
        """Build transfers only for keys of the registry's book for this chain. Every block is still
        checked whole; the matches are the same (tested), the address text is built for hits only."""
        self._registry = registry

    def set_revoked(self, keys: Container[bytes] | None) -> None:
        """Keep Transfer logs of every contract, configured or not, whose `from` or `to` is one of `keys`
        (20-byte accounts); None: the watched book's revoked keys at each fetch (none without a book).
        Nothing is kept beyond the configured tokens when `any_tokens` is off."""
        self._revoked = keys

    def set_metadata_cache(self, cache: TokenMetadataCache | None) -> None:
        """Where looked-up token metadata is kept across restarts (the store); memory only without one."""
        self.unlisted.cache = cache

    def _revoked_keys(self) -> Container[bytes] | None:
        if not self.any_tokens:
            return None
        if self._revoked is not None:
            return self._revoked
        if self._registry is not None:
            revoked = self._registry.book(self.name).revoked
            return revoked or None
        return None

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
        self._check_network(genesis)
        self._checked_switches = self._switches()
        tip = await self.tip()
        if self.internal is None:
            self.internal = await self._node_saves_internal(tip.height)
            seen = "seen" if self.internal else "not seen: internal TRX transfers will be missed"
        else:
            seen = "on (config)" if self.internal else "off (config): internal TRX transfers are not read"
        log.info("tron node checked", chain=self.name, genesis=genesis, height=tip.height, internal_transactions=seen)

    def _check_network(self, genesis: str) -> None:
        expected = GENESIS_IDS.get(self.network or "")
        if expected is not None and genesis != expected:
            known = {v: k for k, v in GENESIS_IDS.items()}.get(genesis, "an unknown network")
            raise WrongChain(
                f"chain {self.name}: the node follows {known} (block 0 is {genesis}), but the config says "
                f"network = {self.network!r}; point rpc_urls at the right node or fix network"
            )

    def _switches(self) -> int:
        return int(getattr(self.transport, "switches", 0))

    async def _recheck_after_failover(self) -> None:
        """After a failover, block 0 of the node now answering must be the one seen at start."""
        switches = self._switches()
        if switches == self._checked_switches or self._genesis is None:
            return
        answer = await self._call("/wallet/getblockbynum", {"num": 0, "visible": False})
        genesis = decode_header(answer, 0)[1]
        if genesis != self._genesis:
            raise WrongChain(
                f"chain {self.name}: after a failover the node's block 0 is {genesis}, not {self._genesis} as at "
                "start: rpc_urls mix networks"
            )
        if self._switches() == switches:
            self._checked_switches = switches

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
        """Release the transport's connections (a range read ahead is dropped)."""
        self._drop_ahead()
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
        await self._recheck_after_failover()
        self._head = number
        return BlockRef(number, block_id)

    async def hash_at(self, height: int) -> str | None:
        """The id of the node's block at `height`, or None above its head."""
        if height < 0:
            raise ValueError(f"height {height} is negative")
        answer = await self._call("/wallet/getblockbynum", {"num": height, "visible": False})
        await self._recheck_after_failover()
        if answer == {}:
            return None
        return decode_header(answer, height)[1]

    async def fetch(self, start: int, stop: int) -> list[Block]:
        """Blocks `start` to `stop - 1`, in order (fewer if the head is lower).

        While catching up, the next range of the same length is read ahead (answers only: decoding and
        matching happen when it is asked for, with the address book of that moment), so the node's time
        and the network's overlap this range's decoding, matching and commit.
        """
        if start < 0:
            raise ValueError(f"start {start} is negative")
        raw = await self._answers_ahead(start, stop)
        if raw is None:
            raw = await self._answers(start, stop)
        limit = self._head if self.read_until is None or self._head is None else min(self._head, self.read_until)
        if self.read_ahead and len(raw) == stop - start and limit is not None and stop <= limit:
            self._ahead_from(stop, min(stop + (stop - start), limit + 1))
        blocks = await self._decode(start, raw)
        await self._recheck_after_failover()
        return blocks

    async def _answers(self, start: int, stop: int) -> list[tuple[Any, Any]]:
        """Each block's answer with its transaction infos (`[]` for blocks without contract calls)."""
        raw: list[Any] = []
        low = start
        span = RANGE_LIMIT
        while low < stop:
            heights = range(low, min(low + span, stop))
            try:
                answer = await self._call(
                    "/wallet/getblockbylimitnext",
                    {"startNum": heights.start, "endNum": heights.stop, "visible": False},
                )
            except AnswerTooLarge:
                if len(heights) == 1:
                    raise
                span = max(1, len(heights) // 2)  # busy blocks: smaller ranges until they fit the cap
                continue
            got = self._blocks_of(answer, heights)
            raw.extend(got)
            if len(got) < len(heights):
                break  # the head is lower
            low = heights.stop

        async def infos_for(height: int, block: Any) -> Any:
            if not needs_infos(block):
                return []
            return await self._call("/wallet/gettransactioninfobyblocknum", {"num": height})

        infos = await asyncio.gather(*(infos_for(start + n, block) for n, block in enumerate(raw)))
        return list(zip(raw, infos, strict=True))

    def _ahead_from(self, start: int, stop: int) -> None:
        self._drop_ahead()
        self._ahead = (start, stop, asyncio.ensure_future(self._answers(start, stop)))

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            task = self._ahead[2]
            task.cancel()
            task.add_done_callback(_consume)
            self._ahead = None

    async def _answers_ahead(self, start: int, stop: int) -> list[tuple[Any, Any]] | None:
        """The answers read ahead for a range starting at `start` (completed up to `stop`), else None."""
        ahead = self._ahead
        if ahead is None:
            return None
        self._ahead = None
        first, last, task = ahead
        if first != start:
            task.cancel()
            task.add_done_callback(_consume)
            return None
        raw = await task  # its failure is this fetch's failure; the next one asks again
        if len(raw) < last - first or last >= stop:
            return raw[: stop - start]
        return raw + await self._answers(last, stop)

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

    async def _decode(self, start: int, raw: Sequence[tuple[Any, Any]]) -> list[Block]:
        internal = bool(self.internal)
        watch = _Watched(self._registry.book(self.name)) if self._registry is not None else None
        revoked = self._revoked_keys()
        blocks = []
        for n, (block, block_infos) in enumerate(raw):
            blocks.append(
                decode_block(
                    block, block_infos, start + n, self.tokens, internal=internal, watch=watch, revoked=revoked
                )
            )
            if self._ahead is not None:
                await asyncio.sleep(0)  # let the range read ahead take in its answers between blocks
        if revoked is not None:
            blocks = await self._name_unlisted(blocks)
        return blocks

    async def _name_unlisted(self, blocks: list[Block]) -> list[Block]:
        """Unlisted tokens' transfers with the assets their contracts say they are."""
        contracts = {t.asset.contract for b in blocks for t in b.transfers if not t.asset.listed and t.asset.contract}
        if not contracts:
            return blocks
        assets = await self.unlisted.assets(contracts)
        named = []
        for block in blocks:
            if all(t.asset.listed for t in block.transfers):
                named.append(block)
                continue
            transfers = tuple(
                t
                if t.asset.listed or t.asset.contract is None
                else dataclasses.replace(t, asset=assets[t.asset.contract])
                for t in block.transfers
            )
            named.append(dataclasses.replace(block, transfers=transfers))
        return named

    async def wait_for_head(self, timeout: float) -> None:
        """Return when the head moved past the last one seen, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = self._head
        while (remaining := deadline - loop.time()) > 0:
            await asyncio.sleep(min(remaining, self.poll_interval))
            if seen is None or (await self.tip()).height > seen:
                return
