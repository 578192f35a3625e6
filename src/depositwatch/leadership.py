"""Who follows what: one leader per lease (`chain:<name>`, `dispatcher`), through the store's lease table.

A lease is a small state machine: taken (a new epoch when it changes hands), renewed by its holder
every quarter of the TTL while the loop it guards makes progress, and lost once another instance took
it. Leadership follows progress, not a connection: a frozen or hung leader stops renewing and a standby
takes over once the lease expired (database time), so within `lease_ttl` plus one retry interval of the
last renewal. Every write of chain state and every delivery state change carries the lease's epoch and
is refused in its own transaction once the epoch moved on (fencing): a leader that wakes up after
losing its lease commits and delivers nothing.

A holder that dies outright does not make the others wait: its database session is recorded with the
lease, and a lease whose session is gone is free at once. SQLite runs one instance (a lock file beside
the store), which takes its leases at once, through the same fenced code path.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import structlog

from depositwatch.messages import Delivery, OutboxMessage
from depositwatch.store.base import Fence, LeaseLost
from depositwatch.store.leases import MY_PG_SESSION, Leases

if TYPE_CHECKING:
    from depositwatch.store import SqlStore
    from depositwatch.store.outbox import Outbox

log = structlog.get_logger(__name__)

SESSION_TIMEOUT = 5.0  # seconds for the session probe before it counts as dead and is reopened
STORE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error, TimeoutError)
# A session the server ended under this instance: most often one frozen (SIGSTOP) in the middle of a
# fenced transaction past `lease_ttl`, whose lease has moved on meanwhile.
SESSION_LOST = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
)


class AlreadyRunning(Exception):
    """Another instance already uses this SQLite store."""


class TermState(StrEnum):
    """Where one holding of a lease stands."""

    LEADING = "leading"
    LOST = "lost"
    RELEASED = "released"


@dataclass(slots=True)
class Term:
    """One holding of a lease (mutable: renewals move `valid_until`, a takeover ends it).

    `valid_until` is on this process's monotonic clock, counted from before the last successful
    renewal was sent: until then no other instance can have taken the lease, whatever happened since.
    """

    fence: Fence
    valid_until: float
    state: TermState = TermState.LEADING

    @property
    def valid(self) -> bool:
        """Still leading, and sure that nobody else can hold the lease yet."""
        return self.state is TermState.LEADING and time.monotonic() < self.valid_until


def new_holder() -> str:
    """A holder id unique to this process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leadership:
    """This instance's leases in the store's lease table (the store's `Leases` part)."""

    def __init__(
        self,
        leases: Leases,
        ttl: float,
        *,
        exclusive: bool = False,
        dsn: str | None = None,
        password: str | None = None,
        holder: str | None = None,
    ) -> None:
        self.leases = leases
        self.ttl = ttl
        self.exclusive = exclusive
        self.holder = holder or new_holder()
        self.renew_every = ttl / 4
        self.retry_every = min(1.0, ttl / 4)  # a standby's attempts: takeover within ttl + this
        self._dsn = dsn
        self._password = password
        self._session_conn: asyncpg.Connection | None = None
        self._session: str | None = None
        self._session_lock = asyncio.Lock()
        self._terms: dict[str, Term] = {}
        self.single: SingleInstance | None = None

    async def _current_session(self) -> str | None:
        """PostgreSQL: this instance's session, held open for its lifetime so that a standby can tell a
        dead holder (session gone: take over at once) from a frozen one (session alive: wait for the
        expiry). Reopened when it broke."""
        if self._dsn is None:
            return None
        async with self._session_lock:  # one session for every lease of this instance
            return await self._probe_session(self._dsn)

    async def _probe_session(self, dsn: str) -> str | None:
        conn = self._session_conn
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), SESSION_TIMEOUT)
                return self._session
            except STORE_ERRORS:
                conn.terminate()
        fresh = await asyncio.wait_for(asyncpg.connect(dsn, password=self._password), SESSION_TIMEOUT)
        self._session_conn = fresh
        self._session = await fresh.fetchval(MY_PG_SESSION)
        return self._session

    async def acquire(self, name: str) -> Term | None:
        """Take the lease `name` if it is free (or already ours); None while another instance holds it."""
        held = self._terms.get(name)
        if held is not None and held.state is TermState.LEADING:
            return held
        session = await self._current_session()
        started = time.monotonic()
        fence = await self.leases.acquire(name, self.holder, self.ttl, session, exclusive=self.exclusive)
        if fence is None:
            return None
        term = self._terms[name] = Term(fence, started + self.ttl)
        log.info("lease acquired", lease=name, epoch=fence.epoch, ttl=self.ttl)
        return term

    async def session(self) -> str | None:
        """This instance's database session (PostgreSQL), for a lease taken by a store call of its own."""
        return await self._current_session()

    def adopt(self, fence: Fence, started: float) -> Term:
        """A term for a lease the caller took itself inside a transaction of its own (a replay shard,
        claimed with its row), renewed and released like any other; `started` is the monotonic time
        from before that transaction began."""
        term = self._terms[fence.name] = Term(fence, started + self.ttl)
        log.info("lease acquired", lease=fence.name, epoch=fence.epoch, ttl=self.ttl)
        return term

    async def renew(self, term: Term) -> bool:
        """Extend the lease; False (and the term lost) once another instance took it."""
        if term.state is not TermState.LEADING:
            return False
        session = await self._current_session()
        started = time.monotonic()
        if await self.leases.renew(term.fence, self.ttl, session):
            term.valid_until = started + self.ttl
            return True
        self._lose(term)
        return False

    def _lose(self, term: Term) -> None:
        if term.state is TermState.LEADING:
            term.state = TermState.LOST
            log.warning("lease lost to another instance", lease=term.fence.name, epoch=term.fence.epoch)

    async def hold(self, term: Term, progress: Callable[[], float], window: float | None = None) -> None:
        """Renew `term` while `progress()` (the monotonic time of the guarded loop's last turn) is
        within `window` seconds (default: the TTL); return once the lease is lost.

        A loop that stops turning stops the renewals, so the lease expires and a standby takes over;
        the loop itself is fenced out of the store from then on. Store errors are retried: the lease
        simply runs out if they last.
        """
        window = self.ttl if window is None else window
        stalled = False
        while term.state is TermState.LEADING:
            await asyncio.sleep(self.renew_every)
            try:
                if time.monotonic() - progress() <= window:
                    if stalled:
                        stalled = False
                        log.info("loop moving again; renewing the lease", lease=term.fence.name)
                    await self.renew(term)
                    continue
                if not stalled:
                    stalled = True
                    log.error(
                        "loop made no progress; no longer renewing its lease", lease=term.fence.name, window=window
                    )
                if not await self.leases.holds(term.fence):
                    self._lose(term)
            except STORE_ERRORS as exc:
                error = str(exc) or type(exc).__name__
                log.warning("lease renewal failed; retrying", lease=term.fence.name, error=error)
            except LeaseLost:
                self._lose(term)

    def lost(self, term: Term) -> None:
        """A fenced write found the lease taken over: end the term."""
        self._lose(term)

    async def release(self, term: Term) -> None:
        """Give the lease back (a clean stop): a standby takes it without waiting for the expiry."""
        if term.state is not TermState.LEADING:
            return
        term.state = TermState.RELEASED
        self._terms.pop(term.fence.name, None)
        try:
            await asyncio.wait_for(self.leases.release(term.fence), SESSION_TIMEOUT)
        except STORE_ERRORS as exc:
            log.warning("could not give the lease back; it expires by itself", lease=term.fence.name, error=str(exc))

    async def release_all(self) -> None:
        """Give every lease back and close the session (and the SQLite lock file)."""
        for term in list(self._terms.values()):
            await self.release(term)
        self._terms.clear()
        if self._session_conn is not None:
            try:
                await self._session_conn.close(timeout=SESSION_TIMEOUT)
            except STORE_ERRORS:
                self._session_conn.terminate()
            self._session_conn = None
        if self.single is not None:
            await self.single.release_all()


@dataclass(slots=True)
class FencedOutbox:
    """The dispatcher's view of the store's outbox under the dispatcher lease (the OutboxStore protocol).

    Reads pass through; every delivery state change carries the term's fence, and `claim` (made right
    before each send) refuses unless the lease is held and sure not to have expired. Without a term,
    or after it ended, every change raises LeaseLost.
    """

    outbox: Outbox
    term: Term | None = None
    progress: float = field(default_factory=time.monotonic)  # the dispatcher loop's last store call

    def _fence(self) -> Fence:
        term = self.term
        if term is None or term.state is not TermState.LEADING:
            raise LeaseLost("this instance does not hold the dispatcher lease")
        return term.fence

    def _turn(self) -> None:
        self.progress = time.monotonic()

    async def unplanned(self, limit: int) -> list[OutboxMessage]:
        self._turn()
        return await self.outbox.unplanned(limit)

    async def plan(self, routes: Mapping[int, Sequence[str]], now: float) -> None:
        self._turn()
        await self.outbox.plan(routes, now, fence=self._fence())

    async def due(self, sink: str, now: float, limit: int) -> list[OutboxMessage]:
        self._turn()
        return await self.outbox.due(sink, now, limit)

    async def claim(self, seqs: Sequence[int], sink: str) -> None:
        fence = self._fence()
        await self.outbox.claim(seqs, sink, fence=fence)
        # The claim was valid when it committed; a send must also start before the lease can have
        # expired (this process may have been frozen in between), or a new holder may be sending too.
        if self.term is None or not self.term.valid:
            raise LeaseLost(f"the dispatcher lease (epoch {fence.epoch}) may have expired: not sending")

    async def delivered_many(self, acknowledged: Sequence[tuple[int, str]], now: float) -> None:
        await self.outbox.delivered_many(acknowledged, now, fence=self._fence())

    async def failed(self, seq: int, sink: str, error: str, next_attempt_at: float | None) -> None:
        await self.outbox.failed(seq, sink, error, next_attempt_at, fence=self._fence())

    async def failed_many(self, seqs: Sequence[int], sink: str, error: str, next_attempt_at: float | None) -> None:
        await self.outbox.failed_many(seqs, sink, error, next_attempt_at, fence=self._fence())

    async def deliveries(self, seq: int) -> list[Delivery]:
        return await self.outbox.deliveries(seq)

    async def counts(self) -> dict[str, int]:
        self._turn()
        return await self.outbox.counts()


class SingleInstance:
    """SQLite: one instance per store file, enforced with a lock file beside it."""

    def __init__(self, db_path: str) -> None:
        self.path = Path(db_path + ".lock") if db_path != ":memory:" else None
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the store or raise AlreadyRunning naming the other process."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another depositwatch instance (pid {other}) is running on the SQLite store "
                f"{self.path.with_suffix('')}; "
                "SQLite runs a single instance: use PostgreSQL to run several"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    async def release_all(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_leadership(store: SqlStore, ttl: float, password: str | None = None) -> Leadership:
    """Leadership over this store: PostgreSQL shares it among instances; SQLite locks the store file
    (AlreadyRunning when another instance has it) and then takes every lease at once."""
    if store.dialect == "postgres":
        return Leadership(store.leases, ttl, dsn=store.target, password=password)
    single = SingleInstance(store.target)
    single.acquire()
    leadership = Leadership(store.leases, ttl, exclusive=True)
    leadership.single = single
    return leadership


@dataclass(slots=True)
class HeldDispatcher:
    """The dispatcher lease held by a process that delivers on its own (`alerts deliver`)."""

    leadership: Leadership
    outbox: FencedOutbox
    keeper: asyncio.Task[None]

    async def release_all(self) -> None:
        """Stop renewing and give the lease back."""
        self.keeper.cancel()
        await asyncio.gather(self.keeper, return_exceptions=True)
        await self.leadership.release_all()


async def take_dispatcher(store: SqlStore, password: str | None = None, ttl: float = 10.0) -> HeldDispatcher:
    """The right to deliver alerts from this store, for a dispatcher running outside the daemon.

    Raises AlreadyRunning when the daemon (or another dispatcher) delivers from the same store: two
    dispatchers would send every message twice (same keys, but twice the noise).
    """
    leadership = open_leadership(store, ttl, password)
    try:
        term = await leadership.acquire("dispatcher")
    except BaseException:
        await leadership.release_all()
        raise
    if term is None:
        await leadership.release_all()
        raise AlreadyRunning("another instance delivers alerts from this PostgreSQL store (the daemon?)")
    outbox = FencedOutbox(store.outbox, term)
    keeper = asyncio.create_task(leadership.hold(term, lambda: outbox.progress, window=max(ttl, 60.0)))
    return HeldDispatcher(leadership, outbox, keeper)
