"""One delivery: a message, or a burst summary, sent to one sink and its outcome recorded in the store.

The delivery is claimed under the dispatcher lease right before sending, or not sent at all. An
acknowledged one is recorded delivered; acknowledgements that arrive while a write is under way share
the next one (group commit). A failed one is retried with capped exponential backoff and full jitter
(the receiver's Retry-After wins when it asks for longer), its retry time in the store; after the last
attempt it is dead, kept for `depositwatch alerts redeliver`. Every outcome is counted in the metrics.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from depositwatch.alerts.sinks import AlertSink, Burst, DeliveryError
from depositwatch.config import RetryConfig
from depositwatch.messages import Delivery, OutboxMessage
from depositwatch.metrics import Metrics
from depositwatch.store.base import LeaseLost

log = structlog.get_logger("depositwatch.alerts")


class DeliveryStore(Protocol):
    """The part of the Store one delivery uses."""

    async def claim(self, seqs: Sequence[int], sink: str) -> None: ...
    async def delivered_many(self, acknowledged: Sequence[tuple[int, str]], now: float) -> None: ...
    async def failed(self, seq: int, sink: str, error: str, next_attempt_at: float | None) -> None: ...
    async def failed_many(self, seqs: Sequence[int], sink: str, error: str, next_attempt_at: float | None) -> None: ...
    async def deliveries(self, seq: int) -> list[Delivery]: ...


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


class Courier:
    """Delivers one unit at a time for the dispatcher and keeps the store's record of each delivery.

    `lease_lost` is told when the store refuses the dispatcher lease, `retry_scheduled` the time of each
    retry it records, so that the dispatcher stops, or wakes up for it.
    """

    def __init__(
        self,
        store: DeliveryStore,
        metrics: Metrics | None,
        *,
        rand: Callable[[], float],
        lease_lost: Callable[[LeaseLost], None],
        retry_scheduled: Callable[[float], None],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._rand = rand
        self._lease_lost = lease_lost
        self._retry_scheduled = retry_scheduled
        self._acks: list[tuple[list[tuple[int, str]], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Wait for the acknowledgements being written."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def deliver(self, sink: AlertSink, unit: OutboxMessage | Burst, *, final: bool = False) -> Attempt:
        """Send `unit` to `sink` and record the outcome; with `final`, a failure makes it dead at once."""
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
            self._lease_lost(exc)  # the loop ends: another instance delivers now
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
            log.exception("sink raised unexpectedly (a bug)", sink=sink.name, seq=first.seq, error=repr(exc))
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
            log.error("alert delivery dead; `depositwatch alerts redeliver` retries it", why=why, **context)
            return Attempt(sink.name, seqs, "dead", failure.reason, attempts)
        delay = backoff(attempts, retry, self._rand)
        if failure.retry_after is not None:
            delay = max(delay, failure.retry_after)
        at = time.time() + delay
        await self._record_failure(sink.name, seqs, failure.reason, at)
        self._retry_scheduled(at)
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
