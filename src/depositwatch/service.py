"""The daemon: one Service wires every chain, the dispatcher and the HTTP endpoints in one TaskGroup.

Its parts: `chain_runner.py` follows each chain under its lease, `book_watch.py` keeps the address
book current, `health.py` reports to /healthz, /metrics and systemd."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable, Sequence

import structlog
from aiohttp import web

from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.factory import dispatcher_for, reload_sinks
from depositwatch.book_watch import BookWatch
from depositwatch.chain_runner import ChainRunner
from depositwatch.chains.base import ChainError, WrongChain
from depositwatch.config import Config, parse_listen
from depositwatch.health import ChainState, Health
from depositwatch.leadership import FencedOutbox, Leadership, open_leadership
from depositwatch.metrics import Metrics
from depositwatch.pipeline import make_source
from depositwatch.preflight import probe_sinks, secret_problems
from depositwatch.store import IdentityMismatch, LeaseLost, Scope, SqlStore, open_store
from depositwatch.store.retention import run_retention
from depositwatch.supervise import Restarts, awaiting, pause, supervise
from depositwatch.systemd import Notifier

log = structlog.get_logger(__name__)

STARTUP_NODE_TIMEOUT = 30.0
# SIGTERM: how long each chain may take to finish the block in hand before it is cancelled (its commit,
# one transaction, then rolls back whole; the next start reads those blocks again). With the dispatcher's
# `alerts.shutdown_grace` (10 s by default) well within the unit's TimeoutStopSec (45 s).
CHAIN_STOP_GRACE = 10.0
COMPONENT_STOP_REPORT = 5.0  # components still running this long after their cancellation are named


class StartupError(Exception):
    """A start-up check failed; the message says which and why."""


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
        self.components: dict[str, Restarts] = {}
        self.health = Health(self.metrics, self.chains, self.components)
        self.store: SqlStore | None = None
        self.book: BookWatch | None = None
        self.dispatcher: Dispatcher | None = None
        self.leases: Leadership | None = None
        self.outbox: FencedOutbox | None = None
        self.http_address: tuple[str, int] | None = None
        self._stopping = asyncio.Event()
        self._reload_requested = asyncio.Event()
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
        self.store = self.health.store = store = await open_store(config.store, migrate=True)
        password = config.store.password.resolve().get_secret_value() if config.store.password else None
        self.leases = open_leadership(store, config.ha.lease_ttl, password)
        names = [c.name for c in config.chains]
        self.book = BookWatch(store, names, self.metrics)
        await self.book.load()
        self.metrics.prepare(names, [s.name for s in config.sinks])
        for chain in config.chains:
            self.metrics.set_bounds(chain.name, chain.max_commit_age)
            bound = log.bind(chain=chain.name)
            self.chains[chain.name] = ChainState(chain, make_source(chain), restarts=Restarts("chain", bound))
        await asyncio.gather(*(self._check_node(state) for state in self.chains.values()))
        self.outbox = FencedOutbox(store.outbox)
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
            assert self.store is not None and self.leases is not None and self.book is not None
            if self.install_signals:
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGTERM, self.stop)
                loop.add_signal_handler(signal.SIGINT, self.stop)
                loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
            self.notifier.ready(self.health.status_line())
            log.info("depositwatch running", chains=list(self.chains), sinks=[s.name for s in self.config.sinks])
            chain_runner = ChainRunner(
                store=self.store,
                leases=self.leases,
                registry=self.book.registry,
                alerts=self.config.alerts,
                metrics=self.metrics,
                components=self.components,
                stopping=self._stopping,
                wake=self._wake_dispatcher,
                reload_book=self.book.reload,
            )
            heartbeat = functools.partial(self.health.heartbeat, self.notifier)
            async with asyncio.TaskGroup() as group:
                # Every task is supervised: a chain restarts itself, a component is restarted by
                # `supervise`; only a bug in the supervision itself would end this group (and the process).
                chain_tasks = [group.create_task(chain_runner.follow(state)) for state in self.chains.values()]
                dispatcher_task = group.create_task(self._component("dispatcher", self._dispatch))
                helpers = [
                    group.create_task(self._component("address_book", self.book.watch)),
                    group.create_task(self._component("heartbeat", heartbeat)),
                    group.create_task(self._component("reload", self._reloader)),
                    group.create_task(self._component("retention", self._retention)),
                ]
                await self._stopping.wait()
                self.notifier.stopping()
                log.info("stopping: finishing the blocks in hand and in-flight deliveries")
                for state in self.chains.values():
                    if state.follower is not None:
                        state.follower.stop()
                await self._stop_chains(chain_tasks)
                if self.dispatcher is not None:
                    await self.dispatcher.stop(self.config.alerts.shutdown_grace)
                components = [dispatcher_task, *helpers]
                for task in components:
                    task.cancel()
                _, stuck = await asyncio.wait(components, timeout=COMPONENT_STOP_REPORT)
                if stuck:  # the group still waits for them; this says which, and where
                    log.error("components did not end when cancelled", waiting=[awaiting(t) for t in stuck])
            log.info("stopped")
            return 0
        finally:
            await self._shutdown()

    async def _stop_chains(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Each chain finishes the block in hand (each catches its own errors; the group sees any other). One
        still busy after CHAIN_STOP_GRACE (a commit waiting on a store lock, a node silent mid-reorg) is
        cancelled: what it had not committed rolls back whole and is read again at the next start."""
        _, late = await asyncio.wait(tasks, timeout=CHAIN_STOP_GRACE)
        if not late:
            return
        names = dict(zip(tasks, self.chains, strict=True))
        log.warning(
            "chains did not stop in time; cancelled (what they had not committed is read again at the next start)",
            grace=CHAIN_STOP_GRACE,
            chains={names[t]: awaiting(t) for t in tasks if t in late},
        )
        for task in late:
            task.cancel()
        await asyncio.wait(late)

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
        if self.book is not None:
            self.book.force()
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

    def _wake_dispatcher(self) -> None:
        """A commit queued alerts: the dispatcher of the current term looks now."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

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
                await pause(self._stopping, leases.retry_every)
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

    # HTTP -----------------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        """/metrics and /healthz ([http])."""
        listen = self.config.http.listen
        try:
            self._runner, self.http_address = await self.health.serve(*parse_listen(listen))
        except OSError as exc:  # in use, or not an address of this host: one line, not a traceback
            raise _cannot_listen("http", listen, exc) from None
        log.info("http endpoint listening", address=f"{self.http_address[0]}:{self.http_address[1]}")

    async def _start_api(self) -> None:
        """The address book's HTTP API on its own listener ([api], docs/api.md)."""
        from depositwatch.api import serve

        assert self.store is not None and self.config.api is not None and self.book is not None
        try:
            started = await serve(self.config, self.store, self.health.report, self.book.changed.set)
            self._api_runner, self.api_address = started
        except OSError as exc:
            raise _cannot_listen("api", self.config.api.listen, exc) from None

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


def _cannot_listen(what: str, listen: str, exc: OSError) -> StartupError:
    reason = exc.strerror or str(exc)
    return StartupError(f"{what}: cannot listen on {listen}: {reason.lower()}")
