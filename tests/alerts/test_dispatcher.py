"""The dispatcher against real HTTP receivers on loopback and real stores (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import pytest
from structlog.testing import capture_logs

from depositwatch.alerts.delivery import backoff
from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.factory import build_sinks
from depositwatch.alerts.sinks import AlertSink, WebhookSink
from depositwatch.config import AlertsConfig, RetryConfig, Secret, SinkConfig
from depositwatch.jsonutil import loads
from depositwatch.messages import OutboxMessage
from depositwatch.metrics import Metrics
from depositwatch.models import MatchKind, Severity
from depositwatch.store import SqlStore
from tests.receivers import (
    USDT,
    WEBHOOK_SECRET,
    AlertMaker,
    Receiver,
    Reply,
    always,
    eventually,
    fail_first,
    ok,
    slow,
    time_out_first,
)

SECRET = WEBHOOK_SECRET
FAST = RetryConfig(max_attempts=20, initial_backoff=0.01, max_backoff=0.1)
ALERTS = AlertsConfig(poll_interval=0.05, shutdown_grace=5)


def sink_config(name: str, url: str, type_: str = "webhook", **extra: Any) -> SinkConfig:
    fields: dict[str, Any] = {"name": name, "type": type_, "url": url, "retry": FAST, "timeout": 5.0}
    if type_ == "webhook":
        fields["secret"] = Secret(value=SECRET)
    if type_ == "pagerduty":
        fields["secret"] = Secret(value="routing-key-1")
    fields.update(extra)
    return SinkConfig(**fields)


def sinks(*configs: SinkConfig) -> list[AlertSink]:
    return build_sinks(list(configs))


async def counts(store: SqlStore) -> dict[str, int]:
    return {k: v for k, v in (await store.outbox.counts()).items() if v}


def assert_exactly(receiver: Receiver, keys: set[str]) -> None:
    """Every key acknowledged, nothing else ever sent; a repeat carries the same key and the same body."""
    assert set(receiver.accepted_keys) == keys
    bodies: dict[str | None, bytes] = {}
    for request in receiver.requests:
        assert request.key in keys
        assert request.json()["idempotency_key"] == request.key
        assert bodies.setdefault(request.key, request.body) == request.body


async def test_delivers_each_message_signed_with_the_stored_body(store: SqlStore) -> None:
    """Every message reaches the webhook once, byte for byte as stored, signed, with its keys."""
    maker = AlertMaker(store)
    messages = await maker.block([(i, 10**15 * (i + 1)) for i in range(12)])
    messages += await maker.block([(3, 5_000_000)], asset=USDT)
    metrics = Metrics()
    async with Receiver() as rx:
        dispatcher = Dispatcher(store.outbox, sinks(sink_config("hook", rx.url)), ALERTS, metrics)
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    assert_exactly(rx, {m.idempotency_key for m in messages})
    assert len(rx.requests) == len(messages)
    stored = {m.idempotency_key: m for m in messages}
    for request in rx.requests:
        message = stored[request.key]  # type: ignore[index]
        assert request.body == message.payload.encode()
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["X-Depositwatch-Id"] == message.alert_id
        assert request.verified  # by the standardwebhooks package, in the receiver
    assert await counts(store) == {"delivered": len(messages)}
    assert metrics.deliveries.labels("hook", "delivered")._value.get() == len(messages)
    assert metrics.outbox.labels("delivered")._value.get() == len(messages)


async def test_failures_are_retried_until_acknowledged(store: SqlStore) -> None:
    """A receiver failing the first three attempts of every message gets each one in the end."""
    maker = AlertMaker(store)
    messages = await maker.block([(i, 1) for i in range(8)])
    async with Receiver(fail_first(3, 500)) as rx:
        dispatcher = Dispatcher(store.outbox, sinks(sink_config("hook", rx.url)), ALERTS)
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    assert_exactly(rx, {m.idempotency_key for m in messages})
    assert len(rx.requests) == 4 * len(messages)
    for message in messages:
        [delivery] = await store.outbox.deliveries(message.seq)
        assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 4, None)


async def test_a_receiver_that_times_out_is_retried(store: SqlStore) -> None:
    """Answers slower than the sink's timeout count as failures; the retry is acknowledged."""
    maker = AlertMaker(store)
    messages = await maker.block([(i, 1) for i in range(4)])
    async with Receiver(time_out_first(1, sleep=5)) as rx:
        dispatcher = Dispatcher(store.outbox, sinks(sink_config("hook", rx.url, timeout=0.2)), ALERTS, Metrics())
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    assert_exactly(rx, {m.idempotency_key for m in messages})
    assert dispatcher.metrics is not None
    assert dispatcher.metrics.deliveries.labels("hook", "timeout")._value.get() == len(messages)
    for message in messages:
        [delivery] = await store.outbox.deliveries(message.seq)
        assert delivery.attempts == 2


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(sqlite_store: SqlStore, status: int) -> None:
    """429/503 with Retry-After: the next attempt is scheduled no earlier than the receiver asked."""
    maker = AlertMaker(sqlite_store)
    [message] = await maker.block([(1, 1)])
    async with Receiver(always(status, retry_after="120")) as rx:
        dispatcher = Dispatcher(sqlite_store.outbox, sinks(sink_config("hook", rx.url)), ALERTS)
        before = time.time()
        running = asyncio.create_task(dispatcher.run())

        async def attempted() -> bool:
            return [d.attempts for d in await sqlite_store.outbox.deliveries(message.seq)] == [1]

        await eventually(attempted)
        await dispatcher.stop()
        await running
    assert len(rx.requests) == 1
    [delivery] = await sqlite_store.outbox.deliveries(message.seq)
    assert delivery.status == "pending" and delivery.attempts == 1
    assert delivery.next_attempt_at >= before + 120
    assert delivery.last_error is not None and delivery.last_error.startswith(f"HTTP {status}")


async def test_client_errors_are_retried_then_dead_then_redelivered(store: SqlStore) -> None:
    """A 4xx is retried (and logged as a rejection) until max_attempts; dead ones come back on request."""
    maker = AlertMaker(store)
    messages = await maker.block([(i, 1) for i in range(3)])
    retry = RetryConfig(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    metrics = Metrics()
    async with Receiver(always(400, body="bad signature")) as rx:
        dispatcher = Dispatcher(store.outbox, sinks(sink_config("hook", rx.url, retry=retry)), ALERTS, metrics)
        with capture_logs() as logs:
            assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
        assert len(rx.requests) == 3 * len(messages)
        assert await counts(store) == {"dead": 3}
        assert {m.seq for m in await store.outbox.messages(status="dead")} == {m.seq for m in messages}
        rejected = [e for e in logs if e["log_level"] == "warning" and "rejected" in e["event"]]
        dead = [e for e in logs if e["log_level"] == "error"]
        assert len(rejected) == 2 * len(messages) and {e["status"] for e in rejected} == {400}
        assert len(dead) == len(messages) and all("HTTP 400: bad signature" in e["error"] for e in dead)
        assert metrics.deliveries.labels("hook", "dead")._value.get() == 3
        assert metrics.deliveries.labels("hook", "rejected")._value.get() == 6
        [delivery] = await store.outbox.deliveries(messages[0].seq)
        assert (delivery.status, delivery.attempts) == ("dead", 3)

        rx.responder = ok()
        assert await store.outbox.redeliver(None, time.time()) == 3
        dispatcher = Dispatcher(store.outbox, sinks(sink_config("hook", rx.url, retry=retry)), ALERTS)
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    assert_exactly(rx, {m.idempotency_key for m in messages})
    assert await counts(store) == {"delivered": 3}


async def test_receiver_down_for_a_while_then_back_on_the_same_port(store: SqlStore) -> None:
    """Nothing is lost while the receiver is down; it gets everything once it is back."""
    maker = AlertMaker(store)
    messages = await maker.block([(i, 1) for i in range(10)])
    rx = await Receiver().start()
    port = rx.port
    await rx.stop()
    retry = RetryConfig(max_attempts=1000, initial_backoff=0.01, max_backoff=0.05)
    dispatcher = Dispatcher(store.outbox, sinks(sink_config("hook", rx.url, retry=retry)), ALERTS)
    draining = asyncio.create_task(dispatcher.drain(timeout=60))

    async def failed_attempts() -> bool:
        return sum([d.attempts for m in messages for d in await store.outbox.deliveries(m.seq)]) >= 2 * len(messages)

    await eventually(failed_attempts, timeout=30)
    await rx.start()
    assert rx.port == port
    assert await draining
    await dispatcher.stop()
    await rx.stop()
    assert_exactly(rx, {m.idempotency_key for m in messages})
    assert len(rx.requests) == len(messages)
    assert await counts(store) == {"delivered": 10}


async def test_order_per_address_holds_under_concurrency(store: SqlStore) -> None:
    """With 16 deliveries at a time, slow and failing answers, an address never has two messages in
    flight, and each address's messages are acknowledged in the order they were made."""
    maker = AlertMaker(store, confirmations=3)
    made = []
    for _ in range(5):  # five blocks paying the same eight addresses: detected, then confirmed messages
        made += await maker.block([(i, 1) for i in range(8)])
    made += await maker.block([(100 + i, 1) for i in range(8)])

    def respond(request: Any, rx: Receiver) -> Reply:
        n = request.n
        if n % 3 == 0:
            return Reply(500)
        return Reply(200, delay=0.002 * (n % 7))

    async with Receiver(respond) as rx:
        rx.group = lambda request: request.json()["address"]["address"]
        config = sink_config("hook", rx.url, concurrency=16)
        dispatcher = Dispatcher(store.outbox, sinks(config), ALERTS)
        assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    messages = await store.outbox.messages(limit=10_000)
    assert len(messages) == len(made) and {m.event for m in made} == {"detected", "confirmed"}
    assert_exactly(rx, {m.idempotency_key for m in messages})
    assert set(rx.max_in_flight.values()) == {1}
    assert max(sum(rx.in_flight.values()), 0) == 0
    seq_of = {m.idempotency_key: m.seq for m in messages}
    per_address: dict[str, list[int]] = defaultdict(list)
    for request in rx.accepted:
        per_address[request.json()["address"]["address"]].append(seq_of[request.key])  # type: ignore[index]
    for seqs in per_address.values():
        assert seqs == sorted(seqs)


async def test_routing_by_kind_and_severity(sqlite_store: SqlStore) -> None:
    """Sinks get the kinds they list at or above their minimum severity; a retraction follows its
    original kind; a message nobody wants is unrouted."""
    store = sqlite_store
    maker = AlertMaker(store)
    incoming = await maker.block([(1, 1)])
    outgoing = await maker.block([(2, 1)], kind=MatchKind.REVOKED_OUTGOING)
    async with Receiver() as all_rx, Receiver() as out_rx, Receiver() as picky_rx:
        configured = sinks(
            sink_config("all", all_rx.url),
            sink_config("sweeps", out_rx.url, kinds=["revoked_outgoing"]),
            sink_config("deposits", picky_rx.url, kinds=["deposit"], min_severity=Severity.INFO),
        )
        dispatcher = Dispatcher(store.outbox, configured, ALERTS)
        assert await dispatcher.drain(timeout=30)
        # a reorg retracts the sweep: the retraction goes where the sweep went
        from depositwatch.models import BlockRef

        maker.cursor = await store.rewind(maker.scope, maker.cursor, maker.policy, BlockRef(1, "h1"))
        assert await dispatcher.drain(timeout=30)
        await dispatcher.stop()
    assert {r.json()["event"] for r in out_rx.accepted} == {"detected", "retracted"}
    assert {r.json()["kind"] for r in out_rx.accepted} == {"revoked_outgoing", "retracted"}
    assert len(all_rx.accepted) == 3 and picky_rx.requests == []
    assert {d.sink for d in await store.outbox.deliveries(incoming[0].seq)} == {"all"}
    assert {d.sink for d in await store.outbox.deliveries(outgoing[0].seq)} == {"all", "sweeps"}
    critical_only = sinks(sink_config("crit", all_rx.url, kinds=["deposit"], min_severity=Severity.CRITICAL))
    [deposit_sink] = critical_only
    assert not deposit_sink.accepts(incoming[0])
    [unwanted] = await maker.block([(3, 1)])
    dispatcher = Dispatcher(store.outbox, critical_only, ALERTS)
    assert await dispatcher.drain(timeout=30)
    await dispatcher.stop()
    assert [m.seq for m in await store.outbox.messages(status="unrouted")] == [unwanted.seq]


async def test_wake_delivers_at_once_and_run_reraises_cancel(sqlite_store: SqlStore) -> None:
    """With a long poll interval, `wake()` after a commit starts delivery; cancelling `run()` re-raises
    and closes the sessions."""
    maker = AlertMaker(sqlite_store)
    async with Receiver() as rx:
        [sink] = sinks(sink_config("hook", rx.url))
        dispatcher = Dispatcher(sqlite_store.outbox, [sink], AlertsConfig(poll_interval=60))
        running = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0.05)
        [message] = await maker.block([(1, 1)])
        dispatcher.wake()
        await rx.wait_until(lambda r: len(r.accepted) == 1, timeout=20)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert rx.accepted_keys == [message.idempotency_key]
    assert sink._session is None  # type: ignore[attr-defined]


async def test_stop_waits_for_deliveries_under_way(sqlite_store: SqlStore) -> None:
    """`stop(grace)` takes no new work and lets the deliveries in flight finish and be recorded."""
    maker = AlertMaker(sqlite_store)
    messages = await maker.block([(i, 1) for i in range(20)])
    async with Receiver(slow(0.3)) as rx:
        dispatcher = Dispatcher(sqlite_store.outbox, sinks(sink_config("hook", rx.url, concurrency=4)), ALERTS)
        running = asyncio.create_task(dispatcher.run())
        await rx.wait_until(lambda r: len(r.requests) >= 4)
        await dispatcher.stop(grace=10)
        await asyncio.wait_for(running, 5)
        assert dispatcher.in_flight == 0
        sent = len(rx.requests)
    assert sent < len(messages)
    assert (await counts(sqlite_store))["delivered"] == sent == len(rx.accepted)


async def test_stop_without_grace_leaves_cut_deliveries_pending(sqlite_store: SqlStore) -> None:
    """Deliveries cut short by a stop stay pending: the next dispatcher sends them again."""
    maker = AlertMaker(sqlite_store)
    messages = await maker.block([(i, 1) for i in range(4)])
    async with Receiver(slow(30)) as rx:
        dispatcher = Dispatcher(sqlite_store.outbox, sinks(sink_config("hook", rx.url, timeout=60)), ALERTS)
        running = asyncio.create_task(dispatcher.run())
        await rx.wait_until(lambda r: len(r.requests) == 4)
        await dispatcher.stop(grace=0)
        await asyncio.wait_for(running, 5)
        assert await counts(sqlite_store) == {"pending": 4}
        rx.responder = ok()
        again = Dispatcher(sqlite_store.outbox, sinks(sink_config("hook", rx.url)), ALERTS)
        assert await again.drain(timeout=30)
        await again.stop()
    assert_exactly(rx, {m.idempotency_key for m in messages})


async def test_reconfigure_swaps_sinks(sqlite_store: SqlStore) -> None:
    """After `reconfigure`, new messages go to the new sinks; the old ones are closed."""
    maker = AlertMaker(sqlite_store)
    first = await maker.block([(1, 1)])
    async with Receiver() as old_rx, Receiver() as new_rx:
        [old] = sinks(sink_config("old", old_rx.url))
        dispatcher = Dispatcher(sqlite_store.outbox, [old], ALERTS)
        assert await dispatcher.drain(timeout=30)
        dispatcher.reconfigure(sinks(sink_config("new", new_rx.url)))
        second = await maker.block([(2, 1)])
        assert await dispatcher.drain(timeout=30)
        assert old._session is None  # type: ignore[attr-defined]
        await dispatcher.stop()
    assert old_rx.accepted_keys == [first[0].idempotency_key]
    assert new_rx.accepted_keys == [second[0].idempotency_key]


async def test_burst_is_one_summary_for_slack_and_pagerduty_but_every_message_for_webhooks(
    store: SqlStore,
) -> None:
    """500 matches in one block: the webhook gets 500 messages; Slack and PagerDuty one summary each."""
    maker = AlertMaker(store)
    quiet = await maker.block([(1000 + i, 7) for i in range(3)])  # below the threshold: sent one by one
    burst = await maker.block([(i, 10**12) for i in range(500)])
    assert len(burst) == 500
    async with Receiver() as hook_rx, Receiver() as slack_rx, Receiver(ok(202)) as pd_rx:
        configured = sinks(
            sink_config("hook", hook_rx.url, concurrency=8),
            sink_config("slack", slack_rx.url, "slack", burst_threshold=20),
            sink_config("pd", pd_rx.url, "pagerduty", burst_threshold=20),
        )
        metrics = Metrics()
        dispatcher = Dispatcher(store.outbox, configured, ALERTS, metrics)
        assert await dispatcher.drain(timeout=120)
        await dispatcher.stop()
    assert_exactly(hook_rx, {m.idempotency_key for m in quiet + burst})
    assert len(slack_rx.requests) == 4 and len(pd_rx.requests) == 4
    [summary] = [r.json() for r in slack_rx.requests if "Burst" in r.json()["text"]]
    assert "500 × revoked_incoming detected on eth block 2" in summary["text"]
    assert "total 0.0005 ETH" in summary["text"]  # 500 times 10**12 wei
    flat = str(summary["blocks"])
    assert "depositwatch alerts list --kind revoked_incoming" in flat
    assert "0x" + (0x2200000000000000000000000000000000000000).to_bytes(20, "big").hex() in flat
    assert "and 495 more" in flat
    [event] = [r.json() for r in pd_rx.requests if r.json()["dedup_key"].startswith("burst:")]
    assert event["dedup_key"] == "burst:eth:2:revoked_incoming"
    assert event["payload"]["custom_details"]["count"] == 500
    assert event["payload"]["custom_details"]["totals"] == ["0.0005 ETH"]
    assert await counts(store) == {"delivered": 503}
    for message in burst[:3] + burst[-3:]:
        states = {d.sink: (d.status, d.attempts) for d in await store.outbox.deliveries(message.seq)}
        assert states == {"hook": ("delivered", 1), "slack": ("delivered", 1), "pd": ("delivered", 1)}
    assert metrics.deliveries.labels("slack", "summarized")._value.get() == 500


async def test_failed_burst_summary_is_retried_as_one(sqlite_store: SqlStore) -> None:
    """A summary that fails is retried as the same single summary, not as 30 messages."""
    maker = AlertMaker(sqlite_store)
    burst = await maker.block([(i, 1) for i in range(30)])
    async with Receiver(fail_first(2, 500, per_key=False)) as rx:
        config = sink_config("slack", rx.url, "slack", burst_threshold=10)
        dispatcher = Dispatcher(sqlite_store.outbox, sinks(config), ALERTS)
        assert await dispatcher.drain(timeout=30)
        await dispatcher.stop()
    assert len(rx.requests) == 3
    assert len({r.body for r in rx.requests}) == 1
    assert all("30 × revoked_incoming" in r.json()["text"] for r in rx.requests)
    for message in burst:
        [delivery] = await sqlite_store.outbox.deliveries(message.seq)
        assert (delivery.status, delivery.attempts) == ("delivered", 3)


async def test_deliver_now_records_the_outcome(sqlite_store: SqlStore) -> None:
    """One immediate attempt (what `alerts test` uses): success is recorded; `final` failure is dead."""
    async with Receiver() as good, Receiver(always(500)) as bad:
        configured = sinks(sink_config("good", good.url), sink_config("bad", bad.url))
        dispatcher = Dispatcher(sqlite_store.outbox, configured, ALERTS)
        ok_message = await sqlite_store.outbox.enqueue_test_alert({"severity": "info", "chain": "test"}, "good")
        attempt = await dispatcher.deliver_now(ok_message, "good")
        assert attempt.ok and attempt.outcome == "delivered"
        bad_message = await sqlite_store.outbox.enqueue_test_alert({"severity": "info", "chain": "test"}, "bad")
        failed = await dispatcher.deliver_now(bad_message, "bad", final=True)
        await dispatcher.stop()
    assert not failed.ok and failed.outcome == "dead" and failed.error == "HTTP 500: nope"
    assert good.accepted[0].json()["test"] is True
    assert [m.seq for m in await sqlite_store.outbox.messages(status="dead")] == [bad_message.seq]


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    """The ceiling doubles per attempt up to max_backoff; the wait is uniform below it."""
    retry = RetryConfig(initial_backoff=1.0, max_backoff=30.0)
    assert [backoff(n, retry, lambda: 1.0) for n in (1, 2, 3, 5, 6, 50, 10_000)] == [1, 2, 4, 16, 30, 30, 30]
    assert backoff(3, retry, lambda: 0.5) == 2.0
    assert backoff(3, retry, lambda: 0.0) == 0.0


def _payload(message: Any) -> dict[str, Any]:
    return dict(loads(message.payload))


async def test_a_sink_bug_is_logged_counted_and_ends_dead_not_retried_forever(store: SqlStore) -> None:
    """A sink raising a non-delivery error (the Slack formatter on a malformed stored payload) is a bug:
    logged with its traceback, counted as outcome `error`, retried up to max_attempts, then dead."""
    retry = RetryConfig(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    metrics = Metrics()
    async with Receiver() as rx:
        message = await store.outbox.enqueue_test_alert({"address": 17, "chain": "eth"}, "slack")
        good = await store.outbox.enqueue_test_alert({"chain": "eth"}, "slack")
        dispatcher = Dispatcher(
            store.outbox, sinks(sink_config("slack", rx.url, "slack", retry=retry)), ALERTS, metrics
        )
        with capture_logs() as logs:
            assert await dispatcher.drain(timeout=60)
        await dispatcher.stop()
    bugs = [e for e in logs if e["log_level"] == "error" and "a bug" in e["event"]]
    assert len(bugs) == 3 and all(e.get("exc_info") for e in bugs) and "AttributeError" in bugs[0]["error"]
    assert metrics.deliveries.labels("slack", "error")._value.get() == 3
    assert metrics.deliveries.labels("slack", "dead")._value.get() == 1
    assert metrics.test_alerts.labels("slack", "dead")._value.get() == 1
    assert metrics.test_alerts.labels("slack", "delivered")._value.get() == 1  # test alerts are counted
    assert metrics.delivery_latency.labels("slack")._sum.get() >= 0
    [delivery] = await store.outbox.deliveries(message.seq)
    assert (delivery.status, delivery.attempts) == ("dead", 3)
    assert "AttributeError" in (delivery.last_error or "")
    assert [d.status for d in await store.outbox.deliveries(good.seq)] == ["delivered"]
    assert len(rx.requests) == 1


async def test_a_bug_in_the_dispatch_loop_ends_run_instead_of_looping_forever(store: SqlStore) -> None:
    """Only store trouble is retried inside `run()`; a bug in the loop (here a sink whose routing raises,
    planted because a bug cannot be produced on purpose by correct code) is raised, so the daemon restarts
    the dispatcher with backoff and counts it, instead of warning 'outbox unavailable' forever."""

    class BrokenRouting(WebhookSink):
        def accepts(self, message: OutboxMessage) -> bool:
            raise TypeError(f"routing bug on {message.seq}")

    maker = AlertMaker(store)
    await maker.block([(0, 1)])
    async with Receiver() as rx:
        sink = BrokenRouting(sink_config("hook", rx.url), SECRET)
        dispatcher = Dispatcher(store.outbox, [sink], ALERTS, Metrics())
        with capture_logs() as logs, pytest.raises(TypeError, match="routing bug"):
            await asyncio.wait_for(dispatcher.run(), 30)
        await dispatcher.stop()
    assert not [e for e in logs if "outbox unavailable" in e["event"]]
    assert rx.requests == []
