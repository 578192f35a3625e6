"""Supervision: a failing component is logged, counted and run again; a cancellation always propagates."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import capture_logs

from depositwatch.metrics import Metrics
from depositwatch.supervise import Restarts, supervise


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
