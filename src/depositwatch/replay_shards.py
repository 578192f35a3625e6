"""Parallel replay: a run's range cut into shards that several workers replay at once.

Each shard is a contiguous sub-range replayed by the same pipeline as a single-worker replay (source,
follower, matcher, commit), with its own cursor (`replay:<run>:<shard>`) anchored on the parent of its
first block as a fresh follower cursor is, and its matches in the run's scope (`replay:<run>`), so the
scope holds what a single-worker run of the range holds. Workers claim shards in the store
(store/shards.py) under a lease each (the lease table and Leadership of the daemon: renewed while the
shard's loop turns, fenced commits), so workers may be processes of one machine or of several sharing
a PostgreSQL store; a worker that dies leaves its shard to the next worker that looks (at once on
PostgreSQL, whose sessions show the death; after `lease_ttl` on SQLite), which resumes it from its
cursor. Every participant keeps claiming until the run is done, then (unless it only works) writes the
run's matches shard by shard in block order: the output of a single-worker run of the range.

Bitcoin: a sweep spends an output paid earlier, perhaps in an earlier shard, whose worker the spending
shard's worker never heard of. Before a shard's matches are written, the writer carries the earlier
shards' outputs over (`Carrier`): the outputs paid to revoked scripts before the shard and not yet seen
spent, less those the node's UTXO set still holds at its tip (`gettxout`: never spent, so nothing to
find), are looked for among the shard's spends by reading the shard again under a cursor and lease of
its own (`<shard>:carried`). Shards are carried in order, so each starts from every output paid before
it; a shard with no such output, the usual case (outputs swept within their shard, or never swept), is
not read again. The scope then holds every sweep a single-worker run finds, whatever the script type.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import structlog

from depositwatch.chains.base import ChainSource
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_prevouts import unspent_at_tip
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.follower import BlockHook, Follower
from depositwatch.jsonutil import dumps
from depositwatch.leadership import Leadership, Term, TermState
from depositwatch.pipeline import make_policy, make_settings, opened_source
from depositwatch.registry import AddressRegistry
from depositwatch.replay import REPLAY_MAX_FAILURES, output_record, range_run_id, wire_for_replay
from depositwatch.store import BlockEffects, LeaseLost, Scope, SqlStore
from depositwatch.store.shards import ReplayRun, Shard, ShardStore

log = structlog.get_logger(__name__)

MIN_SHARD_BLOCKS = 100  # below this a shard's set-up (source, probes, anchor) weighs on its blocks
MAX_SHARD_BLOCKS = 10_000  # above this a dead worker's shard costs too much to redo from its cursor
SHARDS_PER_WORKER = 4  # so that workers finishing early find work, and the output streams
POLL_SECONDS = 0.25  # how often a waiting participant looks at the shards again


class ShardsDisagree(Exception):
    """Two adjacent shards do not join: the node's chain changed between them (a reorg at the joint)."""


def default_shard_blocks(blocks: int, workers: int) -> int:
    """Shard size for `blocks` blocks and `workers` workers when none is asked for."""
    wanted = math.ceil(blocks / (max(1, workers) * SHARDS_PER_WORKER))
    return max(MIN_SHARD_BLOCKS, min(MAX_SHARD_BLOCKS, wanted))


@dataclass(slots=True)
class Tally:
    """What this participant's workers did (a worker's own counts; the run's are in the shard rows)."""

    shards: int = 0
    blocks: int = 0
    transfers: int = 0
    taken_over: int = 0  # shards this worker resumed from another worker's cursor


@dataclass(slots=True)
class ParallelSummary:
    """What a parallel replay command did."""

    run: ReplayRun
    workers: int
    shards: int
    blocks: int = 0  # blocks of the shards not done when the command began
    transfers: int = 0
    seconds: float = 0.0
    already_done: bool = False
    carried: int = 0  # Bitcoin: shards read again for the sweeps of earlier shards' outputs
    kinds: Counter[str] = field(default_factory=Counter)

    def text(self) -> str:
        """The human summary printed on stderr."""
        run = self.run
        rate = self.blocks / self.seconds if self.seconds else 0.0
        found = ", ".join(f"{n} {k}" for k, n in sorted(self.kinds.items())) or "no matches"
        return (
            f"replay {run.chain} {run.start}..{run.stop}: {self.blocks} blocks, {self.transfers} transfers"
            f" in {self.seconds:.1f}s ({rate:.1f} blocks/s) by {self.workers} worker(s) here,"
            f" {self.shards} shards of {run.shard_blocks} blocks"
            + (f" ({self.carried} read again for earlier outputs' sweeps)" if self.carried else "")
            + f"; {found}; run {run.run_id}"
        )


async def open_run(
    store: SqlStore,
    chain: ChainConfig,
    start: int,
    stop: int,
    *,
    shard_blocks: int,
    send_alerts: bool = False,
    restart: bool = False,
    join: str | None = None,
) -> ReplayRun:
    """The run of `start..stop` on this chain (created, or the one recorded: same id, same shards).

    The run id is a single-worker run's (chain, range and the node's identity), so a node of another
    chain never joins a run; `join` must name that same id.
    """
    if stop < start:
        raise ValueError(f"--to {stop} is below --from {start}")
    async with opened_source(chain) as source:
        rid = await range_run_id(source, chain.name, start, stop)
    if join is not None and join != rid:
        raise ValueError(f"run {join} is not this node's chain {chain.name} over {start}..{stop} (that is run {rid})")
    shards = ShardStore(store)
    if restart:
        await store.delete_scope(Scope.replay(rid, send_alerts))
        await shards.delete_run(rid)
    return await shards.create_run(ReplayRun(rid, chain.name, start, stop, shard_blocks, send_alerts))


def leadership_for(store: SqlStore, ttl: float, password: str | None = None) -> Leadership:
    """Leases for this process's shards: PostgreSQL tells a dead worker by its session; SQLite by expiry
    (never `exclusive`: other processes of the run share the store file)."""
    if store.dialect == "postgres":
        return Leadership(store.leases, ttl, dsn=store.target, password=password)
    return Leadership(store.leases, ttl)


async def work(
    *,
    chain: ChainConfig,
    store: SqlStore,
    run: ReplayRun,
    leadership: Leadership,
    alerts: AlertsConfig | None = None,
    on_shard: Callable[[], None] | None = None,
) -> Tally:
    """Claim and replay shards of the run until every shard is done (by this worker or another)."""
    shards = ShardStore(store)
    registry = await AddressRegistry.load(store, [chain.name])
    tally = Tally()
    # One source for every shard of this worker (one connection pool, one set of start-up probes); the
    # book is fixed for the run, as in a single-worker replay.
    async with opened_source(chain) as source:
        hook = wire_for_replay(chain, source, registry, store)
        while True:
            started = time.monotonic()
            claimed = await shards.claim(run, leadership.holder, leadership.ttl, await leadership.session())
            if claimed is None:
                if all(s.done for s in await shards.shards(run.run_id)):
                    return tally
                await asyncio.sleep(POLL_SECONDS)  # the rest is held by live workers: take over if one dies
                continue
            shard, fence = claimed
            term = leadership.adopt(fence, started)
            try:
                await _replay_shard(
                    Shift(chain, store, run, registry, source, hook), shard, term, leadership, alerts, tally
                )
            except LeaseLost as exc:
                leadership.lost(term)
                log.warning("replay shard taken over by another worker", shard=shard.index, reason=str(exc))
                continue
            finally:
                await leadership.release(term)
            if on_shard is not None:
                on_shard()


@dataclass(frozen=True, slots=True)
class Shift:
    """What a worker keeps from one shard to the next."""

    chain: ChainConfig
    store: SqlStore
    run: ReplayRun
    registry: AddressRegistry
    source: ChainSource
    hook: BlockHook | None


async def _replay_shard(
    shift: Shift, shard: Shard, term: Term, leadership: Leadership, alerts: AlertsConfig | None, tally: Tally
) -> None:
    run, shards, fence = shift.run, ShardStore(shift.store), term.fence
    counted = [0, 0]  # blocks, transfers committed here

    async def committed(effects: Sequence[BlockEffects]) -> None:
        counted[0] += len(effects)
        counted[1] += sum(len(e.block.transfers) for e in effects)
        first = effects[0].block
        if first.height == shard.first and first.parent_hash:
            await shards.set_anchor(run, shard.index, first.parent_hash, fence)

    cursor_hash, resumed = await _follow_shard(
        shift, shard, term, leadership, alerts, run.shard_name(shard.index), committed
    )
    await shards.finish(run, shard.index, cursor_hash, counted[0], counted[1], fence)
    tally.taken_over += resumed
    tally.shards += 1
    tally.blocks += counted[0]
    tally.transfers += counted[1]


async def _follow_shard(
    shift: Shift,
    shard: Shard,
    term: Term,
    leadership: Leadership,
    alerts: AlertsConfig | None,
    cursor_name: str,
    committed: Callable[[Sequence[BlockEffects]], Awaitable[None]] | None = None,
) -> tuple[str, bool]:
    """Follow the shard's blocks under `term` with the cursor `cursor_name` (resumed where it is), to the
    shard's last block: that block's hash, and whether an earlier attempt had begun."""
    chain, run, source = shift.chain, shift.run, shift.source
    source.read_until = shard.last  # past it, the blocks are another shard's
    follower = Follower(
        source=source,
        store=shift.store,
        registry=shift.registry,
        policy=make_policy(chain, alerts or AlertsConfig()),
        scope=Scope(run.scope_name, "replay", run.send_alerts).fenced(term.fence),
        cursor_name=cursor_name,
        settings=replace(
            make_settings(chain, start_height=shard.first, stop_height=shard.last),
            log_matches=False,
            max_failures=REPLAY_MAX_FAILURES,
        ),
        hook=shift.hook,
        on_commit=committed,
    )
    cursor = await follower.start()
    resumed = cursor.height >= shard.first
    if resumed:
        log.info("resuming a replay shard", cursor=cursor_name, after=cursor.height, epoch=term.fence.epoch)
    keeper = asyncio.create_task(leadership.hold(term, lambda: follower.heartbeat, window=max(leadership.ttl, 60)))
    keeper.add_done_callback(lambda _: follower.stop())  # lease lost: stop taking blocks
    try:
        await follower.run()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
    if term.state is not TermState.LEADING or not follower.done:
        raise LeaseLost(f"lease {term.fence.name} lost while replaying blocks {shard.first}..{shard.last}")
    assert follower.cursor is not None
    return follower.cursor.hash, resumed


class Carrier:
    """Bitcoin: finds, in a shard, the sweeps of outputs paid to revoked scripts in earlier shards (every
    earlier shard done and carried over). The node and the book are opened for the first shard that needs
    reading again and kept for the rest of the run (`close` ends them); `shards` counts those shards."""

    def __init__(
        self, chain: ChainConfig, store: SqlStore, run: ReplayRun, leadership: Leadership, alerts: AlertsConfig | None
    ) -> None:
        self.chain, self.store, self.run, self.leadership, self.alerts = chain, store, run, leadership, alerts
        self.shards = 0
        self._opened = contextlib.AsyncExitStack()
        self._shift: Shift | None = None

    async def carry(self, shard: Shard) -> None:
        """The outputs paid before the shard and not seen spent, less those the node still holds unspent at
        its tip, are the hook's outputs while the shard is read again under the cursor and lease
        `<shard>:carried` (resumed if an earlier attempt stopped; another writer holding it is waited for)."""
        chain, run = self.chain, self.run
        scope = Scope(run.scope_name, "replay", run.send_alerts)
        name = run.carried_name(shard.index)
        while True:
            outputs = await self.store.watched_outputs(chain.name, scope)
            carried = [o for o in outputs if o.height is None or o.height < shard.first]
            if not carried:
                return
            shift = await self._opened_shift()
            assert isinstance(shift.source, BitcoinSource)
            unspent = {(o.txid, o.vout) for o in await unspent_at_tip(shift.source, carried)}
            wanted = [o for o in carried if (o.txid, o.vout) not in unspent]
            if not wanted:
                return
            term = await self.leadership.acquire(name)
            if term is None:  # another writer of the run is carrying it over: look again when it is done
                await asyncio.sleep(POLL_SECONDS)
                continue
            try:
                log.info("replay shard read again for earlier outputs", shard=shard.index, outputs=len(wanted))
                await _follow_shard(shift, shard, term, self.leadership, self.alerts, name)
            finally:
                await self.leadership.release(term)
            self.shards += 1
            return

    async def _opened_shift(self) -> Shift:
        if self._shift is None:
            source = await self._opened.enter_async_context(opened_source(self.chain))
            if not isinstance(source, BitcoinSource):
                raise TypeError(f"chain {self.chain.name}: outputs are carried over on Bitcoin chains only")
            registry = await AddressRegistry.load(self.store, [self.chain.name])
            hook = wire_for_replay(self.chain, source, registry, self.store)
            self._shift = Shift(self.chain, self.store, self.run, registry, source, hook)
        return self._shift

    async def close(self) -> None:
        """Close the node client, if one was opened."""
        await self._opened.aclose()


async def write_in_order(
    store: SqlStore,
    run: ReplayRun,
    chain_id: int | None,
    output: TextIO,
    kinds: Counter[str],
    wake: asyncio.Event | None = None,
    before: Callable[[Shard], Awaitable[object]] | None = None,
) -> None:
    """Write the run's matches shard by shard in block order, each once it is done (by any worker) and
    `before` it has been awaited, the same lines a single-worker run writes; raise ShardsDisagree where
    two shards do not join."""
    shards = ShardStore(store)
    scope = Scope(run.scope_name, "replay", run.send_alerts)
    previous: Shard | None = None
    index = 0
    while True:
        listed = await shards.shards(run.run_id)
        while index < len(listed) and listed[index].done:
            shard = listed[index]
            unknown = previous is None or None in (previous.last_hash, shard.anchor_hash)
            if not unknown and previous is not None and previous.last_hash != shard.anchor_hash:
                raise ShardsDisagree(
                    f"block {shard.first - 1} was {previous.last_hash} for shard {previous.index} but the parent"
                    f" of block {shard.first} was {shard.anchor_hash} for shard {shard.index}: the node's chain"
                    " changed between them; run again with --restart"
                )
            if before is not None and previous is not None:
                await before(shard)
            for row in await store.matches(scope, heights=(shard.first, shard.last)):
                kinds[row["kind"]] += 1
                output.write(dumps(output_record(row, chain_id)) + "\n")
            output.flush()
            previous = shard
            index += 1
        if index >= len(listed):
            return
        if wake is None:
            await asyncio.sleep(POLL_SECONDS)
        else:
            try:
                await asyncio.wait_for(wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            wake.clear()


async def participate(
    *,
    chain: ChainConfig,
    store: SqlStore,
    run: ReplayRun,
    output: TextIO | None,
    workers: Sequence[Any] = (),
    alerts: AlertsConfig | None = None,
    ttl: float = 10.0,
    password: str | None = None,
) -> ParallelSummary:
    """Work on the run's shards here (beside `workers`, other processes of this command, awaited) and,
    with an `output`, write the whole run's matches in block order."""
    before = await ShardStore(store).shards(run.run_id)
    summary = ParallelSummary(run, 1 + len(workers), len(before), already_done=all(s.done for s in before))
    summary.blocks = sum(s.last - s.first + 1 for s in before if not s.done)
    leadership = leadership_for(store, ttl, password)
    wake = asyncio.Event()

    carrier = Carrier(chain, store, run, leadership, alerts)
    began = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(
                work(chain=chain, store=store, run=run, leadership=leadership, alerts=alerts, on_shard=wake.set)
            )
            if output is not None:
                group.create_task(
                    write_in_order(
                        store, run, chain.chain_id, output, summary.kinds, wake,
                        before=carrier.carry if chain.kind == "bitcoin" else None,
                    )
                )  # fmt: skip
            for worker in workers:
                group.create_task(worker)
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    finally:
        await carrier.close()
        await leadership.release_all()
    summary.carried = carrier.shards
    summary.seconds = time.perf_counter() - began
    after = {s.index: s for s in await ShardStore(store).shards(run.run_id)}
    summary.transfers = sum(after[s.index].transfers for s in before if not s.done)
    return summary
