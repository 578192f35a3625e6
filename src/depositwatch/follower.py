"""The Follower: owns a cursor, pulls blocks from a ChainSource, handles reorgs, commits matches.

Live following and replay are the same Follower; replay is a fixed range with its own cursor and stops
at the end of it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from depositwatch.chains.base import ChainError, ChainSource, NodeUnavailable
from depositwatch.matcher import match_block
from depositwatch.metrics import Metrics
from depositwatch.models import Block, BlockRef, Match
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, ChainPolicy, Cursor, Scope, SqlStore
from depositwatch.supervise import Episode, unless_stopped

log = structlog.get_logger(__name__)


class ReorgTooDeep(Exception):
    """The node's chain forked below the configured reorg depth; following stops rather than guess."""


class GaveUp(ChainError):
    """A bounded run (replay) met node trouble `max_failures` times in a row and stopped."""


class BlockHook(Protocol):
    """Chain-specific work around matching (Bitcoin: outputs that paid revoked scripts, and their spends)."""

    async def load(self, store: SqlStore, scope: Scope) -> None:
        """Load what the hook keeps, from the store."""

    def effects(self, block: Block, matches: list[Match], registry: AddressRegistry) -> BlockEffects:
        """The block's full effects: extra matches (sweeps), outputs to keep, outputs spent."""


@dataclass(slots=True)
class FollowerSettings:
    """How a follower walks its chain."""

    batch_blocks: int = 20
    reorg_depth: int = 100
    poll_interval: float = 2.0
    start_height: int | None = None  # first block to process when there is no cursor yet
    stop_height: int | None = None  # replay: last block to process
    log_matches: bool = True  # a log line per match (replay leaves it out: its matches are its output)
    # Consecutive node failures before `run` gives up with GaveUp; None (live following) retries forever.
    max_failures: int | None = None


class Follower:
    """Follows one chain for one scope (live, or a replay run)."""

    def __init__(
        self,
        *,
        source: ChainSource,
        store: SqlStore,
        registry: AddressRegistry,
        policy: ChainPolicy,
        scope: Scope,
        cursor_name: str,
        settings: FollowerSettings,
        metrics: Metrics | None = None,
        hook: BlockHook | None = None,
        on_commit: Callable[[Sequence[BlockEffects]], Awaitable[None]] | None = None,
        reload_book: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.registry = registry
        self.policy = policy
        self.scope = scope
        self.cursor_name = cursor_name
        self.settings = settings
        self.metrics = metrics
        self.hook = hook
        self.on_commit = on_commit
        # Reloads the registry after a key tree grew (the service's own reload, for its chains and
        # log line); None reloads every chain of the store.
        self.reload_book = reload_book
        self.cursor: Cursor | None = None
        self.node_height: int | None = None
        self.chain = policy.chain
        self._log = log.bind(chain=self.chain, scope=scope.name)
        self._stopping = asyncio.Event()
        self.heartbeat = time.monotonic()  # last loop iteration, for the systemd watchdog
        self.failing: str | None = None  # the node error while the node is failing, for health
        self.failures = 0  # consecutive failed steps (0 while healthy), for health and metrics
        self._behind = False
        # A bounded run's next tip, asked while this step's blocks are read and committed.
        self._tip_ahead: asyncio.Future[BlockRef] | None = None
        # A bounded run's batch being committed while the next one is read, and where it moves the cursor.
        self._committing: asyncio.Future[int] | None = None
        self._committing_to: Cursor | None = None

    # start-up ---------------------------------------------------------------------------------------

    async def start(self) -> Cursor:
        """Check the node's identity against the store and position the cursor."""
        await self.store.check_identity(self.chain, await self.source.identity())
        if self.hook is not None:
            await self.hook.load(self.store, self.scope)
        cursor = await self.store.get_cursor(self.cursor_name)
        if cursor is None:
            cursor = await self._initial_cursor()
            await self.store.set_cursor(cursor)
            self._log.info("cursor created", height=cursor.height, hash=cursor.hash)
        else:
            self._log.info("resuming from cursor", height=cursor.height, hash=cursor.hash)
            # What an earlier run left below the reorg window (another config's, another instance's): each
            # commit forgets only from its predecessor's bound up.
            await self.store.forget_blocks(self.cursor_name, cursor.height - self.policy.keep_blocks)
        self.cursor = cursor
        return cursor

    async def _initial_cursor(self) -> Cursor:
        first = self.settings.start_height
        if first is None:
            first = (await self.source.tip()).height  # live with no history: start at the current tip
        if first <= 0:
            return Cursor(self.cursor_name, self.chain, -1, "", None, self.settings.stop_height)
        # Anchored later on the first block's own parent hash (`_anchor`): reading block first - 1
        # only for its hash would cost a request for nothing.
        return Cursor(self.cursor_name, self.chain, first - 1, "", first, self.settings.stop_height)

    async def _anchor(self, cursor: Cursor, first: Block) -> Cursor:
        """A fresh cursor (no hash yet) takes the first block's parent hash as its own, remembered like
        any processed block, so that a reorg of that very first block still finds where to rewind to."""
        if cursor.hash or cursor.height < 0 or first.height != cursor.height + 1 or not first.parent_hash:
            return cursor
        anchored = replace(cursor, hash=first.parent_hash)
        await self.store.set_cursor(anchored)
        self._log.info("cursor anchored", height=anchored.height, hash=anchored.hash)
        self.cursor = anchored
        return anchored

    # one step -------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True when a replay has processed its last block."""
        stop = self.settings.stop_height
        return stop is not None and self.cursor is not None and self.cursor.height >= stop

    async def step(self) -> int:
        """Process the next batch of blocks; return how many were committed (0 when caught up)."""
        await self._settle()
        return await self._step(overlap=False)

    async def _step(self, *, overlap: bool) -> int:
        """A step; with `overlap` (a bounded run's `run`) the batch's commit is left under way while the next
        step reads its blocks, and that step waits for it before it touches the store, the book or the hook:
        only the reading overlaps the commit, every commit is still one transaction with its cursor, in
        order, and a commit's failure is raised by the next step (its blocks, not committed, are read again
        by a later one)."""
        assert self.cursor is not None, "start() first"
        cursor = self._committing_to or self.cursor
        # Node calls with no block in hand are abandoned on stop() rather than waited for (a silent node:
        # its read timeout); nothing is half done.
        tip = await unless_stopped(self._stopping, self._tip())
        if tip is None:
            return 0
        self.node_height = tip.height
        self._observe_heights()
        last = tip.height if self.settings.stop_height is None else min(tip.height, self.settings.stop_height)
        if tip.height >= cursor.height:
            self._behind = False
        if cursor.height >= last:
            await self._settle()
            cursor = self.cursor
            if cursor.height >= tip.height >= 0:
                # At or above the node's tip: is the node's tip block ours?
                ours = (
                    cursor.hash
                    if cursor.height == tip.height
                    else await self.store.block_hash(self.cursor_name, tip.height)
                )
                if ours and ours != tip.hash:
                    await self._reorg(cursor)
                elif cursor.height > tip.height and not self._behind:
                    self._behind = True  # said once per episode, not on every poll
                    self._log.warning("node is behind the cursor", node_height=tip.height, cursor_height=cursor.height)
            return 0
        stop = min(last, cursor.height + self.settings.batch_blocks) + 1
        if self.settings.stop_height is not None and stop <= last:
            self._ask_tip_ahead()
        while True:
            blocks = await unless_stopped(self._stopping, self._fetch(cursor.height + 1, stop)) or []
            await self._settle()  # the last batch's commit, read over: the store and hook are as it left them
            cursor = self.cursor
            if not blocks:
                return 0
            cursor = await self._anchor(cursor, blocks[0])
            chain = _consecutive(cursor, blocks)
            if not chain:
                await self._reorg(cursor)
                return 0
            matches = [match_block(self.chain, block, self.registry.book(self.chain)) for block in chain]
            if not await self._grow_trees(matches):
                effects = self._effects(chain, matches)
                if not overlap:
                    return await self._commit(cursor, effects, tip.height)
                last_block = chain[-1]
                self._committing = asyncio.ensure_future(self._commit(cursor, effects, tip.height))
                self._committing.add_done_callback(_retrieved)
                self._committing_to = replace(cursor, height=last_block.height, hash=last_block.hash)
                return len(chain)

    async def _settle(self) -> None:
        """Wait for the batch under commit, if any (its error is raised here)."""
        committing, self._committing = self._committing, None
        if committing is not None:
            try:
                await committing
            finally:
                self._committing_to = None

    async def _tip(self) -> BlockRef:
        """The node's tip: the one asked ahead during the last step, if any, else asked now."""
        ahead, self._tip_ahead = self._tip_ahead, None
        if ahead is not None:
            return await ahead
        return await self.source.tip()

    def _ask_tip_ahead(self) -> None:
        """Ask the node's tip for the next step now, while this step's blocks are read and committed.

        Only a bounded run (a replay) does, and only when another step follows this one. The next step's
        tip is then read while this step works rather than after it: at most one step older (a block
        mined meanwhile is seen a step later, as if the node had announced it later), and its calls,
        which wait at the node behind the blocks the source reads ahead (tens of ms a step on 1 MB
        Bitcoin blocks), no longer leave the client idle meanwhile. A failure is the next step's, as
        if asked then.
        """
        if self._tip_ahead is None:
            task = asyncio.ensure_future(self.source.tip())
            task.add_done_callback(_retrieved)
            self._tip_ahead = task

    def _drop_tip_ahead(self) -> None:
        if self._tip_ahead is not None:
            self._tip_ahead.cancel()
            self._tip_ahead = None

    async def _fetch(self, start: int, stop: int) -> list[Block]:
        while True:
            generation = self.registry.generation
            blocks = await self.source.fetch(start, stop)
            if generation == self.registry.generation:
                return blocks
            # The book changed while the source read: it may have left out what the new book
            # watches (a log filter, Bitcoin's watched decoding). Read again, shaped by the new one.
            self._log.debug("address book changed during a fetch; fetching again", start=start)

    async def _grow_trees(self, matches: list[list[Match]]) -> bool:
        """Grow the key trees whose gap the batch's matches call for, before the batch is committed;
        True when one grew: the book is then reloaded, and the batch must be read and matched again
        (a transfer in the same block to an index the growth added is matched in this commit, and a
        source shaped by the book, Bitcoin's watched decoding or an EVM log filter, had left it out)."""
        keys = {match.key for block_matches in matches for match in block_matches}
        if not keys:
            return False
        grown = await self.store.trees.grow(self.chain, keys)
        if not grown:
            return False
        self._log.info("key trees grown by their gap; reading the blocks again", trees=grown)
        if self.reload_book is not None:
            await self.reload_book()
        else:
            await self.registry.reload(self.store)
        return True

    def _effects(self, blocks: list[Block], matched: list[list[Match]]) -> list[BlockEffects]:
        """The blocks' effects (the hook's, Bitcoin's outputs and sweeps, taken in block order)."""
        if self.hook is None:
            return [BlockEffects(block, matches) for block, matches in zip(blocks, matched, strict=True)]
        return [
            self.hook.effects(block, matches, self.registry) for block, matches in zip(blocks, matched, strict=True)
        ]

    async def _commit(self, cursor: Cursor, effects: list[BlockEffects], tip_height: int) -> int:
        blocks = [effect.block for effect in effects]
        transfers = sum(len(block.transfers) for block in blocks)
        self.cursor = await self.store.commit_blocks(self.scope, cursor, self.policy, effects, tip_height)
        for effect in effects if self.settings.log_matches else ():
            for match in effect.matches:
                self._log.info(
                    "match",
                    kind=str(match.kind),
                    height=effect.block.height,
                    txid=match.transfer.txid,
                    index=match.transfer.index,
                    amount=str(match.transfer.amount),
                    asset=match.transfer.asset.symbol,
                )
        if self.metrics is not None:
            self.metrics.blocks.labels(self.chain).inc(len(blocks))
            self.metrics.transfers.labels(self.chain).inc(transfers)
            for effect in effects:
                for match in effect.matches:
                    self.metrics.matches.labels(self.chain, str(match.kind)).inc()
            self._observe_heights()
        if self.on_commit is not None:
            await self.on_commit(effects)
        return len(blocks)

    def _observe_heights(self) -> None:
        if self.metrics is None or self.cursor is None:
            return
        self.metrics.processed_height.labels(self.chain).set(self.cursor.height)
        if self.node_height is not None:
            self.metrics.node_height.labels(self.chain).set(self.node_height)
            self.metrics.lag.labels(self.chain).set(max(0, self.node_height - self.cursor.height))

    @property
    def lag(self) -> int | None:
        """Blocks between the node's tip and the cursor, once both are known."""
        if self.node_height is None or self.cursor is None:
            return None
        return max(0, self.node_height - self.cursor.height)

    async def _reorg(self, cursor: Cursor) -> None:
        """Walk back from the cursor to the highest block the node still has; rewind to it."""
        floor = max(-1, cursor.height - self.settings.reorg_depth)
        height = cursor.height
        while height > floor:
            ours = await self.store.block_hash(self.cursor_name, height)
            if ours is None and height == cursor.height:
                ours = cursor.hash
            if ours is None:
                break  # older than the blocks we keep
            if await self.source.hash_at(height) == ours:
                if height == cursor.height:
                    return  # the node's view moved under us between calls; nothing to undo
                self._log.warning("reorg", fork_height=height, orphaned=cursor.height - height, old_tip=cursor.hash)
                if self.metrics is not None:
                    self.metrics.reorgs.labels(self.chain).inc()
                self.cursor = await self.store.rewind(self.scope, cursor, self.policy, BlockRef(height, ours))
                if self.hook is not None:
                    await self.hook.load(self.store, self.scope)
                return
            height -= 1
        if cursor.height < 0:
            return
        raise ReorgTooDeep(
            f"chain {self.chain}: the node no longer has our block {cursor.height} ({cursor.hash}) and no common "
            f"block was found within reorg_depth={self.settings.reorg_depth}; stopping rather than guessing. "
            "Check the node, then raise reorg_depth or reset the cursor deliberately."
        )

    # loops ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking new blocks: a read under way is abandoned, a batch being committed is finished first."""
        self._stopping.set()

    async def run(self) -> None:
        """Follow until stopped (live) or until the range is done (replay).

        Node trouble is logged (at most once a minute while it lasts) and retried with backoff; a wrong
        chain or a too-deep reorg ends the run with its error.
        """
        if self.cursor is None:
            await self.start()
        trouble = Episode(
            self._log,
            "node trouble, retrying",
            "node connection restored",
            first_backoff=0.25,
            max_backoff=max(5.0, self.settings.poll_interval),
        )
        overlap = self.settings.stop_height is not None
        try:
            await self._run(trouble, overlap=overlap)
            await self._settle()
        finally:
            self._drop_tip_ahead()
            if self._committing is not None:  # leaving on an error: the batch under commit is finished first
                await asyncio.gather(self._committing, return_exceptions=True)
                self._committing, self._committing_to = None, None

    @property
    def _read_to_end(self) -> bool:
        """A bounded run has read (and committed, or is committing) its last block."""
        stop = self.settings.stop_height
        at = self._committing_to or self.cursor
        return stop is not None and at is not None and at.height >= stop

    async def _run(self, trouble: Episode, *, overlap: bool) -> None:
        while not self._stopping.is_set() and not self._read_to_end:
            self.heartbeat = time.monotonic()
            try:
                committed = await self._step(overlap=overlap)
            except ChainError as exc:
                self.failing = str(exc) or type(exc).__name__
                self.failures += 1
                if self.metrics is not None:
                    self.metrics.rpc_errors.labels(self.chain).inc()
                limit = self.settings.max_failures
                if limit is not None and self.failures >= limit:
                    raise GaveUp(
                        f"chain {self.chain}: giving up after {self.failures} failed attempts in a row; "
                        f"the last: {self.failing}"
                    ) from exc
                backoff = trouble.failed(exc, level="warning" if isinstance(exc, NodeUnavailable) else "error")
                await self._sleep(backoff * (0.5 + random.random()))
                continue
            self.failing = None
            self.failures = 0
            trouble.recovered()
            if committed == 0 and not self._read_to_end:
                waiter = asyncio.ensure_future(self.source.wait_for_head(self.settings.poll_interval))
                stopper = asyncio.ensure_future(self._stopping.wait())
                try:
                    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (waiter, stopper):
                        task.cancel()
                    await asyncio.gather(waiter, stopper, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A tip asked ahead (or a commit under way) may fail with nobody left to read it (the run ended): its
    error is taken here, not reported as never retrieved; a step that awaits it still gets it."""
    if not task.cancelled():
        task.exception()


def _consecutive(cursor: Cursor, blocks: list[Block]) -> list[Block]:
    """The leading blocks that extend the cursor one by one (empty if the first does not)."""
    good: list[Block] = []
    parent_height, parent_hash = cursor.height, cursor.hash
    for block in blocks:
        if block.height != parent_height + 1 or (parent_hash and block.parent_hash != parent_hash):
            break
        good.append(block)
        parent_height, parent_hash = block.height, block.hash
    return good
