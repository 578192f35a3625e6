"""Restart with backoff: what a failed chain or component does instead of ending the daemon.

A failure is logged at most once a minute (with its traceback the first time of an episode, so a bug
can be found without flooding the journal) and the next attempt waits a capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from depositwatch.metrics import Metrics

log = structlog.get_logger(__name__)

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
LOG_EVERY = 60.0
HEALTHY_AFTER = 60.0  # a run this long ends the failure episode: the next failure starts again at 1 s


@dataclass(slots=True)
class Restarts:
    """One chain's or component's failure episode: counts, backoff and rate-limited logging."""

    what: str
    logger: Any
    failures: int = 0  # in this episode
    total: int = 0  # since the start of the process
    error: str | None = None
    _last_log: float = float("-inf")

    def failed(self, exc: BaseException) -> float:
        """Record a failure; log it when due; return the seconds to wait before the next attempt."""
        self.failures += 1
        self.total += 1
        self.error = describe(exc)
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            self.logger.error(
                f"{self.what} failed; restarting with backoff",
                error=self.error,
                failures=self.failures,
                exc_info=exc if self.failures == 1 else None,
            )
        return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(self.failures - 1, 16)))

    def ran(self, seconds: float) -> None:
        """An attempt ran this long before it ended; a long run ends the episode."""
        if seconds >= HEALTHY_AFTER:
            self.recovered()

    def recovered(self) -> None:
        """Working again: say so once and start the next episode from the first backoff."""
        if self.failures:
            self.logger.info(f"{self.what} recovered", failures=self.failures)
        self.failures, self.error, self._last_log = 0, None, float("-inf")


def describe(exc: BaseException) -> str:
    """`TypeError: message`, or the message alone for the project's own typed errors."""
    text = str(exc)
    if type(exc).__module__.startswith("depositwatch") and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    metrics: Metrics,
    stopping: asyncio.Event,
    restarts: Restarts | None = None,
) -> None:
    """Run `run()`; when it raises, log, count `depositwatch_component_restarts_total{component=name}`
    and run it again after the backoff. Returns when `run()` returns; CancelledError always propagates."""
    restarts = restarts or Restarts(f"component {name}", log.bind(component=name))
    while not stopping.is_set():
        started = time.monotonic()
        try:
            await run()
            return
        except Exception as exc:
            restarts.ran(time.monotonic() - started)
            delay = restarts.failed(exc)
            metrics.component_restarts.labels(name).inc()
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass
