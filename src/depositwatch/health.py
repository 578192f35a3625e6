"""What the daemon says about itself: each chain's state, the components' restarts and whether the store
answers, as /healthz, /metrics, the API's health route and systemd's STATUS and WATCHDOG render it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from depositwatch.chains.base import ChainSource
from depositwatch.config import ChainConfig, redact_text
from depositwatch.follower import Follower
from depositwatch.metrics import Metrics
from depositwatch.store import SqlStore
from depositwatch.supervise import Restarts
from depositwatch.systemd import Notifier, watchdog_interval

log = structlog.get_logger(__name__)

STORE_READ_TIMEOUT = 2.0  # /healthz and /metrics never hang on a slow store


@dataclass(slots=True)
class ChainState:
    """What the service knows about one chain's follower."""

    config: ChainConfig
    source: ChainSource
    state: str = "starting"  # starting | standby | following | node-down | failed
    error: str | None = None
    follower: Follower | None = None
    heartbeat: float = field(default_factory=time.monotonic)
    restarts: Restarts | None = None
    block_time: int | None = None  # timestamp of the newest block this instance processed
    last_commit: int | None = None  # unix time of the last commit by any instance (from the store)

    @property
    def lag(self) -> int | None:
        """Blocks behind the node, when following."""
        return None if self.follower is None else self.follower.lag

    @property
    def current(self) -> str:
        """The state, with a failing node shown as `node-down` even while its follower retries."""
        if self.state == "following" and self.follower is not None and self.follower.failing:
            return "node-down"
        return self.state

    @property
    def current_error(self) -> str | None:
        """The latest error, if the chain is not following cleanly."""
        if self.follower is not None and self.follower.failing:
            return self.follower.failing
        return self.error

    def status(self) -> str:
        """`eth 21000000 (lag 1)` or `eth standby`."""
        name = self.config.name
        if self.current == "following" and self.follower is not None and self.follower.cursor is not None:
            return f"{name} {self.follower.cursor.height} (lag {self.lag if self.lag is not None else '?'})"
        return f"{name} {self.current}"

    def commit_age(self, now: float) -> float | None:
        """Seconds since the chain's last commit by any instance, when known."""
        return None if self.last_commit is None else max(0.0, now - self.last_commit)

    def healthy(self, now: float) -> bool:
        """Following within the allowed lag, or a standby whose leader commits within the bound."""
        if self.state == "standby":
            age = self.commit_age(now)
            return age is not None and age <= self.config.max_commit_age
        lag = self.lag
        return self.current == "following" and lag is not None and lag <= self.config.max_lag_blocks


class Health:
    """The daemon's health over the service's own `chains` and `components` (read, never changed here);
    `store` is set once it is open."""

    def __init__(self, metrics: Metrics, chains: Mapping[str, ChainState], components: Mapping[str, Restarts]) -> None:
        self.metrics = metrics
        self.chains = chains
        self.components = components
        self.store: SqlStore | None = None

    def status_line(self) -> str:
        """For systemd's STATUS: `btc 870123 (lag 0), eth 21000000 (lag 1)`."""
        return ", ".join(state.status() for state in self.chains.values()) or "starting"

    async def heartbeat(self, notifier: Notifier) -> None:
        """STATUS and WATCHDOG for systemd, outbox metrics. Pings stop when a chain loop hangs."""
        interval = watchdog_interval()
        stale_after = (interval * 2) if interval else None
        tick = min(interval or 2.0, 2.0)
        last_outbox = 0.0
        last_outbox_error = float("-inf")
        while True:
            now = time.monotonic()
            if stale_after is not None:
                hung = [s.config.name for s in self.chains.values() if now - s.heartbeat > stale_after]
                if hung:
                    log.error("loop hung, withholding the watchdog ping", chains=hung)
                else:
                    notifier.watchdog()
            notifier.status(self.status_line())
            for name, state in self.chains.items():
                self.metrics.set_chain_state(name, state.current)
            if now - last_outbox > 5 and self.store is not None:
                last_outbox = now
                try:
                    for status, count in (await self.store.outbox.counts()).items():
                        self.metrics.outbox.labels(status).set(count)
                except Exception as exc:  # the gauge goes stale; the dispatcher reports the store itself
                    if now - last_outbox_error >= 60:
                        last_outbox_error = now
                        log.warning("reading the outbox counts failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(tick)

    async def serve(self, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
        """/metrics and /healthz on host:port (OSError when it cannot listen); the runner and the address."""
        from depositwatch.api import start_api

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return await start_api(app, host, port)

    async def observe(self) -> bool:
        """Refresh what is read at scrape time: each chain's last commit (from the store, so a standby
        sees its leader's progress), ages in seconds, chain states. Returns whether the store answered."""
        store_ok = False
        if self.store is not None:
            try:
                async with asyncio.timeout(STORE_READ_TIMEOUT):
                    for name, state in self.chains.items():
                        state.last_commit = await self.store.cursor_updated_at(f"live:{name}")
                store_ok = True
            except Exception as exc:
                log.debug("store unreadable for health", error=f"{type(exc).__name__}: {exc}")
        now = time.time()
        for name, state in self.chains.items():
            self.metrics.set_chain_state(name, state.current)
            if state.last_commit is not None:
                self.metrics.last_commit.labels(name).set(state.last_commit)
                self.metrics.since_last_commit.labels(name).set(max(0.0, now - state.last_commit))
            if state.block_time is not None:
                self.metrics.block_age.labels(name).set(max(0.0, now - state.block_time))
        return store_ok

    async def _metrics(self, _: web.Request) -> web.Response:
        await self.observe()
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _healthz(self, _: web.Request) -> web.Response:
        body, healthy = await self.report()
        return web.json_response(body, status=200 if healthy else 503)

    async def report(self) -> tuple[dict[str, object], bool]:
        """The health report (/healthz, the API's /api/v1/health) and whether it is healthy."""
        store_ok = await self.observe()
        now = time.time()
        chains = {name: _chain_health(s, now) for name, s in self.chains.items()}
        components = {name: {"restarts": r.total, "error": r.error} for name, r in sorted(self.components.items())}
        healthy = store_ok and all(c["healthy"] for c in chains.values())
        return {"healthy": healthy, "store": store_ok, "chains": chains, "components": components}, healthy


def _chain_health(s: ChainState, now: float) -> dict[str, object]:
    age = s.commit_age(now)
    return {
        "state": s.current,
        "lag": s.lag,
        "max_lag": s.config.max_lag_blocks,
        "error": redact_text(s.current_error) if s.current_error else None,  # node errors may quote a URL
        "healthy": s.healthy(now),
        "seconds_since_last_commit": None if age is None else round(age, 1),
        "max_commit_age": s.config.max_commit_age if s.state == "standby" else None,
        "block_age_seconds": None if s.block_time is None else round(max(0.0, now - s.block_time), 1),
        "restarts": s.restarts.total if s.restarts is not None else 0,
    }
