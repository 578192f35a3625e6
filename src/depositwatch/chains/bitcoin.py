"""Bitcoin as a `ChainSource`: raw blocks from Bitcoin Core, decoded here with `btc_decode` and `btc_scan`.

- `open()` asks `getblockchaininfo` and refuses a node on another network than the config's (`main`,
  `test` or `testnet4`, `signet`, `regtest`), saying which. `identity()` is the genesis block hash.
- `tip()` is `getbestblockhash` plus that block's header for its height; `hash_at` is
  `getblockhash`, None above the tip.
- `fetch(start, stop)`: the hashes in one `getblockhash` batch, then each block raw, `getblock HASH 0`
  (its hex decoded straight out of the answer's body) or `GET /rest/block/HASH.bin` when `rest_url`
  is configured, at most `max_in_flight` at a time. Each block is decoded locally: its header must
  hash to the hash asked for, and the decoder checks the merkle root (and the witness commitment), so
  the transactions are the block's. After a whole range the next one is read ahead (up to the tip
  last seen), so the node is not idle while a range is decoded and committed
  (`docs/performance.md`, "Bitcoin").
- Every output with a value and a script other than OP_RETURN is a `Transfer` (BTC, 8 decimals,
  amount in satoshis, `index` = vout, `to_key` = the output script: matching is on script bytes,
  `to_address` = the script's address on the configured network, or None for scripts without one).
  Every input of a non-coinbase transaction is a `Spend` of its outpoint.
- **The watched path.** Once `watch(registry, tracker)` has been called, `fetch` uses
  `btc_scan.scan_block` instead of building every output and input: the block is checked just the
  same, but only outputs paying a watched script (active or revoked) become transfers, and only
  inputs spending a watched output (the tracker's, or one paid to a revoked script earlier in the same
  fetch) become spends. Matching those gives exactly the matches and sweeps of the full block (the
  tests check it), at a fraction of the cost: block 413,567 against 10 million scripts takes about
  1.5 times what hashing its transactions takes, against 24 times for the full path (which spends two
  thirds of its time encoding addresses; `docs/performance.md`, `bench/btc_bench.py`). The watched
  path keeps the addresses of the scripts it saw last. `tx_count` is the block's either way;
  `transfers` then counts the watched outputs only.
- `btc_prevouts.prevouts_paying(source, start, stop, scripts)` finds, with `getblock HASH 3`, the outputs
  paid to watched scripts before `start` and spent in the range, so a replay can see the sweep of funds it never saw
  arrive.
- The mempool, for `depositwatch.mempool`: `mempool_txids()` is `getrawmempool`, `mempool_txs(txids)`
  the transactions still there, raw (`getrawtransaction TXID false` in one JSON-RPC batch), decoded
  and checked to be the ones asked for. `payments(tx)` is the output filter of both paths above.
- `wait_for_head(timeout)` polls `getbestblockhash` every `poll_interval`; with `zmq_url` it also
  wakes on ZMQ `hashblock`, `rawblock` and `sequence` (block connected/disconnected). ZMQ drops
  messages under load and announces only the new tip on a reorg: it is a wake-up, the RPC stays the
  truth. Two shortcuts keep a new tip's alert quick: the block's bytes from `rawblock` (when the node
  publishes it on that address) are used for its fetch, checked like any block read, and the fetch
  of the one block `tip` just named takes its hash from there rather than asking `getblockhash`.

A malformed or inconsistent answer (a wrong type, a hash that is not 64 hex digits, a block whose
header does not hash to the hash asked for, truncated hex) raises `BadNodeAnswer` naming the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Collection, Container, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from depositwatch.addresses import bitcoin_script_to_address
from depositwatch.chains.base import BadNodeAnswer, WrongChain
from depositwatch.chains.btc_blocks import full_block, watched_block
from depositwatch.chains.btc_decode import decode_tx
from depositwatch.chains.btc_rpc import BitcoinRpc, Call, InvalidParameter, NotFound, RpcError
from depositwatch.chains.btc_scan import outpoint_key
from depositwatch.chains.btc_wire import BlockDecodeError, Tx, block_hash
from depositwatch.chains.btc_zmq import listen_zmq
from depositwatch.config import ChainConfig
from depositwatch.models import Asset, Block, BlockRef, Transfer

if TYPE_CHECKING:
    from depositwatch.registry import AddressRegistry
    from depositwatch.sweeps import OutputTracker

log = structlog.get_logger(__name__)

# Bitcoin Core's `chain` names (getblockchaininfo) for each configured network.
NODE_CHAINS: dict[str, tuple[str, ...]] = {
    "mainnet": ("main",),
    "testnet": ("test", "testnet4"),
    "signet": ("signet",),
    "regtest": ("regtest",),
}
OP_RETURN = 0x6A
MAX_HEIGHT = 2**63 - 1  # the store's signed 64-bit columns; a taller height is a hostile answer
HASH_BATCH = 500  # getblockhash calls per JSON-RPC batch
ADDRESS_CACHE = 4096  # output scripts whose addresses are kept
ANNOUNCED_KEPT = 4  # raw blocks from ZMQ kept until fetched
_HASH = re.compile(r"[0-9a-f]{64}\Z")


def _block_hash_text(value: Any, call: str, chain: str) -> str:
    if not isinstance(value, str) or not _HASH.match(value):
        raise BadNodeAnswer(f"chain {chain}: {call}: answer {value!r:.100} is not a 64-digit block hash")
    return value


def _discard(task: asyncio.Future[bytes]) -> None:
    """Drop a read nobody will await: cancel it, or take its failure so it is not reported as unseen."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def _keep_from(
    reads: dict[int, tuple[str, asyncio.Future[bytes]]], height: int, kept: dict[int, tuple[str, asyncio.Future[bytes]]]
) -> int:
    """Move the reads of consecutive heights from `height` on into `kept`; the first height not moved."""
    while height in reads:
        kept[height] = reads.pop(height)
        height += 1
    return height


def _cancel(reads: dict[int, tuple[str, asyncio.Future[bytes]]]) -> None:
    for _, task in reads.values():
        _discard(task)
    reads.clear()


class BitcoinSource:
    """A Bitcoin Core node's view of one chain, reduced to `Block` records."""

    def __init__(self, config: ChainConfig, *, rpc: BitcoinRpc | None = None, **rpc_options: Any) -> None:
        if config.kind != "bitcoin":
            raise ValueError(f"chain {config.name} is not a Bitcoin chain")
        self.name = config.name
        self.config = config
        self.network = config.network
        self.asset = Asset(config.native_asset_symbol, 8)
        self._address = functools.partial(bitcoin_script_to_address, network=self.network)
        # The watched path's scripts are few and come back (a revoked script paid again, a deposit address
        # reused): their addresses are kept rather than encoded (bech32, in Python) at every payment.
        self._watched_address = functools.lru_cache(maxsize=ADDRESS_CACHE)(self._address)
        self.rpc = rpc or BitcoinRpc.from_config(config, **rpc_options)
        self.node_chain: str | None = None
        self.mempool_changed = asyncio.Event()  # set on ZMQ mempool sequence messages
        self._registry: AddressRegistry | None = None
        self._tracker: OutputTracker | None = None
        self._head = asyncio.Event()
        self._best: str | None = None
        self._best_height = -1
        self._tip_fresh = False  # `_best` was read by `tip` and no fetch has run since
        self._announced: dict[str, bytes] = {}  # raw blocks from ZMQ `rawblock`, by hash, oldest first
        self._ahead: dict[int, tuple[str, asyncio.Future[bytes]]] = {}  # height -> (hash, its read started ahead)
        self._ahead_task: asyncio.Future[None] | None = None
        self.read_until: int | None = None  # a replay's (or shard's) last block: nothing past it is read ahead
        self._zmq_task: asyncio.Task[None] | None = None
        self._genesis = ""  # found in open()
        self._checked_switches = -1  # the client's `switches` when the node's chain was last checked

    # set-up ----------------------------------------------------------------------------------------

    def watch(self, registry: AddressRegistry, tracker: OutputTracker | None = None) -> None:
        """Switch `fetch` to the watched path: only outputs paying the registry's scripts for this chain,
        and only spends of the tracker's outputs (see the module docstring). The registry and the
        tracker are read at every fetch, so reloads and rewinds are seen."""
        self._registry = registry
        self._tracker = tracker

    async def open(self) -> None:
        """Connect and check the node follows the configured network (`WrongChain` if not).

        On failure the connections are closed again, so a caller need not `close()` a source it could
        not open.
        """
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        await self.rpc.open()
        switches = self.rpc.switches
        info = await self._check_network()
        self._genesis = await self.identity()
        if self.rpc.switches == switches:
            self._checked_switches = switches
        if self.config.zmq_url and self._zmq_task is None:
            self._zmq_task = asyncio.create_task(listen_zmq(self, self.config.zmq_url), name=f"{self.name}-zmq")
        log.info(
            "bitcoin node checked",
            chain=self.name,
            url=self.rpc.url,
            node_chain=self.node_chain,
            blocks=info.get("blocks"),
            blocks_from="rest" if self.config.rest_url else "rpc",
            new_blocks="zmq and polling" if self.config.zmq_url else "polling",
        )

    async def _same_chain(self) -> None:
        """After any failed request (a reconnect, a failover) the node may be another one: check its network
        and genesis block again before its next answer is believed (`WrongChain` if either changed)."""
        while self._genesis and self.rpc.switches != self._checked_switches:  # (nothing to compare before open)
            switches = self.rpc.switches
            await self._check_network()
            genesis = await self.identity()
            if genesis != self._genesis:
                raise WrongChain(
                    f"chain {self.name}: the node at {self.rpc.url} has genesis block {genesis}, but this chain's "
                    f"is {self._genesis}"
                )
            if self.rpc.switches == switches:
                self._checked_switches = switches

    async def _check_network(self) -> dict[str, Any]:
        info = await self.rpc.call("getblockchaininfo")
        chain = info.get("chain") if isinstance(info, dict) else None
        if not isinstance(chain, str):
            raise BadNodeAnswer(f"chain {self.name}: getblockchaininfo: no chain name in {info!r:.200}")
        expected = NODE_CHAINS.get(self.network, ())
        if chain not in expected:
            raise WrongChain(
                f"chain {self.name}: the node at {self.rpc.url} follows Bitcoin {chain!r}, but the config says "
                f"network = {self.network!r} (a node on {' or '.join(repr(c) for c in expected)}); "
                "point rpc_urls at the right node or fix network"
            )
        self.node_chain = chain
        assert isinstance(info, dict)
        return info

    async def close(self) -> None:
        """Stop the ZMQ listener and the reads ahead, and close connections."""
        self._drop_ahead()
        if self._zmq_task is not None:
            self._zmq_task.cancel()
            await asyncio.gather(self._zmq_task, return_exceptions=True)
            self._zmq_task = None
        await self.rpc.close()

    # ChainSource -----------------------------------------------------------------------------------

    async def identity(self) -> str:
        """The genesis block hash."""
        return _block_hash_text(await self.rpc.call("getblockhash", 0), "getblockhash 0", self.name)

    async def tip(self) -> BlockRef:
        """The node's best block: `getbestblockhash`, and its header for the height (the node's network and
        genesis are checked again first after any failed request)."""
        await self._same_chain()
        best = _block_hash_text(await self.rpc.call("getbestblockhash"), "getbestblockhash", self.name)
        header = await self.rpc.call("getblockheader", best, True)
        call = f"getblockheader {best}"
        if not isinstance(header, dict) or header.get("hash") != best:
            raise BadNodeAnswer(f"chain {self.name}: {call}: answered {header!r:.200}")
        height = header.get("height")
        if not isinstance(height, int) or isinstance(height, bool) or not 0 <= height <= MAX_HEIGHT:
            raise BadNodeAnswer(f"chain {self.name}: {call}: height {height!r:.100} is not a block height")
        self._best, self._best_height, self._tip_fresh = best, height, True
        await self._same_chain()
        return BlockRef(height, best)

    async def hash_at(self, height: int) -> str | None:
        """The hash of the node's block at `height`, or None above its tip."""
        if height < 0:
            raise ValueError(f"height {height} is negative")
        try:
            value = await self.rpc.call("getblockhash", height)
        except InvalidParameter:  # -8 "Block height out of range"
            return None
        return _block_hash_text(value, f"getblockhash {height}", self.name)

    async def hashes(self, start: int, stop: int) -> list[str]:
        """The hashes of blocks `start` to `stop - 1`, in batches; fewer if the tip is lower."""
        found: list[str] = []
        for low in range(start, stop, HASH_BATCH):
            heights = range(low, min(low + HASH_BATCH, stop))
            results = await self.rpc.batch_results([Call("getblockhash", (h,)) for h in heights])
            for height, result in zip(heights, results, strict=True):
                if isinstance(result, InvalidParameter):
                    return found  # above the tip
                if isinstance(result, RpcError):
                    raise result
                found.append(_block_hash_text(result, f"getblockhash {height}", self.name))
        return found

    async def raw_block(self, hash_: str) -> bytes:
        """The block's wire bytes, from REST when configured, else `getblock HASH 0` (its hex decoded
        straight out of the answer's body: `BitcoinRpc.hex_result`)."""
        if self.config.rest_url:
            return await self.rpc.rest(f"/rest/block/{hash_}.bin")
        return await self.rpc.hex_result("getblock", hash_, 0)

    async def fetch(self, start: int, stop: int) -> list[Block]:
        """Blocks `start` to `stop - 1`, in order (fewer if the tip is lower).

        After a whole range, the next one (as many blocks again, up to the tip last seen by `tip`) is read
        ahead: its hashes in one batch, then its raw blocks, while these are decoded and while the caller
        commits them. A `fetch` of exactly the heights read ahead takes those reads (and, when they were
        started further ahead by `read_ahead`, keeps those beyond its range for the next fetch), the
        others are dropped; a block read ahead is still checked against the hash it was asked for, and the caller
        links each block to its parent, so a reorg meanwhile shows as one.
        """
        if start < 0:
            raise ValueError(f"start {start} is negative")
        fresh, self._tip_fresh = self._tip_fresh, False
        if stop <= start:
            return []
        if self._ahead_task is not None:
            await asyncio.gather(self._ahead_task, return_exceptions=True)  # its hashes are on their way
            self._ahead_task = None
        ahead, self._ahead = self._ahead, {}
        read_ahead = all(height in ahead for height in range(start, stop))
        try:
            if read_ahead:
                hashes = [ahead[height][0] for height in range(start, stop)]
            elif fresh and start == stop - 1 == self._best_height and self._best:
                hashes = [self._best]  # the new tip `tip` just read: no getblockhash for it
            else:
                hashes = await self.hashes(start, stop)
        except BaseException:
            _cancel(ahead)
            raise
        tasks = [self._take(ahead, start + i, h) for i, h in enumerate(hashes)]
        # reads started further ahead (`read_ahead`) than this range stay for the next fetch
        beyond = _keep_from(ahead, stop, self._ahead) if read_ahead else stop
        _cancel(ahead)  # read for other heights
        try:
            if hashes and len(hashes) == stop - start:
                self._read_ahead(beyond, stop + (stop - start))
            scan = self._scan_state()
            blocks = []
            for offset, (hash_, task) in enumerate(zip(hashes, tasks, strict=True)):
                raw = await task
                if scan is None:
                    # The full path builds every output and input in Python (tenths of a second a 1 MB
                    # block): in a worker thread, so the event loop keeps turning meanwhile.
                    blocks.append(await asyncio.to_thread(self._decode, start + offset, hash_, raw, scan))
                else:
                    # The watched path's compiled scan takes a few ms and holds the GIL: a thread would
                    # only add hand-overs, so it runs here, while the reads under way keep arriving.
                    blocks.append(self._decode(start + offset, hash_, raw, scan))
                    # Blocks already read are awaited without a pause: let the loop send the reads ahead
                    # and take in their answers between two scans, so the node is kept busy meanwhile.
                    await asyncio.sleep(0)
            await self._same_chain()  # a failover during the fetch: these blocks count only if the chain is ours
            return blocks
        except BaseException:
            self._drop_ahead()
            raise
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _take(
        self, ahead: dict[int, tuple[str, asyncio.Future[bytes]]], height: int, hash_: str
    ) -> asyncio.Future[bytes]:
        """The read of block `hash_` at `height`: the block ZMQ announced with its bytes, or the read
        started ahead when it is for this very block and has not failed (a failure then may be over now),
        else a new one. Every one is checked the same way afterwards."""
        announced = self._announced.pop(hash_, None)
        if announced is not None:
            done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            done.set_result(announced)
            return done
        found = ahead.pop(height, None)
        if found is not None:
            read_hash, task = found
            if read_hash == hash_ and not (task.done() and (task.cancelled() or task.exception() is not None)):
                return task
            _discard(task)
        return asyncio.ensure_future(self.raw_block(hash_))

    def read_ahead(self, start: int, stop: int) -> None:
        """Start reading blocks `start` to `stop - 1` now (below the tip last seen by `tip`, and at most
        `read_until`), for the `fetch` of that range, or of its first heights and then of the rest: a
        replay's first ranges, read while the run's store and cursor are made ready. Like any read
        ahead, a fetch takes those of its own heights (each block still checked against its hash) and
        drops the others."""
        self._drop_ahead()
        self._read_ahead(start, stop)

    def _read_ahead(self, start: int, stop: int) -> None:
        """Start reading blocks `start` to `stop - 1` (below the tip last seen, and at most `read_until`)
        for the next `fetch`."""
        stop = min(stop, self._best_height + 1)
        if self.read_until is not None:
            stop = min(stop, self.read_until + 1)
        if stop > start:
            self._ahead_task = asyncio.ensure_future(self._start_reads(start, stop))

    async def _start_reads(self, start: int, stop: int) -> None:
        try:
            hashes = await self.hashes(start, stop)
        except Exception:  # reading ahead is a guess: the next fetch asks again, and reports
            return
        for offset, hash_ in enumerate(hashes):
            self._ahead[start + offset] = (hash_, asyncio.ensure_future(self.raw_block(hash_)))

    def _drop_ahead(self) -> None:
        """Cancel every read started ahead."""
        if self._ahead_task is not None:
            self._ahead_task.cancel()
            self._ahead_task = None
        _cancel(self._ahead)

    async def mempool_txids(self) -> list[str]:
        """The ids of the transactions in the node's mempool (`getrawmempool`), in the node's order."""
        answer = await self.rpc.call("getrawmempool")
        if not isinstance(answer, list) or not all(isinstance(t, str) and _HASH.match(t) for t in answer):
            raise BadNodeAnswer(f"chain {self.name}: getrawmempool: not a list of transaction ids")
        return answer

    async def mempool_txs(self, txids: Sequence[str]) -> list[Tx]:
        """These transactions, decoded, in one `getrawtransaction` batch; those that left the mempool
        meanwhile (mined or dropped: "not found") are skipped."""
        results = await self.rpc.batch_results([Call("getrawtransaction", (t, False)) for t in txids])
        txs = []
        for txid, result in zip(txids, results, strict=True):
            if isinstance(result, NotFound):
                continue
            if isinstance(result, RpcError):
                raise result
            call = f"getrawtransaction {txid}"
            if not isinstance(result, str):
                raise BadNodeAnswer(f"chain {self.name}: {call}: answer is {type(result).__name__}, not hex")
            try:
                tx = decode_tx(bytes.fromhex(result))
            except (ValueError, BlockDecodeError) as exc:
                raise BadNodeAnswer(f"chain {self.name}: {call}: not a transaction: {exc}") from None
            if tx.txid != txid:
                raise BadNodeAnswer(f"chain {self.name}: {call}: the node sent transaction {tx.txid} instead")
            txs.append(tx)
        return txs

    def payments(self, tx: Tx, scripts: Container[bytes] | None = None) -> list[Transfer]:
        """The transaction's outputs that move funds (a value, a script other than OP_RETURN), paying
        `scripts` when given, as transfers with their addresses."""
        asset, txid, address = self.asset, tx.txid, self._address
        return [
            Transfer(asset, out.value, txid, vout, out.script, to_address=address(out.script))
            for vout, out in enumerate(tx.outputs)
            if out.value > 0
            and not (out.script and out.script[0] == OP_RETURN)
            and (scripts is None or out.script in scripts)
        ]

    # new blocks ------------------------------------------------------------------------------------

    async def wait_for_head(self, timeout: float) -> None:
        """Return when a new block may be there (ZMQ wake-up, or a changed best hash), or after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        poll = self.config.poll_interval
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            wait = min(remaining, poll)
            if self._zmq_task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._head.wait(), wait)
                if self._head.is_set():
                    self._head.clear()
                    return
            else:
                await asyncio.sleep(wait)
            if deadline - loop.time() <= 0:
                return  # the caller polls the tip itself next
            try:
                best = await self.rpc.call("getbestblockhash")
            except Exception:  # the caller's next call reports node trouble
                return
            if best != self._best:
                return

    # decoding --------------------------------------------------------------------------------------

    def _scan_state(self) -> tuple[Collection[bytes], set[bytes], Collection[bytes]] | None:
        """For the watched path: the book's active scripts, the outpoints to look for, its revoked scripts."""
        if self._registry is None:
            return None
        book = self._registry.book(self.name)
        outpoints: set[bytes] = set()
        if self._tracker is not None:
            outpoints = {outpoint_key(txid, vout) for txid, vout in self._tracker.outputs}
        return book.active, outpoints, book.revoked

    def decode_blocks(self, start: int, hashes: list[str], raws: list[bytes]) -> list[Block]:
        """Check and decode consecutive raw blocks fetched as `hashes` from height `start`, as `fetch`
        does (the watched path once `watch` was called)."""
        scan = self._scan_state()
        return [self._decode(start + i, h, raw, scan) for i, (h, raw) in enumerate(zip(hashes, raws, strict=True))]

    def _decode(
        self,
        height: int,
        hash_: str,
        raw: bytes,
        scan: tuple[Collection[bytes], set[bytes], Collection[bytes]] | None,
    ) -> Block:
        """Check and decode one raw block fetched as `hash_` at `height`."""
        call = f"getblock {hash_} 0" if not self.config.rest_url else f"REST block {hash_}"
        if len(raw) < 80:
            raise BadNodeAnswer(f"chain {self.name}: {call}: {len(raw)} bytes, less than a block header")
        got = block_hash(raw[:80])
        if got != hash_:
            raise BadNodeAnswer(f"chain {self.name}: {call}: the node sent block {got} instead")
        try:
            if scan is None:
                return full_block(height, hash_, raw, self.payments)
            return watched_block(height, hash_, raw, *scan, self.asset, self._watched_address)
        except BlockDecodeError as exc:
            raise BadNodeAnswer(f"chain {self.name}: {call}: not a valid block: {exc}") from None

    # ZMQ -------------------------------------------------------------------------------------------

    def _keep_announced(self, raw: bytes) -> None:
        if len(raw) < 80:
            return  # not a block: the RPC will be asked
        self._announced[block_hash(raw[:80])] = raw
        while len(self._announced) > ANNOUNCED_KEPT:
            del self._announced[next(iter(self._announced))]
