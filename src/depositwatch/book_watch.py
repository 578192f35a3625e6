"""The daemon's address book in memory, kept current: PostgreSQL's NOTIFY wakes the watcher at once,
every backend also checks the book's version often, and a follower whose key tree grew, the API and
SIGHUP ask for a reload. A reload builds new books and swaps them in whole (registry.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Sequence

import structlog

from depositwatch.metrics import Metrics
from depositwatch.registry import AddressRegistry
from depositwatch.store import SqlStore

log = structlog.get_logger(__name__)


class BookWatch:
    """The registry of the service's chains and what keeps it current."""

    def __init__(self, store: SqlStore, chains: Sequence[str], metrics: Metrics) -> None:
        self.store = store
        self.chains = list(chains)
        self.metrics = metrics
        self.registry = AddressRegistry()
        self.changed = asyncio.Event()  # set: check the book's version now
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """The first load, at start-up."""
        self.registry = await AddressRegistry.load(self.store, self.chains)
        self._loaded()
        log.info("address book loaded", addresses=len(self.registry), version=self.registry.version)

    def force(self) -> None:
        """Reload at the next check even if the version did not move (SIGHUP)."""
        self.registry.version = -1
        self.changed.set()

    async def watch(self) -> None:
        """Hot address changes: PostgreSQL NOTIFY wakes at once; every backend also checks the version often."""
        async with self.store.book_changes(self.changed.set):
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.25)
                self.changed.clear()
                try:
                    await self.reload()
                except Exception as exc:  # a store hiccup must not stop the lookups in memory
                    log.error("address book reload failed; will retry", error=str(exc))
                    await asyncio.sleep(1.0)

    async def reload(self) -> None:
        """Reload the registry if the book changed (also called by a follower whose key tree grew)."""
        async with self._lock:  # one load at a time: a second caller then finds it current
            if await self.registry.reload(self.store, self.chains):
                self._loaded()
                log.info("address book reloaded", addresses=len(self.registry), version=self.registry.version)

    def _loaded(self) -> None:
        _freeze()
        for (chain, status), size in self.registry.sizes().items():
            self.metrics.registry_size.labels(chain, status).set(size)


def _freeze() -> None:
    """Keep the collector off the millions of keys just loaded: a full pass over 10 million of them
    takes over half a second and would stall the event loop each time. They hold no reference cycles,
    so reference counting frees them when a reload replaces them."""
    gc.collect()
    gc.freeze()
