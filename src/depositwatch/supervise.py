"""Retry with backoff, and say so: what every loop that meets trouble does instead of ending the daemon.

`Episode` is one loop's failure episode, the one way the project writes "retry with backoff, log at most
once a minute, say when it works again": the node client, the follower, the mempool and pending
watchers and the dispatcher each keep one. `Restarts` is the episode of a chain or component that
`supervise` restarts (its first failure logged with the traceback, so a bug can be found without
flooding the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from depositwatch.metrics import Metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
LOG_EVERY = 60.0
HEALTHY_AFTER = 60.0  # a run this long ends the failure episode: the next failure starts again at 1 s


@dataclass(slots=True)
class Episode:
    """Failures in a row of one retrying loop: their count, the next wait (capped exponential backoff), a
    log line (`failing`) at most once a minute while they last, and one line (`restored`) when they end."""

    logger: Any
    failing: str
    restored: str
    first_backoff: float = FIRST_BACKOFF
    max_backoff: float = MAX_BACKOFF
    level: str = "warning"
    traceback: bool = False  # the first failure of an episode logged with its traceback
    clock: Callable[[], float] = time.monotonic
    failures: int = 0  # in this episode
    total: int = 0  # since the start of the process
    error: str | None = None
    since: float | None = None  # when the episode began
    _last_log: float = float("-inf")

    def failed(self, exc: BaseException | str, *, level: str | None = None, **fields: Any) -> float:
        """Record a failure (an exception, or the reason in words); log it when due; return the seconds to
        wait before the next attempt."""
        now = self.clock()
        self.failures += 1
        self.total += 1
        self.error = exc if isinstance(exc, str) else describe(exc)
        if self.since is None:
            self.since = now
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            if self.traceback and self.failures == 1 and isinstance(exc, BaseException):
                fields["exc_info"] = exc
            getattr(self.logger, level or self.level)(self.failing, error=self.error, **fields)
        return float(min(self.max_backoff, self.first_backoff * 2.0 ** min(self.failures - 1, 16)))

    def recovered(self, **fields: Any) -> None:
        """Working again: say so once (with the failures and how long it lasted) and start the next
        episode from the first backoff."""
        if self.failures:
            down_for = round(self.clock() - self.since, 1) if self.since is not None else 0.0
            self.logger.info(self.restored, failures=self.failures, down_for=down_for, **fields)
        self.failures, self.error, self.since, self._last_log = 0, None, None, float("-inf")


class Restarts(Episode):
    """The failure episode of a chain or component that `supervise` restarts."""

    __slots__ = ()

    def __init__(self, what: str, logger: Any) -> None:
        super().__init__(
            logger, f"{what} failed; restarting with backoff", f"{what} recovered", level="error", traceback=True
        )

    def ran(self, seconds: float) -> None:
        """An attempt ran this long before it ended; a long run ends the episode."""
        if seconds >= HEALTHY_AFTER:
            self.recovered()


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
            await pause(stopping, delay)


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Wait `seconds`, or less once `stopping` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def unless_stopped(stopping: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """What `work` returns, or None once `stopping` is set meanwhile: `work` is then cancelled. For node calls
    made with nothing in hand (a tip, a read of blocks, opening a source), which a silent node would
    otherwise hold for its read timeout (minutes) and a refused connection for the client's retries."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


def awaiting(task: asyncio.Future[Any]) -> str:
    """Where a task waits, for a log line: its coroutines from the outermost in, the innermost with its
    place (`follow > _run_while_leading > run > _commit > execute (connection.py:350)`)."""
    names: list[str] = []
    place = ""
    coro: Any = task.get_coro() if isinstance(task, asyncio.Task) else None
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        names.append(frame.f_code.co_name)
        place = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)
    return f"{' > '.join(names)} ({place})" if names else repr(task)
