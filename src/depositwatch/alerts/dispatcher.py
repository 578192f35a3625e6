"""The dispatcher: delivers the outbox to the sinks, at least once, in order per address.

One loop plans new messages (routes them to the sinks that want them), then, for each sink, asks the
store for due messages and starts deliveries up to the sink's concurrency. A message is marked
delivered only after the receiver acknowledged it; a crash before that means it is sent again, with
the same idempotency key. Failures are retried with capped exponential backoff and full jitter (the
receiver's Retry-After wins when it asks for longer); after the last attempt a delivery is dead, kept
for `depositwatch alerts redeliver`. Every retry time is in the store, so restarts keep the schedule.

Order per address: the store returns only the first pending message of an address for a sink, and a
message stays pending while it is in flight, so the next one of that address waits for it.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import structlog

from depositwatch.alerts.sinks import AlertSink, Burst, DeliveryError, close_sinks
from depositwatch.config import AlertsConfig, RetryConfig
from depositwatch.messages import Delivery, OutboxMessage
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


class OutboxStore(Protocol):
    """The part of the Store the dispatcher uses."""

    async def unplanned(self, limit: int) -> list[OutboxMessage]: ...
    async def plan(self, routes: Mapping[int, Sequence[str]], now: float) -> None: ...
    async def due(self, sink: str, now: float, limit: int) -> list[OutboxMessage]: ...
    async def claim(self, seqs: Sequence[int], sink: str) -> None: ...
    async def delivered_many(self, acknowledged: Sequence[tuple[int, str]], now: float) -> None: ...
    async def failed(self, seq: int, sink: str, error: str, next_attempt_at: float | None) -> None: ...
    async def failed_many(self, seqs: Sequence[int], sink: str, error: str, next_attempt_at: float | None) -> None: ...
    async def deliveries(self, seq: int) -> list[Delivery]: ...
    async def outbox_counts(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt (of one message, or of one burst summary)."""

    sink: str
    seqs: tuple[int, ...]
    outcome: str  # delivered | summarized | retry | rejected | timeout | dead | not-leading
    error: str | None = None
    attempts: int = 1
    next_attempt_at: float | None = None

    @property
    def ok(self) -> bool:
        """The receiver acknowledged it."""
        return self.outcome in ("delivered", "summarized")


def backoff(attempts: int, retry: RetryConfig, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the `attempts`-th failure: full jitter over a capped exponential."""
    cap = min(retry.max_backoff, retry.initial_backoff * 2.0 ** min(attempts - 1, 60))
    return cap * rand()


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
        self._rand = rand
        self._sinks: dict[str, AlertSink] = {s.name: s for s in sinks}
        self._retired: list[AlertSink] = []
        self._inflight: dict[str, set[int]] = {}  # sink name -> outbox seqs being delivered
        self._tasks: dict[asyncio.Task[Attempt], AlertSink] = {}
        self._wake = asyncio.Event()
        self._retry_at: list[float] = []  # a heap of scheduled retry times: wake up for them
        self._dirty: set[str] = set(self._sinks)  # sinks whose due messages may have changed
        self._plan_due = True
        self._finished: dict[str, int] = {}  # deliveries finished, per sink
        self._acks: list[tuple[list[tuple[int, str]], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
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
            return await self._deliver(sink, message, final=final)
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
        task = asyncio.create_task(self._deliver(sink, unit), name=f"deliver:{sink.name}:{seqs[0]}")
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

    # one delivery ---------------------------------------------------------------------------------

    async def _deliver(self, sink: AlertSink, unit: OutboxMessage | Burst, *, final: bool = False) -> Attempt:
        if isinstance(unit, Burst):
            burst: Burst | None = unit
            first, seqs = unit.messages[0], tuple(unit.seqs)
        else:
            burst, first, seqs = None, unit, (unit.seq,)
        timeout = sink.config.timeout
        try:  # claimed under the dispatcher lease right before sending, or not sent at all
            await self.store.claim(seqs, sink.name)
        except LeaseLost as exc:
            log.warning("not sending: the dispatcher lease is lost", sink=sink.name, seq=first.seq, error=str(exc))
            self._lost = exc  # the loop ends: another instance delivers now
            self._wake.set()
            return Attempt(sink.name, seqs, "not-leading", str(exc))
        try:
            async with asyncio.timeout(timeout):
                if burst is not None:
                    await sink.send_burst(burst)
                else:
                    await sink.send(first)
        except DeliveryError as exc:
            failure = exc
        except TimeoutError:
            failure = DeliveryError(f"no answer within {timeout:g} s", timed_out=True)
        except Exception as exc:
            # A bug in a sink (a formatting TypeError, say) must not stop the other messages and sinks:
            # it is logged with its traceback, counted as outcome `error`, and the message is retried
            # like a failure until its last attempt, then dead, kept for `alerts redeliver`.
            log.error("sink raised unexpectedly (a bug)", sink=sink.name, seq=first.seq, error=repr(exc), exc_info=True)
            self._count(sink.name, "error", len(seqs))
            failure = DeliveryError(f"{type(exc).__name__}: {exc}")
        else:
            return await self._succeeded(sink, first, burst)
        return await self._failed(sink, first, seqs, failure, final=final)

    async def _succeeded(self, sink: AlertSink, first: OutboxMessage, burst: Burst | None) -> Attempt:
        if burst is not None:
            await self._acknowledge([(seq, sink.name) for seq in burst.seqs])
            self._count(sink.name, "summarized", burst.count)
            self._observe_latency(sink.name, burst.messages)
            log.info(
                "burst summarised",
                sink=sink.name,
                chain=burst.chain,
                height=burst.block_height,
                kind=burst.kind,
                alert_event=burst.event,
                count=burst.count,
                first_seq=burst.seqs[0],
            )
            return Attempt(sink.name, tuple(burst.seqs), "summarized")
        await self._acknowledge([(first.seq, sink.name)])
        self._count(sink.name, "delivered")
        self._observe_latency(sink.name, (first,))
        if first.kind == "test" and self.metrics is not None:
            self.metrics.test_alerts.labels(sink.name, "delivered").inc()
        log.debug("alert delivered", sink=sink.name, seq=first.seq, key=first.idempotency_key)
        return Attempt(sink.name, (first.seq,), "delivered")

    async def _acknowledge(self, acknowledged: list[tuple[int, str]]) -> None:
        """Record acknowledgements; those arriving while a write is under way share the next one, so
        the store sees one transaction per batch rather than one per message (group commit)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append((acknowledged, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="dispatcher:acknowledge")
        await future  # cancelled (shutdown): the write still happens, nobody waits for it

    async def _flush(self) -> None:
        while self._acks:
            batch, self._acks = self._acks, []
            try:
                await self.store.delivered_many([item for items, _ in batch for item in items], time.time())
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _failed(
        self, sink: AlertSink, first: OutboxMessage, seqs: tuple[int, ...], failure: DeliveryError, *, final: bool
    ) -> Attempt:
        retry = sink.config.retry
        attempts = await self._attempts(first.seq, sink.name) + 1
        context = {
            "sink": sink.name,
            "seq": first.seq,
            "alert_id": first.alert_id,
            "key": first.idempotency_key,
            "attempt": attempts,
            "max_attempts": retry.max_attempts,
            "error": failure.reason,
        }
        if len(seqs) > 1:
            context["burst_size"] = len(seqs)
        if final or attempts >= retry.max_attempts:
            await self._record_failure(sink.name, seqs, failure.reason, None)
            self._count(sink.name, "dead", len(seqs))
            if first.kind == "test" and self.metrics is not None:
                self.metrics.test_alerts.labels(sink.name, "dead").inc()
            why = "a one-off attempt failed" if final else "its last attempt failed"
            log.error(f"alert delivery dead: {why}; `depositwatch alerts redeliver` retries it", **context)
            return Attempt(sink.name, seqs, "dead", failure.reason, attempts)
        delay = backoff(attempts, retry, self._rand)
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        at = time.time() + delay
        await self._record_failure(sink.name, seqs, failure.reason, at)
        heapq.heappush(self._retry_at, at)
        if failure.permanent:
            outcome = "rejected"
            log.warning(
                "receiver rejected the alert; retrying in case it is misconfigured",
                status=failure.status,
                retry_in=round(delay, 3),
                **context,
            )
        else:
            outcome = "timeout" if failure.timed_out else "retry"
            log.warning("alert delivery failed; will retry", retry_in=round(delay, 3), **context)
        self._count(sink.name, outcome, len(seqs))
        return Attempt(sink.name, seqs, outcome, failure.reason, attempts, at)

    async def _record_failure(self, sink: str, seqs: tuple[int, ...], error: str, at: float | None) -> None:
        if len(seqs) == 1:
            await self.store.failed(seqs[0], sink, error, at)
        else:
            await self.store.failed_many(seqs, sink, error, at)

    async def _attempts(self, seq: int, sink: str) -> int:
        for delivery in await self.store.deliveries(seq):
            if delivery.sink == sink:
                return delivery.attempts
        return 0

    # housekeeping ---------------------------------------------------------------------------------

    async def _pending_left(self) -> bool:
        if self._sinks and await self.store.unplanned(1):
            return True
        for sink in self._sinks.values():
            if await self.store.due(sink.name, FAR_FUTURE, 1):
                return True
        return False

    def _observe_latency(self, sink: str, messages: Sequence[OutboxMessage]) -> None:
        """Detection (the message's creation in the outbox) to the receiver's 2xx."""
        if self.metrics is None:
            return
        now = time.time()
        histogram = self.metrics.delivery_latency.labels(sink)
        for message in messages:
            histogram.observe(max(0.0, now - message.created_at))

    def _count(self, sink: str, outcome: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.deliveries.labels(sink, outcome).inc(n)

    async def _update_counts(self, *, force: bool = False) -> None:
        if self.metrics is None:
            return
        stamp = time.monotonic()
        if not force and stamp - self._counts_at < COUNTS_EVERY:
            return
        self._counts_at = stamp
        for status, count in (await self.store.outbox_counts()).items():
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
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await close_sinks([*self._sinks.values(), *self._retired])
        self._retired = []
