"""EVM chains (Ethereum and its kin) as a `ChainSource`: native ETH and configured ERC-20 transfers.

`EvmSource` is the source: it connects and checks the chain id, finds out which optional methods the node
serves, keeps the watched and revoked keys, answers `tip` and `hash_at`, and fetches ranges of blocks
(read ahead while catching up) with their receipts and traces. Its parts: what counts as a transfer and
how each answer is checked, `chains/evm_decode.py` (no I/O); the JSON-RPC plumbing, `chains/evm_rpc.py`;
the Transfer logs over `eth_getLogs`, `chains/evm_logs.py`; the two fetch paths, `chains/evm_full.py`
(every block in full) and `chains/evm_filtered.py` (only what touches the watched set); unlisted tokens'
metadata, `chains/evm_tokens.py`; new heads (WebSocket or polling), `chains/evm_heads.py`.

How blocks are fetched: one `eth_getLogs` over the whole range (split every `getlogs_max_range`
blocks, and halved again when the node says the answer is too large), JSON-RPC batches of
`batch_blocks` `eth_getBlockByNumber(n, true)` calls, then one batch of `eth_getBlockReceipts` for the
blocks that need statuses (a value-carrying transaction, or a token log), or `eth_getTransactionReceipt`
for just those transactions when the node lacks `eth_getBlockReceipts`. At most `max_in_flight`
requests are in flight; chunks are pipelined. When a whole range was there and the node has the next
one (replay, catching up), the next range of the same size is read ahead while the caller matches and
commits this one. Every answer is validated; anything malformed raises `BadNodeAnswer` naming the method
and block, and connection failures raise `NodeUnavailable`.

`set_log_filter(keys)` narrows the work to the watched addresses: transfers touching none of them are
left out, receipts are asked only for blocks where a key sends or receives, and up to
`LOG_FILTER_MAX_KEYS` keys go to the node as `eth_getLogs` topic OR-lists (Transfer from a key, and
Transfer to a key) instead of every Transfer log of the configured tokens. Measured by
`bench/eth_bench.py` on 3,000 anvil blocks of 15 transactions (docs/performance.md): with 20 keys, anvil's
CPU falls from 2.9 to 2.6 ms a block and this source's from 0.9 to 0.2 ms (the blocks themselves must
still be fetched for ETH); with 5,000 keys, filtered here, the client's from 0.9 to 0.7 ms. Up to
`filter_max_keys` keys, on a node that serves `trace_filter`, the blocks themselves are not fetched in
full either: see `chains/evm_filtered.py` (`fetch_path` says which path a fetch takes, and why).

Every call goes through the shared node client (`chains/rpc.py`: aiohttp + orjson, batched, failover
across every URL of `rpc_urls`, size cap, no redirects): the chain id, the tip and block hashes too, so
web3 is not on this path. web3 would parse those with the standard library's JSON parser, which a
deeply nested answer crashes (exit 139) once py_ecc has raised the recursion limit, and it costs about
9 ms of client CPU a block, twice what anvil spends serving it. After any failed request (a reconnect,
a failover to another URL) the chain id is asked again before the next answer is believed: a node on
another chain raises `WrongChain`. Measured on this 2-core machine (shared
with other work, so wall-clock figures vary by about 20 % between runs: medians of 4 runs) against
anvil 1.7.1 serving 2,000 generated blocks of 20 transactions each (10 ETH transfers, 10 ERC-20
transfers), 20 blocks a batch, 4 requests in flight, every block's full transactions and receipts
plus one `eth_getLogs`:

    client                                        blocks/s   client CPU/block   anvil CPU/block
    bare batched aiohttp + orjson (no decoding)      169         0.55 ms            4.2 ms
    EvmSource.fetch, 100 blocks a call               163         0.55 ms            4.1 ms
    EvmSource.fetch, the 2,000 blocks in one call    159         0.69 ms            4.2 ms
    web3: gather of get_block(n, True) and
          get_block_receipts(n), 4 in flight          61         8.9 ms             4.4 ms

The node is the limit: this source stays within 4-6 % of the bare client, and its decoding and
validation cost about what the bare client's JSON parsing costs.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import structlog

from depositwatch.chains.base import BadNodeAnswer, TokenMetadataCache, WrongChain
from depositwatch.chains.evm_decode import (
    _QUANTITY,
    MAX_INDEX,
    _dict,
    _hash,
    _Invalid,
    _quantity,
    _Revoked,
    _Watch,
)
from depositwatch.chains.evm_filtered import fetch_filtered, fetch_path, filtered, probe_trace_filter
from depositwatch.chains.evm_full import fetch_full
from depositwatch.chains.evm_heads import follow_heads, wait_for_head
from depositwatch.chains.evm_rpc import (
    _NOT_SUPPORTED,
    CALL_TRACER,
    _client,
    _EvmRpc,
    _rpc_error,
    _unsupported,
)
from depositwatch.chains.evm_tokens import TokenDirectory
from depositwatch.chains.rpc import Call, NodeClient
from depositwatch.config import ChainConfig
from depositwatch.models import Asset, Block, BlockRef

# A watched set up to this size is sent to the node as eth_getLogs topic OR-lists (geth refuses more than
# 1,000 sub-topics a position, some hosted endpoints more than 100); a larger one is filtered here.
LOG_FILTER_MAX_KEYS = 100
_TOPIC_PAD = "0x" + "00" * 12

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _ReadAhead:
    """A range fetched ahead of the caller (the task's answer or error waits there)."""

    start: int
    stop: int
    watch: _Watch | None
    revoked: _Revoked | None
    task: asyncio.Future[list[Block]]

    def drop(self) -> None:
        """Cancel it without waiting (where no await is possible)."""
        if not self.task.done():
            self.task.cancel()
        # Fetch the outcome so an error of a range nobody asked for is never reported as unretrieved.
        self.task.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def cancel(self) -> None:
        """Cancel it and wait until it has stopped."""
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _cancel_all(queue: Sequence[_ReadAhead]) -> None:
    """Cancel ranges read ahead and wait until they have stopped."""
    for ahead in queue:
        await ahead.cancel()


# --- the source --------------------------------------------------------------------------------------


class EvmSource:
    """A node's view of one EVM chain, reduced to `Block` records."""

    def __init__(self, config: ChainConfig, *, client: NodeClient | None = None) -> None:
        if config.kind != "evm" or config.chain_id is None:
            raise ValueError(f"chain {config.name} is not an EVM chain")
        self.name = config.name
        self.config = config
        self.chain_id: int = config.chain_id
        self.ws_url = config.ws_url
        self.native = Asset(config.native_asset_symbol, config.native_asset_decimals, None)
        self.tokens: dict[str, Asset] = {
            token.contract.lower(): Asset(token.symbol, token.decimals, token.contract) for token in config.tokens
        }
        self.block_receipts = True  # found out in open()
        self.traces = False  # found out in open() when config.traces is on
        self.client = client or _client(config)
        self._rpc = _EvmRpc(self.name, self.client)
        self.unlisted = TokenDirectory(self.name, self._rpc)
        self._revoked: _Revoked | None = None
        self._opened = False
        self._checked_switches = 0  # the client's `switches` when the chain id was last checked
        self._ws_task: asyncio.Task[None] | None = None
        self._ws_live = False
        self._head = asyncio.Event()
        self._ids = itertools.count(1)
        self._watch: _Watch | None = None
        self._node_filter = True  # topic OR-lists in eth_getLogs; off after a node refuses them
        self._known_tip = -1  # the node's height at the last eth_blockNumber
        self._ahead: list[_ReadAhead] = []  # consecutive ranges read ahead, the next one first
        # The filtered path (chains/evm_filtered.py): books of at most this many keys fetch only what can
        # match, where the node serves trace_filter (found out in open()).
        self.filter_max_keys = config.filter_max_keys
        self.trace_filter = False
        self.trace_union = False  # trace_filter takes `mode: union` (both directions in one call)
        self._said_path: str | None = None
        # The last block worth reading ahead (a replay's or a replay shard's last block): None, the tip.
        self.read_until: int | None = None

    @property
    def log_filter_limit(self) -> int:
        """The largest watched set whose keys go to the node as eth_getLogs topic OR-lists (in books of at most
        `LOG_FILTER_MAX_KEYS`): the larger of that and `filter_max_keys`."""
        return max(LOG_FILTER_MAX_KEYS, self.filter_max_keys)

    @property
    def fetch_path(self) -> str:
        """Which way `fetch` reads the chain now, and why (logged when it changes, shown in replay's summary)."""
        return fetch_path(self, self._watch, self._revoked)

    def _say_path(self) -> None:
        if not self._opened:
            return  # open() says it
        path = self.fetch_path
        if path != self._said_path:
            self._said_path = path
            log.info("evm fetch path", chain=self.name, path=path)

    @property
    def url(self) -> str:
        """The node URL in use now, redacted."""
        return self.client.url

    # what to fetch

    def set_log_filter(self, keys: Collection[bytes] | None) -> None:
        """Fetch only what concerns `keys` (20-byte addresses); None, the default, fetches every transfer.

        With keys set, `fetch` leaves out every transfer whose sender and recipient are both outside
        them: matching is unchanged as long as the keys cover the chain's whole book (active and
        revoked). It saves the node work: receipts are asked only for blocks where a value transfer or
        a token log touches a key, and with at most `LOG_FILTER_MAX_KEYS` keys `eth_getLogs` filters on
        the node by topic OR-lists (Transfer from a key, and separately Transfer to a key) instead of
        returning every Transfer log of the configured tokens. A node that refuses such a filter is
        asked again without it, and the source stops sending topic lists. Each `fetch` uses the keys
        set when it starts: call this again whenever the book changes, before the new book is used.
        """
        if keys is None:
            self._watch = None
            self._drop_ahead()
            self._say_path()
            return
        frozen = frozenset(keys)
        for key in frozen:
            if not isinstance(key, bytes) or len(key) != 20:
                raise ValueError(f"chain {self.name}: log filter key {key!r} is not 20 bytes")
        books = None
        if len(frozen) <= self.log_filter_limit:
            topics = sorted(_TOPIC_PAD + key.hex() for key in frozen)
            books = tuple(topics[n : n + LOG_FILTER_MAX_KEYS] for n in range(0, len(topics), LOG_FILTER_MAX_KEYS))
        self._watch = _Watch(frozen, frozenset("0x" + key.hex() for key in frozen), books)
        self._drop_ahead()  # read with the old keys
        self._say_path()

    def set_revoked(self, keys: Collection[bytes] | None) -> None:
        """Keep Transfer logs of every contract, configured or not, whose `from` or `to` is one of `keys`
        (the chain's revoked addresses); None or empty keeps only the configured tokens' logs.

        A log of an unconfigured contract gets an asset with `listed = False`, named from the
        contract (`chains/evm_tokens.py`). How the logs are asked for: with a log filter of at most
        `LOG_FILTER_MAX_KEYS` keys, its topic OR-lists go to the node without a contract list (no
        extra request); otherwise, with at most `LOG_FILTER_MAX_KEYS` revoked keys, two more
        `eth_getLogs` per range carry them as topic lists; with more, one `eth_getLogs` of every
        Transfer log of every contract replaces the configured tokens' one and is filtered here.
        Call it again whenever the book changes, like `set_log_filter`.
        """
        if not keys or not self.config.any_tokens:
            self._revoked = None
        else:
            frozen = frozenset(keys)
            for key in frozen:
                if not isinstance(key, bytes) or len(key) != 20:
                    raise ValueError(f"chain {self.name}: revoked key {key!r} is not 20 bytes")
            topics = sorted(_TOPIC_PAD + k.hex() for k in frozen) if len(frozen) <= LOG_FILTER_MAX_KEYS else None
            self._revoked = _Revoked(frozen, topics)
        self._drop_ahead()
        self._say_path()

    def set_metadata_cache(self, cache: TokenMetadataCache | None) -> None:
        """Where looked-up token metadata is kept across restarts (the store); memory only without one."""
        self.unlisted.cache = cache

    # connection

    @property
    def rpc(self) -> _EvmRpc:
        if not self._opened:
            raise RuntimeError(f"chain {self.name}: the source is not open")
        return self._rpc

    async def open(self) -> None:
        """Connect, check the chain id, and find out which optional methods the node serves.

        On failure (`WrongChain`, `NodeUnavailable`, ...) the connections are released again, so
        `open` may simply be called once more later.
        """
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        await self.client.open()
        self._opened = True
        chain_id = await self._check_chain_id()
        tip = await self._block_number()
        self.block_receipts = await self._probe_block_receipts(tip)
        self.traces = await self._probe_traces(tip) if self.config.traces else False
        if self.filter_max_keys > 0:
            self.trace_filter, self.trace_union = await probe_trace_filter(self, tip)
        if self.ws_url and self._ws_task is None:
            self._ws_task = asyncio.create_task(follow_heads(self), name=f"{self.name}-newheads")
        log.info(
            "evm node checked",
            chain=self.name,
            url=self.url,
            nodes=len(self.client.endpoints),
            chain_id=chain_id,
            tip=tip,
            block_receipts=self.block_receipts,
            traces=self.traces if self.config.traces else "off",
            tokens=sorted(a.symbol for a in self.tokens.values()),
            new_heads="websocket" if self.ws_url else "polling",
            trace_filter=("union" if self.trace_union else self.trace_filter) if self.filter_max_keys > 0 else "off",
        )
        self._said_path = None
        if self._watch is not None:  # else the watched set, given after open (attach), says it
            self._say_path()
        if self.config.traces and not self.traces:
            log.warning(
                "the node serves no call traces: ETH forwarded by contracts (internal transfers) is not seen",
                chain=self.name,
            )

    async def _check_chain_id(self) -> int:
        """Ask the node (the one in use now) for its chain id; `WrongChain` unless it is the configured one."""
        switches = self.client.switches
        result = await self.rpc.call("eth_chainId", (), "the chain id")
        if not isinstance(result, str) or not _QUANTITY.match(result):
            raise BadNodeAnswer(f"chain {self.name}: eth_chainId: answer {result!r:.100} is not a quantity")
        chain_id = int(result, 16)
        if chain_id != self.chain_id:
            raise WrongChain(
                f"chain {self.name}: node at {self.url} reports chain id {chain_id}, config says {self.chain_id}"
            )
        if self.client.switches == switches:  # answered by the node now in use, with no failure between
            self._checked_switches = switches
        return chain_id

    async def _same_chain(self) -> None:
        """After any failure (a reconnect, a failover) the node may be another one: check its chain id again."""
        while self.client.switches != self._checked_switches:
            await self._check_chain_id()

    async def _probe_block_receipts(self, tip: int) -> bool:
        ((result, error),) = await self.rpc.replies([Call("eth_getBlockReceipts", (hex(tip),), f"block {tip}")])
        if error is None:
            if isinstance(result, list | None):
                return True
            reason = f"answer {result!r:.100}"
        elif _unsupported(error):
            reason = _rpc_error(error)
        else:  # the method exists but this call failed (a node still syncing, say): keep using it
            log.warning("eth_getBlockReceipts probe failed", chain=self.name, reason=_rpc_error(error))
            return True
        log.info(
            "eth_getBlockReceipts unavailable: fetching receipts one transaction at a time",
            chain=self.name,
            reason=reason,
        )
        return False

    async def _probe_traces(self, tip: int) -> bool:
        height = max(tip, 1)  # geth cannot trace the genesis block
        ((result, error),) = await self.rpc.replies(
            [Call("debug_traceBlockByNumber", (hex(height), CALL_TRACER), f"block {height}")]
        )
        if error is None and isinstance(result, list):
            return True
        reason = _rpc_error(error) if error is not None else f"answer {result!r:.100}"
        if error is not None and not _NOT_SUPPORTED.search(error.message) and error.code != -32601:
            log.warning("debug_traceBlockByNumber failed", chain=self.name, reason=reason)
        return False

    async def close(self) -> None:
        """Stop the head subscription and release connections."""
        await self._cancel_ahead()
        if self._ws_task is not None:
            self._ws_task.cancel()
            await asyncio.gather(self._ws_task, return_exceptions=True)
            self._ws_task = None
        await self.client.close()
        self._opened = False

    # ChainSource

    async def identity(self) -> str:
        """The chain id, as text."""
        return str(self.chain_id)

    async def _block_number(self) -> int:
        result = await self.rpc.call("eth_blockNumber", (), "the tip")
        if not isinstance(result, str) or not _QUANTITY.match(result) or int(result, 16) > MAX_INDEX:
            raise BadNodeAnswer(f"chain {self.name}: eth_blockNumber: answer {result!r:.100} is not a block height")
        self._known_tip = int(result, 16)
        return self._known_tip

    async def _header(self, tag: str, what: str) -> BlockRef | None:
        """Number and hash of a block (`latest` or a hex height), None when the node has none."""
        result = await self.rpc.call("eth_getBlockByNumber", (tag, False), what)
        if result is None:
            return None
        try:
            block = _dict(result, "the block")
            return BlockRef(_quantity(block, "number"), _hash(block, "hash"))
        except _Invalid as exc:
            raise BadNodeAnswer(f"chain {self.name}: eth_getBlockByNumber for {what}: {exc}") from None

    async def tip(self) -> BlockRef:
        """The node's latest block (the node's chain id is checked again first after any failure)."""
        await self._same_chain()
        ref = await self._header("latest", "latest")
        if ref is None:  # a node always has a latest block: null is a broken answer
            raise BadNodeAnswer(f"chain {self.name}: eth_getBlockByNumber for latest answered null")
        await self._same_chain()
        return ref

    async def hash_at(self, height: int) -> str | None:
        """The hash of the block at `height`, or None above the tip."""
        if height < 0:
            raise ValueError(f"height {height} is negative")
        ref = await self._header(hex(height), f"block {height}")
        if ref is None:
            return None
        if ref.height != height:
            raise BadNodeAnswer(
                f"chain {self.name}: eth_getBlockByNumber for block {height}: answered block {ref.height}"
            )
        await self._same_chain()
        return ref.hash

    async def fetch(self, start: int, stop: int) -> list[Block]:
        """Blocks `start` to `stop - 1` with their transfers, in order; fewer if the tip is lower.

        When the whole range was there and the node has more (as when replaying or catching up), the
        next `read_ahead` ranges of the same size are read ahead while the caller matches and commits
        this one, so the node never waits for the caller; a `fetch` that asks for the first of them
        (or for its beginning) gets it from there. Anything else drops them.
        """
        if start < 0:
            raise ValueError(f"start {start} is negative")
        if stop <= start:
            return []
        queue, self._ahead = self._ahead, []
        head = queue[0] if queue else None
        if (
            head is not None
            and head.start == start
            and stop <= head.stop
            and head.watch is self._watch
            and head.revoked is self._revoked
        ):
            del queue[0]
            try:
                blocks = (await head.task)[: stop - start]
            except BaseException:
                await _cancel_all(queue)
                raise
        else:
            await _cancel_all(queue)
            queue = []
            stop = min(stop, await self._block_number() + 1)
            if stop <= start:
                return []
            blocks = await self._fetch_range(start, stop, self._watch, self._revoked)
        await self._same_chain()  # a failover during the fetch: these blocks count only if the chain is ours
        following = start + len(blocks)
        if following != stop or (queue and queue[0].start != following):
            await _cancel_all(queue)  # the tip moved back, or the caller left the path read ahead
            queue = []
        if following == stop:
            nxt = queue[-1].stop if queue else following
            limit = self._known_tip if self.read_until is None else min(self._known_tip, self.read_until)
            while len(queue) < self.config.read_ahead and nxt <= limit:
                end = min(nxt + (stop - start), limit + 1)
                task = asyncio.ensure_future(self._fetch_range(nxt, end, self._watch, self._revoked))
                queue.append(_ReadAhead(nxt, end, self._watch, self._revoked, task))
                nxt = end
        self._ahead = queue
        return blocks

    def _drop_ahead(self) -> None:
        queue, self._ahead = self._ahead, []
        for ahead in queue:
            ahead.drop()

    async def _cancel_ahead(self) -> None:
        queue, self._ahead = self._ahead, []
        await _cancel_all(queue)

    async def _fetch_range(
        self, start: int, stop: int, watch: _Watch | None, revoked: _Revoked | None = None
    ) -> list[Block]:
        """Blocks `start` to `stop - 1` (at most; fewer if the node's tip moved back below them)."""
        if watch is not None and self.trace_filter and self.filter_max_keys > 0 and filtered(self, watch, revoked):
            found = await fetch_filtered(self, start, stop, watch, revoked)
            if found is not None:
                return found  # None: the node stopped filtering during the range; read it in full
        return await fetch_full(self, start, stop, watch, revoked)

    # new heads

    async def wait_for_head(self, timeout: float) -> None:
        """Return when a new head arrives over WebSocket, or after `timeout` (polling without one)."""
        await wait_for_head(self, timeout)
