"""The daemon: one Service wires every chain, the dispatcher and the HTTP endpoints in one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.factory import dispatcher_for, reload_sinks
from depositwatch.chains.base import ChainError, ChainSource, WrongChain
from depositwatch.config import ChainConfig, Config, parse_listen, redact_text
from depositwatch.follower import Follower
from depositwatch.leadership import SESSION_LOST, FencedOutbox, Leadership, Term, open_leadership
from depositwatch.metrics import Metrics
from depositwatch.pipeline import attach, make_hook, make_policy, make_settings, make_source
from depositwatch.preflight import probe_sinks, secret_problems
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, IdentityMismatch, LeaseLost, Scope, SqlStore, open_store
from depositwatch.store.retention import run_retention
from depositwatch.supervise import Restarts, supervise
from depositwatch.systemd import Notifier, watchdog_interval

log = structlog.get_logger(__name__)

STARTUP_NODE_TIMEOUT = 30.0
STORE_READ_TIMEOUT = 2.0  # /healthz and /metrics never hang on a slow store


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
        self.leases: Leadership | None = None
        self.outbox: FencedOutbox | None = None
        self.http_address: tuple[str, int] | None = None
        self._stopping = asyncio.Event()
        self._book_changed = asyncio.Event()
        self._book_lock = asyncio.Lock()
        self._reload_requested = asyncio.Event()
        self.components: dict[str, Restarts] = {}
        self._runner: web.AppRunner | None = None
        self._api_runner: web.AppRunner | None = None
        self.api_address: tuple[str, int] | None = None

    # start-up -------------------------------------------------------------------------------------

    async def _startup(self) -> None:
        config = self.config
        if not config.chains:
            raise StartupError("no chains are configured: add [[chains]] sections to the config")
        problems = secret_problems(config)  # every secret before touching the store or a node
        if problems:
            raise StartupError("; ".join(problems))
        self.store = store = await open_store(config.store, migrate=True)
        password = config.store.password.resolve().get_secret_value() if config.store.password else None
        self.leases = open_leadership(store, config.ha.lease_ttl, password)
        names = [c.name for c in config.chains]
        self.registry = await AddressRegistry.load(store, names)
        _freeze()
        self._observe_registry()
        log.info("address book loaded", addresses=len(self.registry), version=self.registry.version)
        self.metrics.prepare(names, [s.name for s in config.sinks])
        for chain in config.chains:
            self.metrics.set_bounds(chain.name, chain.max_commit_age)
            bound = log.bind(chain=chain.name)
            self.chains[chain.name] = ChainState(chain, make_source(chain), restarts=Restarts("chain", bound))
        await asyncio.gather(*(self._check_node(state) for state in self.chains.values()))
        self.outbox = FencedOutbox(store)
        self.dispatcher = dispatcher_for(config, self.outbox, metrics=self.metrics)
        await probe_sinks(list(config.sinks))
        if config.http.enabled:
            await self._start_http()
        if config.api is not None:
            await self._start_api()

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
                loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
            self.notifier.ready(self.status_line())
            log.info("depositwatch running", chains=list(self.chains), sinks=[s.name for s in self.config.sinks])
            async with asyncio.TaskGroup() as group:
                # Every task is supervised: a chain restarts itself, a component is restarted by
                # `supervise`; only a bug in the supervision itself would end this group (and the process).
                chain_tasks = [group.create_task(self._follow(state)) for state in self.chains.values()]
                dispatcher_task = group.create_task(self._component("dispatcher", self._dispatch))
                helpers = [
                    group.create_task(self._component("address_book", self._watch_book)),
                    group.create_task(self._component("heartbeat", self._heartbeat)),
                    group.create_task(self._component("reload", self._reloader)),
                    group.create_task(self._component("retention", self._retention)),
                ]
                await self._stopping.wait()
                self.notifier.stopping()
                log.info("stopping: finishing the blocks in hand and in-flight deliveries")
                for state in self.chains.values():
                    if state.follower is not None:
                        state.follower.stop()
                await asyncio.wait(chain_tasks)  # each catches its own errors; the group sees any other
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

    async def _component(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        restarts = self.components.setdefault(name, Restarts(f"component {name}", log.bind(component=name)))
        await supervise(name, run, metrics=self.metrics, stopping=self._stopping, restarts=restarts)

    async def _reloader(self) -> None:
        """SIGHUP sets an event; the reload runs here, inside the task group, never as a stray task."""
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

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
            fresh = reload_sinks(self.dispatcher, self.config_path)
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
        restarts = state.restarts or Restarts("chain", bound)
        while not self._stopping.is_set():
            state.heartbeat = started = time.monotonic()
            term = None
            try:
                term = await self.leases.acquire(lease)
                if term is None:
                    if state.state != "standby":
                        bound.info("standing by: another instance follows this chain")
                    state.state = "standby"
                    self.metrics.leader.labels(name).set(0)
                    await self._sleep(self.leases.retry_every)
                    continue
                self.metrics.leader.labels(name).set(1)
                if state.state in ("node-down", "standby", "failed"):  # (re)connect before following
                    await state.source.close()
                    await state.source.open()
                    await self.store.check_identity(name, await state.source.identity())
                hook = make_hook(state.config)
                attach(state.source, self.registry, hook, self.store)
                follower = Follower(
                    source=state.source,
                    store=self.store,
                    registry=self.registry,
                    policy=make_policy(state.config, self.config.alerts),
                    scope=Scope.live().fenced(term.fence),
                    cursor_name=f"live:{name}",
                    settings=make_settings(state.config),
                    metrics=self.metrics,
                    hook=hook,
                    on_commit=functools.partial(self._committed, state),
                    reload_book=self._reload_book,
                )
                state.follower = follower
                if self._stopping.is_set():  # SIGTERM while the lease was being taken: stop() missed it
                    follower.stop()
                await follower.start()
                state.state, state.error = "following", None
                await self._run_while_leading(state, follower, term)
            except LeaseLost as exc:
                bound.warning("lost the chain to another instance", error=str(exc))
                state.state = "standby"
                if term is not None:
                    self.leases.lost(term)
            except SESSION_LOST as exc:  # nothing was committed; the next attempt checks the lease again
                bound.warning("store session lost mid-commit; standing by", error=str(exc) or type(exc).__name__)
                state.state = "standby"
                await self._sleep(self.leases.retry_every)
            except (ChainError, OSError, TimeoutError) as exc:
                state.state, state.error = "node-down", str(exc) or type(exc).__name__
                if time.monotonic() - last_error_log > 60:
                    last_error_log = time.monotonic()
                    bound.warning("node unavailable, retrying", error=state.error)
                await self._sleep(2.0)
            except Exception as exc:
                # A wrong chain, a reorg deeper than allowed, or a bug (a decoder's KeyError, the store's
                # OverflowError): this chain alone fails; the others and the dispatcher go on. It is
                # restarted with backoff, so a fixed node or a reset cursor brings it back by itself.
                restarts.ran(time.monotonic() - started)
                delay = restarts.failed(exc)
                state.state, state.error = "failed", restarts.error
                self.metrics.chain_restarts.labels(name).inc()
                self.metrics.set_chain_state(name, "failed")
                await self._pause(state, delay)

    async def _pause(self, state: ChainState, seconds: float) -> None:
        """Wait out a restart backoff, still beating: a chain waiting to restart is not a hung loop."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            state.heartbeat = time.monotonic()
            await self._sleep(min(1.0, left))

    async def _run_while_leading(self, state: ChainState, follower: Follower, term: Term) -> None:
        assert self.leases is not None
        leases = self.leases
        # Renewed while the follower's loop turns; a node poll or a backoff may take a while.
        window = max(leases.ttl, 2 * state.config.poll_interval + 5.0)

        async def guard() -> None:
            await leases.hold(term, lambda: follower.heartbeat, window)
            follower.stop()  # lost: its next commit would be refused anyway

        async def beat() -> None:
            while True:
                state.heartbeat = follower.heartbeat
                await asyncio.sleep(0.5)

        try:
            async with asyncio.TaskGroup() as group:
                helpers = [group.create_task(guard()), group.create_task(beat())]
                if state.config.mempool:  # Bitcoin: the mempool; EVM: the node's pending pool
                    component = f"mempool:{state.config.name}"
                    restarts = self.components.setdefault(
                        component, Restarts("mempool watcher", log.bind(chain=state.config.name, component=component))
                    )
                    self.metrics.component_restarts.labels(component)
                    watcher = supervise(
                        component,
                        functools.partial(self._mempool, state, follower),
                        metrics=self.metrics,
                        stopping=self._stopping,
                        restarts=restarts,
                    )
                    helpers.append(group.create_task(watcher))
                try:
                    await follower.run()
                finally:
                    for task in helpers:
                        task.cancel()
        except BaseExceptionGroup as failed:
            # The follower's error, or a helper's (the lease check's store error): the chain's failure,
            # handled by `_follow` like any other.
            raise _first(failed) from None
        if not self._stopping.is_set():
            state.state = "standby"

    async def _mempool(self, state: ChainState, follower: Follower) -> None:
        """Early `revoked_incoming` alerts from the node's mempool, while this instance leads the chain."""
        from depositwatch.chains.bitcoin import BitcoinSource
        from depositwatch.chains.evm import EvmSource
        from depositwatch.mempool import MempoolWatcher

        assert self.store is not None
        if isinstance(state.source, EvmSource):
            from depositwatch.evm_pending import PendingWatcher

            await PendingWatcher(
                state.source,
                self.store,
                self.registry,
                make_policy(state.config, self.config.alerts),
                follower.scope,  # fenced by the chain's lease, like the follower's commits
                caught_up=lambda: follower.lag == 0,
                drop_grace=state.config.mempool_drop_grace,
            ).run()
            return
        assert isinstance(state.source, BitcoinSource)
        watcher = MempoolWatcher(
            state.source,
            self.store,
            self.registry,
            make_policy(state.config, self.config.alerts),
            follower.scope,  # fenced by the chain's lease, like the follower's commits
            state.config,
            caught_up=lambda: follower.lag == 0,
        )
        await watcher.run()

    async def _committed(self, state: ChainState, effects: Sequence[BlockEffects]) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if effects:
            state.block_time = effects[-1].block.time
        state.last_commit = int(time.time())
        if state.restarts is not None and state.restarts.failures:
            state.restarts.recovered()  # committing again: the next failure starts a new episode

    async def _dispatch(self) -> None:
        """Deliver alerts; with several instances only the holder of the dispatcher lease does, and
        only while its loop turns. A term lost ends its dispatcher; the next term gets a fresh one."""
        assert self.dispatcher is not None and self.leases is not None and self.outbox is not None
        leases, outbox = self.leases, self.outbox
        window = max(leases.ttl, 3 * self.config.alerts.poll_interval + 2.0)
        fresh = True
        while not self._stopping.is_set():
            term = await leases.acquire("dispatcher")
            if term is None:
                await self._sleep(leases.retry_every)
                continue
            if self._stopping.is_set():  # SIGTERM while the lease was being taken
                return
            outbox.term = term
            if not fresh:
                self.dispatcher = dispatcher_for(self.config, outbox, metrics=self.metrics)
            fresh = False
            run = asyncio.create_task(self.dispatcher.run())
            guard = asyncio.create_task(leases.hold(term, lambda: outbox.progress, window))
            try:
                await asyncio.wait({run, guard}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (run, guard):
                    task.cancel()
                results = await asyncio.gather(run, guard, return_exceptions=True)
            if isinstance(results[0], LeaseLost):
                leases.lost(term)
            elif isinstance(results[0], BaseException) and not isinstance(results[0], asyncio.CancelledError):
                raise results[0]
            if not self._stopping.is_set():
                log.warning("dispatcher stopped: this instance no longer holds the dispatcher lease")

    async def _retention(self) -> None:
        """Prune settled history now and then ([retention]); see store/retention.py."""
        assert self.store is not None
        await run_retention(
            self.store, self.config.retention, self._stopping, lambda t, n: self.metrics.pruned.labels(t).inc(n)
        )

    async def _watch_book(self) -> None:
        """Hot address changes: PostgreSQL NOTIFY wakes at once; every backend also checks the version often."""
        assert self.store is not None
        async with self.store.book_changes(self._book_changed.set):
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._book_changed.wait(), 0.25)
                self._book_changed.clear()
                try:
                    await self._reload_book()
                except Exception as exc:  # a store hiccup must not stop the lookups in memory
                    log.error("address book reload failed; will retry", error=str(exc))
                    await asyncio.sleep(1.0)

    async def _reload_book(self) -> None:
        """Reload the registry if the book changed (also called by a follower whose key tree grew)."""
        assert self.store is not None
        async with self._book_lock:  # one load at a time: a second caller then finds it current
            if await self.registry.reload(self.store, list(self.chains)):
                _freeze()
                self._observe_registry()
                log.info("address book reloaded", addresses=len(self.registry), version=self.registry.version)

    async def _heartbeat(self) -> None:
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
                    self.notifier.watchdog()
            self.notifier.status(self.status_line())
            for name, state in self.chains.items():
                self.metrics.set_chain_state(name, state.current)
            if now - last_outbox > 5 and self.store is not None:
                last_outbox = now
                try:
                    for status, count in (await self.store.outbox_counts()).items():
                        self.metrics.outbox.labels(status).set(count)
                except Exception as exc:  # the gauge goes stale; the dispatcher reports the store itself
                    if now - last_outbox_error >= 60:
                        last_outbox_error = now
                        log.warning("reading the outbox counts failed", error=f"{type(exc).__name__}: {exc}")
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
        host, port = parse_listen(self.config.http.listen)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:  # in use, or not an address of this host: one line, not a traceback
            reason = exc.strerror or str(exc)
            raise StartupError(f"http: cannot listen on {self.config.http.listen}: {reason.lower()}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_address = sockets[0].getsockname()[:2] if sockets else (host, int(port))
        log.info("http endpoint listening", address=f"{self.http_address[0]}:{self.http_address[1]}")

    async def _start_api(self) -> None:
        """The address book's HTTP API on its own listener ([api], docs/api.md)."""
        from depositwatch.api import serve

        assert self.store is not None and self.config.api is not None
        try:
            started = await serve(self.config, self.store, self.health, self._book_changed.set)
            self._api_runner, self.api_address = started
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError(f"api: cannot listen on {self.config.api.listen}: {reason.lower()}") from None

    async def _observe(self) -> bool:
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
        await self._observe()
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _healthz(self, _: web.Request) -> web.Response:
        body, healthy = await self.health()
        return web.json_response(body, status=200 if healthy else 503)

    async def health(self) -> tuple[dict[str, object], bool]:
        """The health report (/healthz, the API's /api/v1/health) and whether it is healthy."""
        store_ok = await self._observe()
        now = time.time()
        chains = {name: self._chain_health(s, now) for name, s in self.chains.items()}
        components = {name: {"restarts": r.total, "error": r.error} for name, r in sorted(self.components.items())}
        healthy = store_ok and all(c["healthy"] for c in chains.values())
        return {"healthy": healthy, "store": store_ok, "chains": chains, "components": components}, healthy

    @staticmethod
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

    # shutdown -------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for state in self.chains.values():
            with contextlib.suppress(Exception):
                await state.source.close()
        for runner in (self._api_runner, self._runner):
            if runner is not None:
                await runner.cleanup()
        if self.leases is not None:
            await self.leases.release_all()
        if self.store is not None:
            await self.store.close()
        self.notifier.close()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group that is not a cancellation (a cancellation if that is all)."""
    flat: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        item = pending.pop(0)
        if isinstance(item, BaseExceptionGroup):
            pending[:0] = list(item.exceptions)
        else:
            flat.append(item)
    for exc in flat:
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return flat[0] if flat else asyncio.CancelledError()


def _freeze() -> None:
    """Keep the collector off the millions of keys just loaded: a full pass over 10 million of them
    takes over half a second and would stall the event loop each time. They hold no reference cycles,
    so reference counting frees them when a reload replaces them."""
    gc.collect()
    gc.freeze()
