"""The daemon's chains, each in a loop of its own: take the chain's lease, follow it (and its mempool or
pending pool) while this instance leads, stand by while another does. A failure restarts that chain
alone, with backoff; the other chains and the dispatcher go on."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from depositwatch.chains.base import ChainError
from depositwatch.config import AlertsConfig
from depositwatch.follower import Follower
from depositwatch.health import ChainState
from depositwatch.leadership import SESSION_LOST, Leadership, Term
from depositwatch.metrics import Metrics
from depositwatch.pipeline import attach, make_hook, make_policy, make_settings
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, LeaseLost, Scope, SqlStore
from depositwatch.supervise import Restarts, pause, supervise, unless_stopped

log = structlog.get_logger(__name__)


class ChainRunner:
    """Runs one chain per `follow(state)` task over the parts the service shares among its chains.

    `components` is the service's table of supervised components (a chain's mempool watcher joins it
    while the chain is led here); `wake` tells the current dispatcher that a commit queued alerts."""

    def __init__(
        self,
        *,
        store: SqlStore,
        leases: Leadership,
        registry: AddressRegistry,
        alerts: AlertsConfig,
        metrics: Metrics,
        components: dict[str, Restarts],
        stopping: asyncio.Event,
        wake: Callable[[], None],
        reload_book: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self.leases = leases
        self.registry = registry
        self.alerts = alerts
        self.metrics = metrics
        self.components = components
        self._stopping = stopping
        self._wake = wake
        self._reload_book = reload_book

    async def follow(self, state: ChainState) -> None:
        """One chain: take the lease, follow, stand by when another instance leads; never stop the others."""
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
                    await pause(self._stopping, self.leases.retry_every)
                    continue
                self.metrics.leader.labels(name).set(1)
                follower = await unless_stopped(self._stopping, self._lead(state, term))
                if follower is None:
                    break  # SIGTERM while reconnecting or positioning the cursor: nothing is in hand
                if self._stopping.is_set():  # SIGTERM as it got ready: the service's stop() may have missed it
                    follower.stop()
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
                await pause(self._stopping, self.leases.retry_every)
            except (ChainError, OSError, TimeoutError) as exc:
                state.state, state.error = "node-down", str(exc) or type(exc).__name__
                if time.monotonic() - last_error_log > 60:
                    last_error_log = time.monotonic()
                    bound.warning("node unavailable, retrying", error=state.error)
                await pause(self._stopping, 2.0)
            except Exception as exc:
                # A wrong chain, a reorg deeper than allowed, or a bug (a decoder's KeyError, the store's
                # OverflowError): this chain alone fails; the others and the dispatcher go on. It is
                # restarted with backoff, so a fixed node or a reset cursor brings it back by itself.
                restarts.ran(time.monotonic() - started)
                delay = restarts.failed(exc)
                state.state, state.error = "failed", restarts.error
                self.metrics.chain_restarts.labels(name).inc()
                self.metrics.set_chain_state(name, "failed")
                await self._back_off(state, delay)

    async def _lead(self, state: ChainState, term: Term) -> Follower:
        """Ready to follow under `term`: the source reconnected if it was down (still the chain the store
        knows), the follower built and its cursor positioned. No block is in hand yet, so SIGTERM abandons
        it (a silent node would hold it for its read timeout; a cursor write under way rolls back whole)."""
        if state.state in ("node-down", "standby", "failed"):
            await state.source.close()
            await state.source.open()
            await self.store.check_identity(state.config.name, await state.source.identity())
        hook = make_hook(state.config)
        attach(state.source, self.registry, hook, self.store.tokens)
        follower = Follower(
            source=state.source,
            store=self.store,
            registry=self.registry,
            policy=make_policy(state.config, self.alerts),
            scope=Scope.live().fenced(term.fence),
            cursor_name=f"live:{state.config.name}",
            settings=make_settings(state.config),
            metrics=self.metrics,
            hook=hook,
            on_commit=functools.partial(self._committed, state),
            reload_book=self._reload_book,
        )
        state.follower = follower
        await follower.start()
        return follower

    async def _back_off(self, state: ChainState, seconds: float) -> None:
        """Wait out a restart backoff, still beating: a chain waiting to restart is not a hung loop."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            state.heartbeat = time.monotonic()
            await pause(self._stopping, min(1.0, left))

    async def _run_while_leading(self, state: ChainState, follower: Follower, term: Term) -> None:
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
            # handled by `follow` like any other.
            raise _first(failed) from None
        if not self._stopping.is_set():
            state.state = "standby"

    async def _mempool(self, state: ChainState, follower: Follower) -> None:
        """Early `revoked_incoming` alerts from the node's mempool, while this instance leads the chain."""
        from depositwatch.chains.bitcoin import BitcoinSource
        from depositwatch.chains.evm import EvmSource
        from depositwatch.mempool import MempoolWatcher

        if isinstance(state.source, EvmSource):
            from depositwatch.evm_pending import PendingWatcher

            await PendingWatcher(
                state.source,
                self.store,
                self.registry,
                make_policy(state.config, self.alerts),
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
            make_policy(state.config, self.alerts),
            follower.scope,  # fenced by the chain's lease, like the follower's commits
            state.config,
            caught_up=lambda: follower.lag == 0,
        )
        await watcher.run()

    async def _committed(self, state: ChainState, effects: Sequence[BlockEffects]) -> None:
        self._wake()
        if effects:
            state.block_time = effects[-1].block.time
        state.last_commit = int(time.time())
        if state.restarts is not None and state.restarts.failures:
            state.restarts.recovered()  # committing again: the next failure starts a new episode


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
