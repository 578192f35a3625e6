"""EVM chains (Ethereum and its kin) as a `ChainSource`: native ETH and configured ERC-20 transfers.

What counts as a transfer:

- native: a transaction with value > 0, a recipient (not a contract creation) and receipt status 1
  (pre-Byzantium receipts carry `root` and no `status`: they count as success); `index` is None;
- token: a log of a configured contract with topic0 = Transfer(address,address,uint256), exactly
  three topics (an ERC-721 Transfer has four: skipped) and 32 bytes of data; `index` is the log index.
  Logs with `removed: true`, and logs of a transaction whose receipt says it failed, are dropped;
- internal (only with `traces = true` and a node that serves `debug_traceBlockByNumber` with the call
  tracer): value moved by a CALL, CREATE, CREATE2 or SELFDESTRUCT frame inside a successful
  transaction, outside any reverted frame. Their `index` is negative, -1, -2, ... in call order, so
  they never collide with the transaction's own transfer (None) or its logs (>= 0).

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
import contextlib
import dataclasses
import itertools
import re
from collections.abc import Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog

from depositwatch.addresses import ethereum_checksum_address
from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable, TokenMetadataCache, WrongChain
from depositwatch.chains.evm_tokens import PLACEHOLDER_SYMBOL, TokenDirectory
from depositwatch.chains.rpc import Call, NodeClient, RpcAuthError, RpcError, describe
from depositwatch.config import ChainConfig, redact_url
from depositwatch.models import Asset, Block, BlockRef, Transfer

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
CALL_TRACER = {"tracer": "callTracer"}
_VALUE_FRAMES = frozenset({"CALL", "CREATE", "CREATE2", "SELFDESTRUCT"})
_GETLOGS_TOO_LARGE = re.compile(
    r"more than|too many|limit|exceed|range|too large|response size|timeout|timed out", re.IGNORECASE
)
_NOT_SUPPORTED = re.compile(
    r"method\b.*\b(not (found|supported|available|allowed|enabled)|does not exist|unsupported|disabled)"
    r"|(unsupported|unknown) method|not (supported|implemented)",
    re.IGNORECASE,
)

# A watched set up to this size is sent to the node as eth_getLogs topic OR-lists (geth refuses more than
# 1,000 sub-topics a position, some hosted endpoints more than 100); a larger one is filtered here.
LOG_FILTER_MAX_KEYS = 100
_TOPIC_PAD = "0x" + "00" * 12
GWEI = 10**9
MAX_WITHDRAWALS = 1024  # a block carries at most 16 today; more is a hostile answer


def withdrawal_txid(index: int) -> str:
    """The synthetic transaction id of consensus-layer withdrawal `index` (it has no transaction).

    The withdrawal index is unique over the whole chain, so the id (and the alert id made from it)
    stays the same when a reorg puts the withdrawal in another block.
    """
    return f"withdrawal:{index}"


_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*\Z")
# Field domains: heights, times and indices fit the store's signed 64-bit columns; values are uint256
# (the quantity pattern's 64 hex digits already bound them). Anything wider is a hostile answer.
MAX_INDEX = 2**63 - 1
MAX_VALUE = 2**256 - 1

log = structlog.get_logger(__name__)

T = TypeVar("T")


class _Invalid(Exception):
    """A field of an answer is missing or malformed; turned into BadNodeAnswer with context."""


@lru_cache(maxsize=65536)
def _checksum(key: bytes) -> str:
    return ethereum_checksum_address(key)


# --- field validation --------------------------------------------------------------------------------


def _quantity(obj: dict[str, Any], name: str, maximum: int = MAX_INDEX) -> int:
    """A hex quantity within 0..`maximum` (heights, times and indices by default; MAX_VALUE for values)."""
    value = obj.get(name)
    if not isinstance(value, str) or not _QUANTITY.match(value):
        raise _Invalid(f"{name} is {value!r:.100}, not a hex quantity")
    number = int(value, 16)
    if number > maximum:
        raise _Invalid(f"{name} is {value}, above its largest possible value {maximum}")
    return number


def _word_address(topic: str, name: str) -> bytes:
    """The address in a 32-byte topic word: its upper 12 bytes must be zero (ABI encoding of `address`)."""
    if topic[2:26].strip("0"):
        raise _Invalid(f"{name} {topic} is not an address word (its upper 12 bytes are not zero)")
    return bytes.fromhex(topic[-40:])


def _hash(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not _HASH.match(value):
        raise _Invalid(f"{name} is {value!r}, not a 32-byte hex hash")
    return value.lower()


def _address(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise _Invalid(f"{name} is {value!r}, not a 20-byte hex address")
    return value.lower()


def _optional_address(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or value == "0x":  # some nodes write a contract creation's recipient as "0x"
        return None
    if not isinstance(value, str) or not _ADDRESS.match(value):
        raise _Invalid(f"{name} is {value!r}, not a 20-byte hex address or null")
    return value.lower()


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} is {type(value).__name__}, not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} is {type(value).__name__}, not a list")
    return value


# --- parsed pieces -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tx:
    hash: str
    sender: str
    to: str | None
    value: int


@dataclass(slots=True)
class _RawBlock:
    height: int
    hash: str
    parent_hash: str
    time: int
    txs: list[_Tx]
    withdrawals: list[tuple[int, str, int]] = field(default_factory=list)  # (index, address, amount in wei)
    statuses: dict[str, bool] = field(default_factory=dict)
    internal: dict[str, list[tuple[str, str, int]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Watch:
    """The keys given to `set_log_filter`, in the forms the fetch path compares."""

    keys: frozenset[bytes]
    hex: frozenset[str]  # "0x" + lower-case hex, as transactions carry them
    # 32-byte topics for the node, when there are few enough keys: books of at most LOG_FILTER_MAX_KEYS
    topics: tuple[list[str], ...] | None

    def tx(self, tx: _Tx) -> bool:
        return tx.sender in self.hex or tx.to in self.hex

    def log(self, item: _Log) -> bool:
        return item.sender in self.keys or item.recipient in self.keys


@dataclass(frozen=True, slots=True)
class _Revoked:
    """The keys given to `set_revoked`: Transfer logs of any contract touching them are kept."""

    keys: frozenset[bytes]
    topics: list[str] | None  # 32-byte topics for the node, when there are few enough keys

    def log(self, item: _Log) -> bool:
        return item.sender in self.keys or item.recipient in self.keys


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


@dataclass(frozen=True, slots=True)
class _Log:
    height: int
    block_hash: str
    tx_hash: str
    index: int
    asset: Asset
    contract: str  # lower-case hex
    sender: bytes
    recipient: bytes
    amount: int


@lru_cache(maxsize=4096)
def _provisional(contract: str) -> Asset:
    """An unlisted contract's asset until its metadata is known."""
    return Asset(PLACEHOLDER_SYMBOL, 0, _checksum(bytes.fromhex(contract[2:])), listed=False)


def _unwatched(tx: dict[str, Any], keys: frozenset[str]) -> bool:
    """Neither end of the transaction is a watched key (the keys are valid lower-case hex: a field that
    lower-cases into one is a valid address, anything else, well formed or not, is no key of ours)."""
    sender, to = tx.get("from"), tx.get("to")
    return not (isinstance(sender, str) and sender.lower() in keys) and not (isinstance(to, str) and to.lower() in keys)


def _parse_block(raw: Any, height: int, watch: _Watch | None = None) -> _RawBlock:
    """The block's header fields and transactions. With `watch`, a transaction touching no watched key
    keeps only its hash (which receipts and logs are checked against): its sender, recipient and value
    are neither used nor validated, and it reads as sending nothing."""
    block = _dict(raw, "the block")
    number = _quantity(block, "number")
    if number != height:
        raise _Invalid(f"the node answered with block {number}")
    block_hash = _hash(block, "hash")
    txs_raw = _list(block.get("transactions"), "transactions")
    txs = []
    number_hex = hex(number)
    for position, tx in enumerate(txs_raw):
        if not isinstance(tx, dict):  # a bare hash here means the node ignored `true`
            _dict(tx, f"transaction {position}")
        if tx.get("blockHash", block_hash) != block_hash or tx.get("blockNumber", number_hex) != number_hex:
            _same_block(tx, f"transaction {position}", number, block_hash)  # else the fields are this block's
        if watch is not None and _unwatched(tx, watch.hex):
            txs.append(_Tx(hash=_hash(tx, "hash"), sender="", to=None, value=0))
            continue
        to = _optional_address(tx, "to")
        txs.append(
            _Tx(
                hash=_hash(tx, "hash"),
                sender=_address(tx, "from"),
                to=to,
                value=_quantity(tx, "value", MAX_VALUE),
            )
        )
    return _RawBlock(
        height=number,
        hash=block_hash,
        parent_hash=_hash(block, "parentHash"),
        time=_quantity(block, "timestamp"),
        txs=txs,
        withdrawals=_withdrawals(block.get("withdrawals")),
    )


def _withdrawals(raw: Any) -> list[tuple[int, str, int]]:
    """A block's consensus-layer withdrawals (absent before Shanghai): (index, address, amount in wei)."""
    if raw is None:
        return []
    items = _list(raw, "withdrawals")
    if len(items) > MAX_WITHDRAWALS:
        raise _Invalid(f"{len(items)} withdrawals, more than {MAX_WITHDRAWALS}")
    found = []
    for position, item in enumerate(items):
        entry = _dict(item, f"withdrawal {position}")
        gwei = _quantity(entry, "amount", 2**64 - 1)  # a uint64 of Gwei
        found.append((_quantity(entry, "index"), _address(entry, "address"), gwei * GWEI))
    return found


def _same_block(item: dict[str, Any], what: str, height: int, block_hash: str) -> None:
    """A transaction, receipt or log that names its block must name this one (nodes may leave the fields out)."""
    if item.get("blockHash") is not None and _hash(item, "blockHash") != block_hash:
        raise _Invalid(f"{what} names block {item.get('blockHash')}, but it came in block {block_hash}")
    if item.get("blockNumber") is not None and _quantity(item, "blockNumber") != height:
        raise _Invalid(f"{what} names block number {item.get('blockNumber')}, but it came in block {height}")


def _receipt_status(receipt: dict[str, Any]) -> bool:
    status = receipt.get("status")
    if status is None:
        if isinstance(receipt.get("root"), str):  # pre-Byzantium: no status, the state root instead
            return True
        raise _Invalid("the receipt has neither status nor root")
    if status == "0x1":
        return True
    if status == "0x0":
        return False
    raise _Invalid(f"receipt status is {status!r}")


def _internal_transfers(frame: dict[str, Any]) -> list[tuple[str, str, int]]:
    """Value-moving sub-calls of a successful call-tracer frame, depth first, reverted subtrees left out."""
    found: list[tuple[str, str, int]] = []
    if frame.get("error"):
        return found
    stack = list(reversed(_list(frame.get("calls") or [], "calls")))
    while stack:
        child = _dict(stack.pop(), "a call frame")
        if child.get("error"):
            continue
        kind = child.get("type")
        if not isinstance(kind, str):
            raise _Invalid(f"call frame type is {kind!r}")
        value = _quantity(child, "value", MAX_VALUE) if child.get("value") is not None else 0
        if value > 0 and kind.upper() in _VALUE_FRAMES:
            recipient = _optional_address(child, "to")
            if recipient is not None:
                found.append((_address(child, "from"), recipient, value))
        stack.extend(reversed(_list(child.get("calls") or [], "calls")))
    return found


# --- JSON-RPC through the shared node client --------------------------------------------------------


class _EvmRpc:
    """The EVM source's view of the shared `NodeClient`: per-call (result, error) pairs, errors as BadNodeAnswer."""

    def __init__(self, chain: str, client: NodeClient) -> None:
        self.chain = chain
        self.client = client

    async def replies(self, calls: Sequence[Call]) -> list[tuple[Any, RpcError | None]]:
        """(result, error) per call, in order; raise on transport or envelope problems only."""
        if not calls:
            return []
        try:
            if len(calls) == 1:  # a single call goes as a single request, not a batch of one
                call = calls[0]
                try:
                    return [(await self.client.call(call.method, *call.params, what=call.what), None)]
                except RpcError as exc:
                    if isinstance(exc, NodeUnavailable):
                        raise
                    return [(None, exc)]
            results = await self.client.batch_results(calls)
        except RpcError as exc:  # the node refused the whole batch
            if isinstance(exc, NodeUnavailable):
                raise
            raise BadNodeAnswer(f"chain {self.chain}: the node refused {exc}") from None
        except RpcAuthError as exc:
            raise BadNodeAnswer(str(exc)) from None
        return [(None, r) if isinstance(r, RpcError) else (r, None) for r in results]

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Results in order; any JSON-RPC error inside the batch raises BadNodeAnswer naming its call."""
        results = []
        for call, (result, error) in zip(calls, await self.replies(calls), strict=True):
            if error is not None:
                raise BadNodeAnswer(f"chain {self.chain}: {call.label}: {_rpc_error(error)}")
            results.append(result)
        return results

    async def call(self, method: str, params: Sequence[Any], what: str) -> Any:
        """One call; a JSON-RPC error raises BadNodeAnswer."""
        return (await self.batch([Call(method, tuple(params), what)]))[0]


def _rpc_error(error: RpcError) -> str:
    return f"error {error.code}: {error.message[:300]}"


def _unsupported(error: RpcError) -> bool:
    """Whether a JSON-RPC error says the method does not exist or is switched off."""
    return error.code in (-32601, -32004) or bool(_NOT_SUPPORTED.search(error.message))


async def _run_all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest instead of leaving them running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _cancel_all(queue: Sequence[_ReadAhead]) -> None:
    """Cancel ranges read ahead and wait until they have stopped."""
    for ahead in queue:
        await ahead.cancel()


def _chunks(start: int, stop: int, size: int) -> list[range]:
    return [range(low, min(low + size, stop)) for low in range(start, stop, size)]


def _client(config: ChainConfig) -> NodeClient:
    """The shared node client for a configured EVM chain: one round over the URLs per request (the
    follower backs off), every URL in turn (failover), the configured timeouts and size cap."""
    password = config.rpc_password.resolve().get_secret_value() if config.rpc_password is not None else None
    return NodeClient(
        config.rpc_urls,
        chain=config.name,
        kind="evm",
        user=config.rpc_user if password is not None else None,
        password=password,
        max_in_flight=config.max_in_flight,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        request_timeout=config.request_timeout,
        max_response_bytes=config.max_response_bytes,
        retry_for=0.0,
    )


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
        from depositwatch.chains.evm_filtered import fetch_path

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
            from depositwatch.chains.evm_filtered import probe_trace_filter

            self.trace_filter, self.trace_union = await probe_trace_filter(self, tip)
        if self.ws_url and self._ws_task is None:
            self._ws_task = asyncio.create_task(self._follow_heads(), name=f"{self.name}-newheads")
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
        if watch is not None and self.trace_filter and self.filter_max_keys > 0:
            from depositwatch.chains.evm_filtered import fetch_filtered, filtered

            if filtered(self, watch, revoked):
                found = await fetch_filtered(self, start, stop, watch, revoked)
                if found is not None:
                    return found  # None: the node stopped filtering during the range; read it in full
        logs_task: asyncio.Future[dict[int, list[_Log]]] | None = None
        if (self.tokens or revoked is not None) and (watch is None or watch.keys):
            logs_task = asyncio.ensure_future(self._logs(start, stop, watch, revoked))
        try:
            parts = await _run_all(
                self._fetch_chunk(chunk, logs_task, watch) for chunk in _chunks(start, stop, self.config.batch_blocks)
            )
            logs = await logs_task if logs_task is not None else {}
        finally:
            if logs_task is not None and not logs_task.done():
                logs_task.cancel()
                await asyncio.gather(logs_task, return_exceptions=True)
        return self._assemble(start, parts, logs, watch)

    def _assemble(
        self, start: int, parts: list[list[_RawBlock]], logs: dict[int, list[_Log]], watch: _Watch | None = None
    ) -> list[Block]:
        blocks: list[Block] = []
        expected = start
        for part in parts:
            for raw in part:
                if raw.height != expected:  # a chunk stopped short: the tip moved back; stop at the gap
                    return blocks
                blocks.append(self._block(raw, logs.get(raw.height, ()), watch))
                expected += 1
        return blocks

    def _block(self, raw: _RawBlock, logs: Sequence[_Log], watch: _Watch | None = None) -> Block:
        by_tx: dict[str, list[_Log]] = {}
        for item in logs:
            if item.block_hash != raw.hash:
                raise BadNodeAnswer(
                    f"chain {self.name}: eth_getLogs for block {raw.height}: log of block {item.block_hash}, "
                    f"but the block is {raw.hash} (the chain moved during the fetch)"
                )
            by_tx.setdefault(item.tx_hash, []).append(item)
        known = {tx.hash for tx in raw.txs}
        for tx_hash in by_tx:
            if tx_hash not in known:
                raise BadNodeAnswer(
                    f"chain {self.name}: eth_getLogs for block {raw.height}: log of transaction {tx_hash}, "
                    "which is not in the block"
                )
        transfers: list[Transfer] = []
        native = self.native
        for tx in raw.txs:
            status = raw.statuses.get(tx.hash)
            if tx.value > 0 and tx.to is not None and (watch is None or watch.tx(tx)):
                if status is None:
                    raise BadNodeAnswer(f"chain {self.name}: block {raw.height}: no receipt for {tx.hash}")
                if status:
                    sender, recipient = bytes.fromhex(tx.sender[2:]), bytes.fromhex(tx.to[2:])
                    transfers.append(
                        Transfer(
                            asset=native,
                            amount=tx.value,
                            txid=tx.hash,
                            index=None,
                            to_key=recipient,
                            from_key=sender,
                            from_address=_checksum(sender),
                            to_address=_checksum(recipient),
                        )
                    )
            if status is not False and tx.hash in raw.internal:  # a failed transaction's trace has none
                for n, (frm, to, value) in enumerate(raw.internal[tx.hash]):
                    sender, recipient = bytes.fromhex(frm[2:]), bytes.fromhex(to[2:])
                    if watch is not None and sender not in watch.keys and recipient not in watch.keys:
                        continue
                    transfers.append(
                        Transfer(
                            asset=native,
                            amount=value,
                            txid=tx.hash,
                            index=-(n + 1),
                            to_key=recipient,
                            from_key=sender,
                            from_address=_checksum(sender),
                            to_address=_checksum(recipient),
                        )
                    )
            tx_logs = by_tx.get(tx.hash)
            if tx_logs:
                if status is None:
                    raise BadNodeAnswer(f"chain {self.name}: block {raw.height}: no receipt for {tx.hash}")
                if not status:  # a failed transaction has no logs; a node that says otherwise is not believed
                    continue
                for item in sorted(tx_logs, key=lambda entry: entry.index):
                    transfers.append(
                        Transfer(
                            asset=item.asset,
                            amount=item.amount,
                            txid=tx.hash,
                            index=item.index,
                            to_key=item.recipient,
                            from_key=item.sender,
                            from_address=_checksum(item.sender),
                            to_address=_checksum(item.recipient),
                        )
                    )
        for index, address, amount in raw.withdrawals:
            if amount == 0 or (watch is not None and address not in watch.hex):
                continue
            recipient = bytes.fromhex(address[2:])
            transfers.append(
                Transfer(
                    asset=native,
                    amount=amount,
                    txid=withdrawal_txid(index),
                    index=index,
                    to_key=recipient,
                    to_address=_checksum(recipient),
                )
            )
        return Block(
            height=raw.height,
            hash=raw.hash,
            parent_hash=raw.parent_hash,
            time=raw.time,
            transfers=tuple(transfers),
            tx_count=len(raw.txs),
        )

    # fetching

    async def _fetch_chunk(
        self, heights: range, logs_task: asyncio.Future[dict[int, list[_Log]]] | None, watch: _Watch | None = None
    ) -> list[_RawBlock]:
        calls = [Call("eth_getBlockByNumber", (hex(h), True), f"block {h}") for h in heights]
        results = await self.rpc.batch(calls)
        blocks: list[_RawBlock] = []
        for height, result in zip(heights, results, strict=True):
            if result is None:  # above the node's tip (it moved back since we asked)
                break
            try:
                blocks.append(_parse_block(result, height, watch))
            except _Invalid as exc:
                raise BadNodeAnswer(f"chain {self.name}: eth_getBlockByNumber for block {height}: {exc}") from None
        logs = await asyncio.shield(logs_task) if logs_task is not None else {}
        need = [b for b in blocks if self._needs_receipts(b, logs, watch) or (self.traces and b.txs)]
        if need:
            await self._statuses(need, logs, watch)
        return blocks

    @staticmethod
    def _needs_receipts(block: _RawBlock, logs: dict[int, list[_Log]], watch: _Watch | None) -> bool:
        return block.height in logs or any(
            tx.value > 0 and tx.to is not None and (watch is None or watch.tx(tx)) for tx in block.txs
        )

    async def _statuses(
        self, blocks: list[_RawBlock], logs: dict[int, list[_Log]], watch: _Watch | None = None
    ) -> None:
        """Fill each block's receipt statuses (and internal transfers, with traces) in one batch.

        With traces on, every block with transactions is traced: value moves inside a plain ETH send
        to a contract (its receive() forwarding it), inside a creation (a constructor forwarding it)
        and inside any call, so no cheaper test on the transaction says which blocks can be left out.
        A trace's top frame carries the transaction's failure, so traces need no receipts of their own.
        """
        calls: list[Call] = []
        wanted: list[tuple[str, _RawBlock, str | None]] = []  # (kind, block, tx hash)
        for block in blocks:
            if not self._needs_receipts(block, logs, watch):
                pass
            elif self.block_receipts:
                calls.append(Call("eth_getBlockReceipts", (hex(block.height),), f"block {block.height}"))
                wanted.append(("receipts", block, None))
            else:
                with_logs = {item.tx_hash for item in logs.get(block.height, ())}
                for tx in block.txs:
                    if (tx.value > 0 and tx.to is not None and (watch is None or watch.tx(tx))) or tx.hash in with_logs:
                        calls.append(Call("eth_getTransactionReceipt", (tx.hash,), f"block {block.height}"))
                        wanted.append(("receipt", block, tx.hash))
            if self.traces and block.txs:
                calls.append(
                    Call("debug_traceBlockByNumber", (hex(block.height), CALL_TRACER), f"block {block.height}")
                )
                wanted.append(("trace", block, None))
        results = await self.rpc.batch(calls)
        for call, (kind, block, tx_hash), result in zip(calls, wanted, results, strict=True):
            try:
                if kind == "receipts":
                    self._block_statuses(block, result)
                elif kind == "receipt":
                    assert tx_hash is not None
                    self._tx_status(block, tx_hash, result)
                else:
                    self._traces(block, result)
            except _Invalid as exc:
                raise BadNodeAnswer(f"chain {self.name}: {call.method} for {call.what}: {exc}") from None

    @staticmethod
    def _block_statuses(block: _RawBlock, result: Any) -> None:
        receipts = _list(result, "the receipts")
        if len(receipts) != len(block.txs):
            raise _Invalid(f"{len(receipts)} receipts for {len(block.txs)} transactions")
        known = {tx.hash for tx in block.txs}
        number_hex = hex(block.height)
        # Matched by hash, not position: some nodes have returned block receipts out of order.
        for item in receipts:
            receipt = _dict(item, "a receipt")
            tx_hash = receipt.get("transactionHash")
            if type(tx_hash) is not str or tx_hash not in known:  # a known hash is a valid one: checked once
                tx_hash = _hash(receipt, "transactionHash")
            if tx_hash not in known or tx_hash in block.statuses:
                raise _Invalid(f"receipt of {tx_hash}, which is not (or no longer) expected in the block")
            named_hash, named_number = receipt.get("blockHash", block.hash), receipt.get("blockNumber", number_hex)
            if named_hash != block.hash or named_number != number_hex:
                _same_block(receipt, f"the receipt of {tx_hash}", block.height, block.hash)
            block.statuses[tx_hash] = _receipt_status(receipt)

    @staticmethod
    def _tx_status(block: _RawBlock, tx_hash: str, result: Any) -> None:
        if result is None:
            raise _Invalid(f"no receipt for {tx_hash} (the chain moved during the fetch?)")
        receipt = _dict(result, "the receipt")
        if _hash(receipt, "transactionHash") != tx_hash:
            raise _Invalid(f"receipt of {receipt.get('transactionHash')} where {tx_hash} was asked")
        if _hash(receipt, "blockHash") != block.hash:
            raise _Invalid(f"receipt of block {receipt.get('blockHash')}, but the block is {block.hash}")
        _same_block(receipt, f"the receipt of {tx_hash}", block.height, block.hash)
        block.statuses[tx_hash] = _receipt_status(receipt)

    @staticmethod
    def _traces(block: _RawBlock, result: Any) -> None:
        traces = _list(result, "the traces")
        if len(traces) != len(block.txs):
            raise _Invalid(f"{len(traces)} traces for {len(block.txs)} transactions")
        for tx, item in zip(block.txs, traces, strict=True):
            entry = _dict(item, "a trace")
            if entry.get("txHash") is not None and _hash(entry, "txHash") != tx.hash:
                raise _Invalid(f"trace of {entry.get('txHash')} where {tx.hash} was expected")
            if entry.get("error") is not None:
                raise _Invalid(f"tracing {tx.hash} failed: {entry.get('error')!r:.200}")
            moved = _internal_transfers(_dict(entry.get("result"), "a trace result"))
            if moved:
                block.internal[tx.hash] = moved

    async def _logs(
        self, start: int, stop: int, watch: _Watch | None = None, revoked: _Revoked | None = None
    ) -> dict[int, list[_Log]]:
        """Transfer logs in [start, stop), by height: the configured tokens' (those touching `watch`),
        and any contract's touching `revoked` (see `set_revoked`)."""
        if watch is not None and not watch.keys:
            return {}  # an empty book: no token transfer can concern it
        chunks = _chunks(start, stop, self.config.getlogs_max_range)
        queries: list[Awaitable[list[_Log]]] = []
        for chunk in chunks:
            first, last = chunk.start, chunk.stop - 1
            if watch is not None and watch.topics is not None and self._node_filter:
                # The watched keys include the revoked ones: the same topic lists serve every contract.
                for book in watch.topics:
                    queries.append(self._filtered_logs_range(first, last, book, any_contract=revoked is not None))
            elif revoked is not None and (revoked.topics is None or not self._node_filter):
                queries.append(self._logs_range(first, last, any_contract=True))
            else:
                if self.tokens:
                    queries.append(self._logs_range(first, last))
                if revoked is not None:
                    assert revoked.topics is not None
                    queries.append(self._filtered_logs_range(first, last, revoked.topics, any_contract=True))
        parts = await _run_all(queries)
        by_height: dict[int, list[_Log]] = {}
        seen: dict[tuple[int, int], _Log] = {}
        unlisted: set[str] = set()
        for part in parts:
            for item in part:
                key = (item.height, item.index)
                other = seen.get(key)
                if other is not None:
                    if other != item:  # the same log may come in two answers (two queries), never two logs
                        raise BadNodeAnswer(
                            f"chain {self.name}: eth_getLogs for block {item.height}: log index {item.index} twice"
                        )
                    continue
                seen[key] = item
                if item.asset.listed:
                    if watch is None or watch.log(item):
                        by_height.setdefault(item.height, []).append(item)
                elif revoked is not None and revoked.log(item):
                    by_height.setdefault(item.height, []).append(item)
                    unlisted.add(item.contract)
        if unlisted:
            assets = await self.unlisted.assets(unlisted)
            for height, items in by_height.items():
                by_height[height] = [
                    item if item.asset.listed else dataclasses.replace(item, asset=assets[item.contract])
                    for item in items
                ]
        return by_height

    async def _filtered_logs_range(
        self, first: int, last: int, topics: list[str], *, any_contract: bool = False
    ) -> list[_Log]:
        """Transfers from a key, then to a key (a log between two keys comes in both: kept once).

        With `any_contract` the contracts are not named: every contract's Transfer logs touching a key
        (the configured ones among them keep their configured asset)."""
        try:
            sent, received = await _run_all(
                [
                    self._logs_range(first, last, [TRANSFER_TOPIC, topics], any_contract=any_contract),
                    self._logs_range(first, last, [TRANSFER_TOPIC, None, topics], any_contract=any_contract),
                ]
            )
        except BadNodeAnswer as exc:
            if not self._node_filter:
                raise
            self._node_filter = False
            log.warning(
                "the node refused an eth_getLogs topic filter; filtering Transfer logs here instead",
                chain=self.name,
                error=str(exc),
            )
            return await self._logs_range(first, last, any_contract=any_contract)
        found = {(item.height, item.index): item for item in sent}
        for item in received:
            other = found.setdefault((item.height, item.index), item)
            if other != item:
                raise BadNodeAnswer(
                    f"chain {self.name}: eth_getLogs for block {item.height}: log index {item.index} differs "
                    "between two answers"
                )
        return sorted(found.values(), key=lambda item: (item.height, item.index))

    async def _logs_range(
        self, first: int, last: int, topics: list[Any] | None = None, *, any_contract: bool = False
    ) -> list[_Log]:
        what = f"block {first}" if first == last else f"blocks {first}-{last}"
        query: dict[str, Any] = {"fromBlock": hex(first), "toBlock": hex(last)}
        if not any_contract:
            query["address"] = list(self.tokens)
        query["topics"] = topics or [TRANSFER_TOPIC]
        params = [query]
        ((result, error),) = await self.rpc.replies([Call("eth_getLogs", tuple(params), what)])
        if error is not None:
            message = error.message
            if first < last and _GETLOGS_TOO_LARGE.search(message) and not (topics and "topic" in message.lower()):
                middle = (first + last) // 2
                low, high = await _run_all(
                    [
                        self._logs_range(first, middle, topics, any_contract=any_contract),
                        self._logs_range(middle + 1, last, topics, any_contract=any_contract),
                    ]
                )
                return low + high
            raise BadNodeAnswer(f"chain {self.name}: eth_getLogs for {what}: {_rpc_error(error)}")
        try:
            return self._parse_logs(result, first, last, any_contract)
        except _Invalid as exc:
            raise BadNodeAnswer(f"chain {self.name}: eth_getLogs for {what}: {exc}") from None

    def _parse_logs(self, result: Any, first: int, last: int, any_contract: bool = False) -> list[_Log]:
        found: list[_Log] = []
        for item in _list(result, "the logs"):
            entry = _dict(item, "a log")
            removed = entry.get("removed", False)
            if not isinstance(removed, bool):
                raise _Invalid(f"removed is {removed!r}")
            height = _quantity(entry, "blockNumber")
            if not first <= height <= last:
                raise _Invalid(f"a log of block {height}, outside the range asked")
            contract = _address(entry, "address")
            asset = self.tokens.get(contract)
            if asset is None:
                if not any_contract:
                    raise _Invalid(f"a log of contract {entry.get('address')}, which was not asked for")
                asset = _provisional(contract)
            topics = _list(entry.get("topics"), "topics")
            for topic in topics:
                if not isinstance(topic, str) or not _HASH.match(topic):
                    raise _Invalid(f"topic {topic!r} is not 32 bytes of hex")
            if not topics or topics[0].lower() != TRANSFER_TOPIC:
                raise _Invalid(f"a log with topics {topics!r:.200}, not a Transfer")
            data = entry.get("data")
            if not isinstance(data, str) or not _DATA.match(data):
                raise _Invalid(f"data is {data!r:.100}, not hex")
            block_hash, tx_hash, index = (
                _hash(entry, "blockHash"),
                _hash(entry, "transactionHash"),
                _quantity(entry, "logIndex"),
            )
            if removed or len(topics) != 3 or len(data) != 66:
                continue  # reorged away; ERC-721 (four topics) or not an ERC-20 amount
            found.append(
                _Log(
                    height=height,
                    block_hash=block_hash,
                    tx_hash=tx_hash,
                    index=index,
                    asset=asset,
                    contract=contract,
                    sender=_word_address(topics[1], "topic 1 (from)"),
                    recipient=_word_address(topics[2], "topic 2 (to)"),
                    amount=int(data, 16),
                )
            )
        return found

    # new heads

    async def wait_for_head(self, timeout: float) -> None:
        """Return when a new head arrives over WebSocket, or after `timeout` (polling without one)."""
        if self._ws_task is None:
            await asyncio.sleep(min(timeout, self.config.poll_interval))
            return
        wait = timeout if self._ws_live else min(timeout, self.config.poll_interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._head.wait(), wait)
        self._head.clear()

    async def _follow_heads(self) -> None:
        """Keep a `newHeads` subscription; after a drop, reconnect and subscribe again, with backoff."""
        assert self.ws_url is not None
        shown = redact_url(self.ws_url)
        backoff = 1.0
        while True:
            try:
                async with self.client.session.ws_connect(
                    self.ws_url, heartbeat=30.0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
                ) as ws:
                    request_id = next(self._ids)
                    await ws.send_bytes(
                        orjson.dumps(
                            {
                                "jsonrpc": "2.0",
                                "id": request_id,
                                "method": "eth_subscribe",
                                "params": ["newHeads"],
                            }
                        )
                    )
                    subscribed = False
                    async for message in ws:
                        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                            break
                        data = orjson.loads(message.data)
                        if not isinstance(data, dict):
                            continue
                        if not subscribed and data.get("id") == request_id:
                            if data.get("error") is not None or not isinstance(data.get("result"), str):
                                raise BadNodeAnswer(f"eth_subscribe newHeads refused: {data.get('error')!r}")
                            subscribed = True
                            self._ws_live = True
                            backoff = 1.0
                            log.info("subscribed to new heads", chain=self.name, url=shown)
                            self._head.set()  # heads may have come while not subscribed
                        elif data.get("method") == "eth_subscription":
                            self._head.set()
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, BadNodeAnswer) as exc:
                log.warning("new-heads subscription lost", chain=self.name, url=shown, error=describe(exc))
            finally:
                self._ws_live = False
            self._head.set()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
