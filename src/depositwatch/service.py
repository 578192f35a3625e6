"""The daemon: one Service wires every chain, the dispatcher and the HTTP endpoints in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.sinks import build_sinks
from depositwatch.chains.base import ChainError, ChainSource, WrongChain
from depositwatch.config import ChainConfig, Config, load_config, redact_text
from depositwatch.follower import Follower, ReorgTooDeep
from depositwatch.leadership import Leases, PostgresLeases, SingleInstance
from depositwatch.metrics import Metrics
from depositwatch.pipeline import attach, make_hook, make_policy, make_settings, make_source
from depositwatch.registry import AddressRegistry
from depositwatch.store import IdentityMismatch, LeaseLost, Scope, SqlStore, open_store
from depositwatch.store.drivers import PostgresDriver, sqlite_path
from depositwatch.store.sql import NOTIFY_CHANNEL
from depositwatch.systemd import Notifier, watchdog_interval

log = structlog.get_logger(__name__)

STARTUP_NODE_TIMEOUT = 30.0


class StartupError(Exception):
    """A start-up check failed; the message says which and why."""


@dataclass(slots=True)
class ChainState:
    """What the service knows about one chain's follower."""

    config: ChainConfig
    source: ChainSource
    state: str = "starting"  # starting | standby | following | node-down | failed
    error: str | None = None
    follower: Follower | None = None
    heartbeat: float = field(default_factory=time.monotonic)

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

    def healthy(self) -> bool:
        """Following within the allowed lag, or a healthy standby."""
        if self.state == "standby":
            return True
        lag = self.lag
        return self.current == "following" and lag is not None and lag <= self.config.max_lag_blocks


class Service:
    """Builds every component by hand and runs them until SIGTERM."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        notifier: Notifier | None = None,
        install_signals: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.install_signals = install_signals
        self.metrics = Metrics()
        self.chains: dict[str, ChainState] = {}
        self.store: SqlStore | None = None
        self.registry = AddressRegistry()
        self.dispatcher: Dispatcher | None = None
        self.leases: Leases | None = None
        self.http_address: tuple[str, int] | None = None
        self._stopping = asyncio.Event()
        self._book_changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # start-up -------------------------------------------------------------------------------------

    async def _startup(self) -> None:
        config = self.config
        if not config.chains:
            raise StartupError("no chains are configured: add [[chains]] sections to the config")
        self.store = store = await open_store(config.store, migrate=True)
        if isinstance(store.db, PostgresDriver):
            password = config.store.password.resolve().get_secret_value() if config.store.password else None
            self.leases = PostgresLeases(config.store.url, password)
        else:
            single = SingleInstance(sqlite_path(config.store.url))
            single.acquire()
            self.leases = single
        names = [c.name for c in config.chains]
        self.registry = await AddressRegistry.load(store, names)
        _freeze()
        self._observe_registry()
        log.info("address book loaded", addresses=len(self.registry), version=self.registry.version)
        for chain in config.chains:
            self.chains[chain.name] = ChainState(chain, make_source(chain))
        await asyncio.gather(*(self._check_node(state) for state in self.chains.values()))
        self.dispatcher = Dispatcher(store, build_sinks(config.sinks), config.alerts, metrics=self.metrics)
        if config.http.enabled:
            await self._start_http()

    async def _check_node(self, state: ChainState) -> None:
        """Open the node and check its identity; a wrong chain refuses start-up, an absent node is retried later."""
        assert self.store is not None
        name = state.config.name
        try:
            await asyncio.wait_for(state.source.open(), STARTUP_NODE_TIMEOUT)
            await self.store.check_identity(name, await state.source.identity())
        except (WrongChain, IdentityMismatch) as exc:
            raise StartupError(str(exc)) from exc
        except (ChainError, TimeoutError, OSError) as exc:
            state.state, state.error = "node-down", str(exc) or type(exc).__name__
            log.error("node unreachable at start-up; this chain will keep trying", chain=name, error=state.error)

    # running --------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start, run until SIGTERM (exit 0) or a crash (raises)."""
        try:
            await self._startup()
            if self.install_signals:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGTERM, self.stop)
                loop.add_signal_handler(signal.SIGINT, self.stop)
                loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
            self.notifier.ready(self.status_line())
            log.info("depositwatch running", chains=list(self.chains), sinks=[s.name for s in self.config.sinks])
            async with asyncio.TaskGroup() as group:
                chain_tasks = [group.create_task(self._follow(state)) for state in self.chains.values()]
                dispatcher_task = group.create_task(self._dispatch())
                helpers = [group.create_task(self._watch_book()), group.create_task(self._heartbeat())]
                await self._stopping.wait()
                self.notifier.stopping()
                log.info("stopping: finishing the blocks in hand and in-flight deliveries")
                for state in self.chains.values():
                    if state.follower is not None:
                        state.follower.stop()
                await asyncio.gather(*chain_tasks, return_exceptions=True)
                if self.dispatcher is not None:
                    await self.dispatcher.stop(self.config.alerts.shutdown_grace)
                for task in (dispatcher_task, *helpers):
                    task.cancel()
            log.info("stopped")
            return 0
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Begin a clean stop (SIGTERM)."""
        self._stopping.set()

    async def reload(self) -> None:
        """SIGHUP: reload the address book and the sink settings; chain changes need a restart."""
        log.info("reloading (SIGHUP)")
        self.registry.version = -1
        self._book_changed.set()
        for state in self.chains.values():  # outputs found by `btc scan-revoked` since the start
            hook = state.follower.hook if state.follower is not None else None
            if hook is not None and self.store is not None:
                try:
                    await hook.load(self.store, Scope.live())
                except Exception as exc:
                    log.error("reloading the chain's watched outputs failed", chain=state.config.name, error=str(exc))
        if self.config_path is None or self.dispatcher is None:
            return
        try:
            fresh = load_config(self.config_path)
            self.dispatcher.reconfigure(build_sinks(fresh.sinks))
        except Exception as exc:  # a bad edit must not take the daemon down
            log.error("config reload failed; keeping the running settings", error=str(exc))
            return
        if [c.model_dump() for c in fresh.chains] != [c.model_dump() for c in self.config.chains]:
            log.warning("chain settings changed; they take effect at the next restart")
        self.config = self.config.model_copy(update={"sinks": fresh.sinks})
        log.info("sinks reloaded", sinks=[s.name for s in fresh.sinks])

    async def _follow(self, state: ChainState) -> None:
        """One chain: take the lease, follow, stand by when another instance leads; never stop the others."""
        assert self.store is not None and self.leases is not None
        name = state.config.name
        lease = f"chain:{name}"
        bound = log.bind(chain=name)
        last_error_log = 0.0
        while not self._stopping.is_set():
            state.heartbeat = time.monotonic()
            try:
                if not await self.leases.try_acquire(lease):
                    if state.state != "standby":
                        bound.info("standing by: another instance follows this chain")
                    state.state = "standby"
                    self.metrics.leader.labels(name).set(0)
                    await self._sleep(1.0)
                    continue
                self.metrics.leader.labels(name).set(1)
                if state.state in ("node-down", "standby"):  # (re)connect before following
                    await state.source.close()
                    await state.source.open()
                    await self.store.check_identity(name, await state.source.identity())
                hook = make_hook(state.config)
                attach(state.source, self.registry, hook)
                follower = Follower(
                    source=state.source,
                    store=self.store,
                    registry=self.registry,
                    policy=make_policy(state.config, self.config.alerts),
                    scope=Scope.live(),
                    cursor_name=f"live:{name}",
                    settings=make_settings(state.config),
                    metrics=self.metrics,
                    hook=hook,
                    on_commit=self._committed,
                )
                state.follower = follower
                await follower.start()
                state.state, state.error = "following", None
                await self._run_while_leading(state, follower, lease)
            except LeaseLost as exc:
                bound.warning("lost the chain to another instance", error=str(exc))
                state.state = "standby"
            except (WrongChain, IdentityMismatch, ReorgTooDeep) as exc:
                state.state, state.error = "failed", str(exc)
                bound.error("chain stopped; other chains go on", error=str(exc))
                while not self._stopping.is_set():  # stay failed, visible in /healthz, until restarted
                    state.heartbeat = time.monotonic()
                    await self._sleep(1.0)
                    if time.monotonic() - last_error_log > 60:
                        last_error_log = time.monotonic()
                        bound.error("chain is stopped", error=str(exc))
            except (ChainError, OSError, TimeoutError) as exc:
                state.state, state.error = "node-down", str(exc) or type(exc).__name__
                if time.monotonic() - last_error_log > 60:
                    last_error_log = time.monotonic()
                    bound.warning("node unavailable, retrying", error=state.error)
                await self._sleep(2.0)

    async def _run_while_leading(self, state: ChainState, follower: Follower, lease: str) -> None:
        assert self.leases is not None
        leases = self.leases

        async def guard() -> None:
            while True:
                await asyncio.sleep(2.0)
                if not await leases.still_held(lease):
                    follower.stop()
                    return

        async def beat() -> None:
            while True:
                state.heartbeat = follower.heartbeat
                await asyncio.sleep(0.5)

        helpers = [asyncio.create_task(guard()), asyncio.create_task(beat())]
        if state.config.kind == "bitcoin" and state.config.mempool:
            helpers.append(asyncio.create_task(self._mempool(state, follower)))
        try:
            await follower.run()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        if not self._stopping.is_set():
            state.state = "standby"

    async def _mempool(self, state: ChainState, follower: Follower) -> None:
        """Early `revoked_incoming` alerts from the node's mempool, while this instance leads the chain."""
        from depositwatch.chains.bitcoin import BitcoinSource
        from depositwatch.mempool import MempoolWatcher

        assert self.store is not None and isinstance(state.source, BitcoinSource)
        watcher = MempoolWatcher(
            state.source,
            self.store,
            self.registry,
            make_policy(state.config, self.config.alerts),
            Scope.live(),
            state.config,
            caught_up=lambda: follower.lag == 0,
        )
        await watcher.run()

    async def _committed(self, _: Any) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def _dispatch(self) -> None:
        """Deliver alerts; with several instances only the holder of the dispatcher lease does."""
        assert self.dispatcher is not None and self.leases is not None
        while not await self.leases.try_acquire("dispatcher"):
            await self._sleep(1.0)
            if self._stopping.is_set():
                return
        await self.dispatcher.run()

    async def _watch_book(self) -> None:
        """Hot address changes: PostgreSQL NOTIFY wakes at once; every backend also checks the version often."""
        assert self.store is not None
        listener = None
        if isinstance(self.store.db, PostgresDriver):
            listener = await self.store.db.pool.acquire()
            await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._book_changed.wait(), 0.25)
                self._book_changed.clear()
                try:
                    if await self.registry.reload(self.store, list(self.chains)):
                        _freeze()
                        self._observe_registry()
                        log.info("address book reloaded", addresses=len(self.registry), version=self.registry.version)
                except Exception as exc:  # a store hiccup must not stop the lookups in memory
                    log.error("address book reload failed; will retry", error=str(exc))
                    await asyncio.sleep(1.0)
        finally:
            if listener is not None and isinstance(self.store.db, PostgresDriver):
                await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
                await self.store.db.pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        """PostgreSQL NOTIFY on the address-book channel: reload now."""
        self._book_changed.set()

    async def _heartbeat(self) -> None:
        """STATUS and WATCHDOG for systemd, outbox metrics. Pings stop when a chain loop hangs."""
        interval = watchdog_interval()
        stale_after = (interval * 2) if interval else None
        tick = min(interval or 2.0, 2.0)
        last_outbox = 0.0
        while True:
            now = time.monotonic()
            if stale_after is not None:
                hung = [s.config.name for s in self.chains.values() if now - s.heartbeat > stale_after]
                if hung:
                    log.error("loop hung, withholding the watchdog ping", chains=hung)
                else:
                    self.notifier.watchdog()
            self.notifier.status(self.status_line())
            if now - last_outbox > 5 and self.store is not None:
                last_outbox = now
                with contextlib.suppress(Exception):
                    for status, count in (await self.store.outbox_counts()).items():
                        self.metrics.outbox.labels(status).set(count)
            await asyncio.sleep(tick)

    def status_line(self) -> str:
        """For systemd's STATUS: `btc 870123 (lag 0), eth 21000000 (lag 1)`."""
        return ", ".join(state.status() for state in self.chains.values()) or "starting"

    def _observe_registry(self) -> None:
        for (chain, status), size in self.registry.sizes().items():
            self.metrics.registry_size.labels(chain, status).set(size)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # HTTP -----------------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        host, _, port = self.config.http.listen.rpartition(":")
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_address = sockets[0].getsockname()[:2] if sockets else (host, int(port))
        log.info("http endpoint listening", address=f"{self.http_address[0]}:{self.http_address[1]}")

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _healthz(self, _: web.Request) -> web.Response:
        store_ok = False
        if self.store is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.address_book_version(), 2.0)
                store_ok = True
        chains = {
            name: {
                "state": s.state,
                "lag": s.lag,
                "max_lag": s.config.max_lag_blocks,
                "error": redact_text(s.error) if s.error else None,  # node errors may quote a URL
                "healthy": s.healthy(),
            }
            for name, s in self.chains.items()
        }
        healthy = store_ok and all(c["healthy"] for c in chains.values())
        return web.json_response(
            {"healthy": healthy, "store": store_ok, "chains": chains}, status=200 if healthy else 503
        )

    # shutdown -------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for state in self.chains.values():
            with contextlib.suppress(Exception):
                await state.source.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.leases is not None:
            await self.leases.release_all()
        if self.store is not None:
            await self.store.close()
        self.notifier.close()


def _freeze() -> None:
    """Keep the collector off the millions of keys just loaded: a full pass over 10 million of them
    takes over half a second and would stall the event loop each time. They hold no reference cycles,
    so reference counting frees them when a reload replaces them."""
    gc.collect()
    gc.freeze()
