"""The dispatcher: delivers the outbox to the sinks, at least once, in order per address.

One loop plans new messages (routes them to the sinks that want them), then, for each sink, asks the
store for due messages and starts deliveries up to the sink's concurrency. A message is marked
delivered only after the receiver acknowledged it; a crash before that means it is sent again, with
the same idempotency key. Failures are retried with capped exponential backoff and full jitter (the
receiver's Retry-After wins when it asks for longer); after the last attempt a delivery is dead, kept
for `depositwatch alerts redeliver`. Every retry time is in the store, so restarts keep the schedule.

Order per address: the store returns only the first pending message of an address for a sink, and a
message stays pending while it is in flight, so the next one of that address waits for it.

This module is the loop (planning, choosing what is due, bursts, waking, stopping); each delivery, from
its claim to its recorded outcome, is `alerts/delivery.py`'s.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import asyncpg
import structlog

from depositwatch.alerts.delivery import Attempt, Courier, DeliveryStore
from depositwatch.alerts.sinks import AlertSink, Burst, close_sinks
from depositwatch.config import AlertsConfig
from depositwatch.messages import OutboxMessage
from depositwatch.metrics import Metrics
from depositwatch.store.base import LeaseLost, StoreError
from depositwatch.supervise import Episode

log = structlog.get_logger("depositwatch.alerts")

PLAN_BATCH = 500
BURST_SCAN_MAX = 50_000  # at most this many messages in one burst summary
FAR_FUTURE = 1e18
COUNTS_EVERY = 1.0  # seconds between refreshes of the outbox gauge
# What the store raises when it is unreachable or busy: retried here. Anything else is a bug and ends
# `run()`, so that it is seen (the daemon restarts the dispatcher with backoff and counts it).
OUTBOX_ERRORS = (StoreError, OSError, TimeoutError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)


class OutboxStore(DeliveryStore, Protocol):
    """The part of the Store the dispatcher uses: what its deliveries use, and the loop's reads."""

    async def unplanned(self, limit: int) -> list[OutboxMessage]: ...
    async def plan(self, routes: Mapping[int, Sequence[str]], now: float) -> None: ...
    async def due(self, sink: str, now: float, limit: int) -> list[OutboxMessage]: ...
    async def counts(self) -> dict[str, int]: ...


def burst_key(message: OutboxMessage) -> tuple[str, int | None, str, str] | None:
    """What makes messages one burst: chain, block height, kind and event (test alerts never are)."""
    if message.kind == "test":
        return None
    return (message.chain, message.block_height, message.kind, message.event)


class Dispatcher:
    """Delivers outbox messages to sinks; see the module docstring."""

    def __init__(
        self,
        store: OutboxStore,
        sinks: Sequence[AlertSink],
        alerts_config: AlertsConfig,
        metrics: Metrics | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.config = alerts_config
        self.metrics = metrics
        self._courier = Courier(
            store, metrics, rand=rand, lease_lost=self._lease_lost, retry_scheduled=self._retry_scheduled
        )
        self._sinks: dict[str, AlertSink] = {s.name: s for s in sinks}
        self._retired: list[AlertSink] = []
        self._inflight: dict[str, set[int]] = {}  # sink name -> outbox seqs being delivered
        self._tasks: dict[asyncio.Task[Attempt], AlertSink] = {}
        self._wake = asyncio.Event()
        self._retry_at: list[float] = []  # a heap of scheduled retry times: wake up for them
        self._dirty: set[str] = set(self._sinks)  # sinks whose due messages may have changed
        self._plan_due = True
        self._finished: dict[str, int] = {}  # deliveries finished, per sink
        self._stopping = False
        self._closed = False
        self._counts_at = 0.0
        self._looping = 0
        self._lost: LeaseLost | None = None

    # public ---------------------------------------------------------------------------------------

    @property
    def sinks(self) -> list[AlertSink]:
        """The current sinks."""
        return list(self._sinks.values())

    @property
    def in_flight(self) -> int:
        """Deliveries under way."""
        return len(self._tasks)

    def wake(self) -> None:
        """Look at the outbox now (call after a commit that added messages)."""
        self._mark_all()
        self._wake.set()

    def reconfigure(self, sinks: Sequence[AlertSink]) -> None:
        """Swap the sinks (SIGHUP). Deliveries under way finish on the old sinks, which close afterwards."""
        fresh = {s.name: s for s in sinks}
        kept = set(map(id, fresh.values()))
        self._retired += [s for s in self._sinks.values() if id(s) not in kept]
        self._sinks = fresh
        log.info("alert sinks reconfigured", sinks=sorted(fresh))
        self.wake()

    async def run(self) -> None:
        """Deliver until cancelled or stopped; CancelledError is always re-raised, and LeaseLost too
        (deliveries under way cancelled) once the store refuses this dispatcher's lease.

        A store that cannot be reached is retried with backoff (logged at most once a minute); any
        other error is a bug and is raised, never retried silently.
        """
        self._looping += 1
        self._mark_all()
        trouble = Episode(
            log,
            "outbox unavailable; retrying",
            "outbox available again",
            first_backoff=self.config.poll_interval * 2,
            max_backoff=5.0,
        )
        log.info("alert dispatcher started", sinks=sorted(self._sinks), poll_interval=self.config.poll_interval)
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    if self._lost is not None:
                        raise self._lost
                    await self._cycle()
                except LeaseLost:  # fenced out: stop sending at once, leave the rest to the new holder
                    await self._abort()
                    raise
                except OUTBOX_ERRORS as exc:
                    self._mark_all()
                    await asyncio.sleep(trouble.failed(exc))
                    continue
                trouble.recovered()
                await self._wait()
        except asyncio.CancelledError:
            await self._abort()
            raise
        finally:
            self._looping -= 1

    async def drain(self, timeout: float | None = None) -> bool:
        """Deliver until no message is pending for any sink (each delivered or dead), or `timeout` passes.

        Messages waiting out a backoff are waited for. Returns True when the outbox is settled.
        """
        self._looping += 1
        self._mark_all()
        try:
            async with asyncio.timeout(timeout):
                while not self._stopping:
                    self._wake.clear()
                    started = await self._cycle()
                    if not started and not self._tasks and not await self._pending_left():
                        await self._update_counts(force=True)
                        return True
                    await self._wait()
        except TimeoutError:
            return False
        finally:
            self._looping -= 1
        return False

    async def stop(self, grace: float | None = None) -> None:
        """Take no new work; wait up to `grace` seconds for deliveries under way, cancel the rest (they
        stay pending and are sent again later), then close the sinks' sessions."""
        self._stopping = True
        self._wake.set()
        grace = self.config.shutdown_grace if grace is None else grace
        if self._tasks:
            log.info("waiting for deliveries under way", count=len(self._tasks), grace=grace)
            late = set(self._tasks)
            if grace > 0:
                _, late = await asyncio.wait(late, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("deliveries cut short by shutdown; they will be sent again", count=len(late))
                await asyncio.gather(*late, return_exceptions=True)
        for _ in range(100):  # let a loop in the middle of a store call notice the stop
            if not self._looping:
                break
            await asyncio.sleep(0.01)
        await self._close()

    async def deliver_now(self, message: OutboxMessage, sink_name: str, *, final: bool = False) -> Attempt:
        """Try one message on one sink at once and record the outcome (used by `alerts test`).

        With `final`, a failure makes the delivery dead at once instead of scheduling a retry.
        """
        sink = self._sinks[sink_name]
        self._inflight.setdefault(sink.name, set()).add(message.seq)
        try:
            return await self._courier.deliver(sink, message, final=final)
        finally:
            self._inflight[sink.name].discard(message.seq)

    # the loop -------------------------------------------------------------------------------------

    async def _cycle(self) -> int:
        """Plan, then start what is due; return how many deliveries were started."""
        if self._plan_due:
            self._plan_due = False
            await self._plan()
        started = 0
        for sink in list(self._sinks.values()):
            if self._stopping:
                break
            if sink.name in self._dirty:
                self._dirty.discard(sink.name)
                started += await self._fill(sink)
        await self._close_retired()
        await self._update_counts()
        return started

    def _mark_all(self) -> None:
        self._plan_due = True
        self._dirty.update(self._sinks)

    def _lease_lost(self, exc: LeaseLost) -> None:
        """A delivery found the dispatcher lease lost: the loop ends, another instance delivers now."""
        self._lost = exc
        self._wake.set()

    def _retry_scheduled(self, at: float) -> None:
        """A delivery will be retried at `at`: wake up for it."""
        heapq.heappush(self._retry_at, at)

    async def _wait(self) -> None:
        """Until woken (a commit, a finished delivery), a retry falls due, or the poll interval passes."""
        delay = self.config.poll_interval
        if self._retry_at:
            delay = max(0.0, min(delay, self._retry_at[0] - time.time()))
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            self._mark_all()
        now = time.time()
        while self._retry_at and self._retry_at[0] <= now:
            heapq.heappop(self._retry_at)
            self._mark_all()

    async def _plan(self) -> None:
        if not self._sinks:
            return  # with no sink configured, leave messages for a dispatcher that has some
        while True:
            batch = await self.store.unplanned(PLAN_BATCH)
            if not batch:
                return
            routes = {m.seq: [s.name for s in self._sinks.values() if s.accepts(m)] for m in batch}
            await self.store.plan(routes, time.time())
            unrouted = sum(1 for sinks in routes.values() if not sinks)
            log.debug("alerts planned", count=len(batch), unrouted=unrouted)
            if unrouted:
                log.info("alerts no sink wants (kinds or min_severity)", count=unrouted)
            if len(batch) < PLAN_BATCH:
                return

    def _busy(self, sink: str) -> int:
        return sum(1 for s in self._tasks.values() if s.name == sink)

    async def _fill(self, sink: AlertSink) -> int:
        slots = sink.config.concurrency - self._busy(sink.name)
        if slots <= 0:
            return 0
        inflight = self._inflight.setdefault(sink.name, set())
        finished = self._finished.get(sink.name, 0)
        now = time.time()
        limit = len(inflight) + slots
        if sink.summarizes_bursts:
            limit += sink.config.burst_threshold + 1
        messages = await self.store.due(sink.name, now, limit)
        units = self._units(sink, [m for m in messages if m.seq not in inflight])
        if sink.summarizes_bursts and len(messages) == limit and any(isinstance(u, Burst) for u in units):
            # A burst may go on past what was fetched: take all of it, so one summary covers the block.
            while len(messages) == limit and limit < BURST_SCAN_MAX:
                limit = min(limit * 4, BURST_SCAN_MAX)
                messages = await self.store.due(sink.name, now, limit)
            units = self._units(sink, [m for m in messages if m.seq not in inflight])
        if self._finished.get(sink.name, 0) != finished:
            # A delivery finished while the store answered: the answer may still show that message as
            # due (sending it twice, or its successor too early). Ask again on the next turn.
            self._dirty.add(sink.name)
            return 0
        started = 0
        for unit in units[:slots]:
            if self._stopping:
                break
            self._start(sink, unit)
            started += 1
        return started

    def _units(self, sink: AlertSink, messages: list[OutboxMessage]) -> list[OutboxMessage | Burst]:
        """Messages to send one by one, and bursts to summarise, in outbox order."""
        if not sink.summarizes_bursts:
            return list(messages)
        groups: dict[tuple[str, int | None, str, str], list[OutboxMessage]] = {}
        for message in messages:
            key = burst_key(message)
            if key is not None:
                groups.setdefault(key, []).append(message)
        bursts = {
            key: Burst(key[0], key[1], key[2], key[3], tuple(group))
            for key, group in groups.items()
            if len(group) > sink.config.burst_threshold
        }
        units: list[OutboxMessage | Burst] = []
        for message in messages:
            key = burst_key(message)
            burst = bursts.get(key) if key is not None else None
            if burst is None:
                units.append(message)
            elif burst.messages[0].seq == message.seq:
                units.append(burst)
        return units

    def _start(self, sink: AlertSink, unit: OutboxMessage | Burst) -> None:
        seqs = unit.seqs if isinstance(unit, Burst) else [unit.seq]
        self._inflight.setdefault(sink.name, set()).update(seqs)
        task = asyncio.create_task(self._courier.deliver(sink, unit), name=f"deliver:{sink.name}:{seqs[0]}")
        self._tasks[task] = sink

        def done(finished: asyncio.Task[Attempt]) -> None:
            self._tasks.pop(finished, None)
            self._inflight.get(sink.name, set()).difference_update(seqs)
            self._finished[sink.name] = self._finished.get(sink.name, 0) + 1
            self._dirty.add(sink.name)
            self._wake.set()
            if not finished.cancelled() and finished.exception() is not None:
                exc = finished.exception()
                log.error(
                    "delivery bookkeeping failed; the message stays pending and is sent again",
                    sink=sink.name,
                    seq=seqs[0],
                    error=f"{type(exc).__name__}: {exc}",
                    exc_info=exc,
                )

        task.add_done_callback(done)

    # housekeeping ---------------------------------------------------------------------------------

    async def _pending_left(self) -> bool:
        if self._sinks and await self.store.unplanned(1):
            return True
        for sink in self._sinks.values():
            if await self.store.due(sink.name, FAR_FUTURE, 1):
                return True
        return False

    async def _update_counts(self, *, force: bool = False) -> None:
        if self.metrics is None:
            return
        stamp = time.monotonic()
        if not force and stamp - self._counts_at < COUNTS_EVERY:
            return
        self._counts_at = stamp
        for status, count in (await self.store.counts()).items():
            self.metrics.outbox.labels(status).set(count)

    async def _close_retired(self) -> None:
        busy = set(map(id, self._tasks.values()))
        done = [s for s in self._retired if id(s) not in busy]
        if done:
            self._retired = [s for s in self._retired if id(s) in busy]
            await close_sinks(done)

    async def _abort(self) -> None:
        """Cancelled: cancel deliveries under way (they stay pending) and close the sessions."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._close()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._courier.close()
        await close_sinks([*self._sinks.values(), *self._retired])
        self._retired = []
