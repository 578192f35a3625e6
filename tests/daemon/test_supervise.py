"""Supervision: a failing component is logged, counted and run again; a cancellation always propagates."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import capture_logs

from depositwatch.metrics import Metrics
from depositwatch.supervise import Episode, Restarts, supervise


async def test_a_failing_component_is_restarted_counted_and_logged_with_its_traceback_once() -> None:
    metrics = Metrics()
    runs = 0

    async def component() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise KeyError(f"bug {runs}")

    restarts = Restarts("component dispatcher", structlog.get_logger("test"))
    with capture_logs() as logs:
        await asyncio.wait_for(
            supervise("dispatcher", component, metrics=metrics, stopping=asyncio.Event(), restarts=restarts), 30
        )
    assert runs == 3
    assert metrics.component_restarts.labels("dispatcher")._value.get() == 2
    assert restarts.total == 2 and restarts.error == "KeyError: 'bug 2'"
    failed = [e for e in logs if "restarting with backoff" in e["event"]]
    assert len(failed) == 1 and failed[0]["exc_info"] is not None  # once a minute, the first with its traceback


async def test_cancellation_propagates_through_supervision() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("heartbeat", forever, metrics=Metrics(), stopping=asyncio.Event()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_an_episode_backs_off_logs_once_a_minute_and_says_when_it_ends() -> None:
    """The one retry-and-report helper of every loop: capped doubling waits, a `failing` line at most
    once a minute (by the injected clock), one `restored` line with the count and the time it lasted."""
    now = [1000.0]
    episode = Episode(
        structlog.get_logger("test"),
        "node trouble, retrying",
        "node connection restored",
        first_backoff=0.25,
        max_backoff=2.0,
        clock=lambda: now[0],
    )
    with capture_logs() as logs:
        waits = []
        for _ in range(6):
            waits.append(episode.failed(ConnectionError("refused")))
            now[0] += 20
        episode.recovered()
        episode.recovered()  # nothing to say twice
        assert episode.failed("another reason") == 0.25  # a new episode starts from the first wait
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    events = [(e["event"], e.get("error"), e.get("failures"), e.get("down_for")) for e in logs]
    assert events == [
        ("node trouble, retrying", "ConnectionError: refused", None, None),
        ("node trouble, retrying", "ConnectionError: refused", None, None),  # 60 s later
        ("node connection restored", None, 6, 120.0),
        ("node trouble, retrying", "another reason", None, None),
    ]
    assert episode.total == 7 and episode.failures == 1
