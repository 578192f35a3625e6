"""The crash suite's rig (its tests: tests/proof/test_crash_*.py): the daemon and replay killed with
SIGKILL at random points, restarted each time.

Kill points, drawn with a seeded RNG (DEPOSITWATCH_PROOF_SEED, printed):

- `start`: while the process starts (imports, migrations, node checks), after a random delay;
- `random`: at a random instant of a running daemon;
- `fetch`: while a block fetch is under way (the fault proxy holds the fetch's request);
- `commit`: inside the block commit's transaction, after its writes and before COMMIT (the test holds
  the cursor row's lock in PostgreSQL, so the commit waits at its last statement; then the kill);
- `delivery`: while the receiver is answering an alert (it answers some requests slowly);
- `reorg` (the reorg tests): a reorg is made while the daemon follows, and it is killed a moment later.

Blocks with transfers to revoked, late-revoked, active and unwatched addresses, sweeps and a reverted
transfer are produced throughout. At the end: the `detected` alert ids acknowledged equal the expected
set exactly, repeats carry the same idempotency key and body, every block from the start is in the
store with the node's hash, every expected transfer is matched exactly once, the outbox holds one
`detected` message per alert, and the cursor is the node's tip.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from depositwatch.store import Scope
from tests.proof.faultproxy import FaultProxy
from tests.proof.harness import (
    FULL,
    AlertFigures,
    Book,
    Proc,
    Runner,
    Want,
    check_alerts,
    check_store,
    config_toml,
    cursor_at,
    import_book,
    report,
    resolve_ids,
    store_view,
    until_done,
)
from tests.receivers import Receiver
from tests.util import eventually, within

# Kills per suite: (CI, full), and the shape of the runs.
LIVE_EVM_KILLS = (14, 150)
LIVE_BTC_KILLS = (8, 80)
EVM_FETCH_METHODS = ("eth_getLogs", "eth_getBlockReceipts")
FAILOVER_KILLS = (9, 90)
FAILOVER_TTL = 3.0
REORG_EVM_KILLS = (8, 80)
REORG_BTC_KILLS = (8, 80)
REORG_SHARE = 0.12  # of blocks followed by a reorg, besides those made at the `reorg` kill point
REORG_DEPTH = 6
DROP_GRACE = 5.0  # the mempool watchers' wait before they retract a transaction gone from the pool (60 s by default)


def n(pair: tuple[int, int]) -> int:
    return pair[1] if FULL else pair[0]


@dataclass
class Trial:
    number: int
    point: str
    landed: bool
    after: float  # seconds from spawn to the kill (or to the exit)
    detail: str = ""
    exited: int | None = None  # the process finished by itself before the kill (a replay's last run)

    def line(self) -> str:
        if self.exited is not None:
            return f"#{self.number:>3} finished by itself (exit {self.exited}) at {self.after:5.2f}s"
        where = self.point if self.landed else f"{self.point} (not reached: killed at random)"
        return f"#{self.number:>3} {where:<42} at {self.after:5.2f}s {self.detail}"


class Killer:
    """Lands a SIGKILL at a chosen point of a running process."""

    def __init__(
        self,
        rng: random.Random,
        *,
        proxy: FaultProxy | None = None,
        fetch_methods: tuple[str, ...] = (),
        receiver: Receiver | None = None,
        pg_url: str | None = None,
        cursor_like: str = "",
        random_window: tuple[float, float] = (1.6, 4.0),
    ) -> None:
        self.rng = rng
        self.proxy = proxy
        self.fetch_methods = fetch_methods
        self.receiver = receiver
        self.pg_url = pg_url
        self.cursor_like = cursor_like
        self.random_window = random_window

    @property
    def points(self) -> list[str]:
        found = ["start", "random"]
        if self.proxy is not None:
            found.append("fetch")
        if self.pg_url is not None:
            found.append("commit")
        if self.receiver is not None:
            found.append("delivery")
        return found

    def schedule(self, count: int) -> list[str]:
        """Every point about as often, in a random order (the first run is never killed in a commit:
        there is no cursor row to hold yet)."""
        points = self.points
        plan = [points[i % len(points)] for i in range(count)]
        self.rng.shuffle(plan)
        if plan and plan[0] == "commit":
            swap = next((i for i, p in enumerate(plan) if p != "commit"), 0)
            plan[0], plan[swap] = plan[swap], plan[0]
        return plan

    async def kill(self, proc: Proc, point: str, number: int, wait: float = 10.0) -> Trial:
        rng = self.rng
        landed = True
        detail = ""
        if point == "start":
            await _within(lambda: False, rng.uniform(0.05, 1.6), proc)
        elif point == "random":
            await _within(lambda: False, rng.uniform(*self.random_window), proc)
        elif point == "fetch":
            assert self.proxy is not None
            arrived = self.proxy.hold(self.fetch_methods)
            landed = await _within(arrived.is_set, wait, proc)
            if landed:
                await asyncio.sleep(rng.uniform(0.0, 0.02))
        elif point == "delivery":
            assert self.receiver is not None
            receiver = self.receiver
            before = len(receiver.requests)  # requests of earlier, killed runs may still be pending

            def delivering() -> bool:
                return any(r.status is None for r in receiver.requests[before:])

            landed = await _within(delivering, wait, proc)
            if landed:
                await asyncio.sleep(rng.uniform(0.0, 0.05))
        elif point == "commit":
            assert self.pg_url is not None
            detail = await self._kill_in_commit(proc, wait)
            landed = detail != ""
        after = time.monotonic() - proc.started
        exited = None
        if proc.alive:
            proc.kill()
        elif proc.returncode != -signal.SIGKILL:
            exited = proc.returncode
        if self.proxy is not None:
            self.proxy.release()
        return Trial(number, point, landed and exited is None, after, detail, exited)

    async def _kill_in_commit(self, proc: Proc, wait: float) -> str:
        """Hold the cursor row locked; when the process's commit waits for it, kill; then let go."""
        assert self.pg_url is not None
        locker = await asyncpg.connect(self.pg_url)
        watcher = await asyncpg.connect(self.pg_url)
        deadline = time.monotonic() + wait
        try:
            while proc.alive and time.monotonic() < deadline:
                async with locker.transaction():
                    held = await locker.fetch(
                        "SELECT name FROM cursors WHERE name LIKE $1 FOR UPDATE", self.cursor_like
                    )
                    if not held:  # the run has not made its cursor yet
                        await asyncio.sleep(0.02)
                        continue

                    async def waiting() -> bool:
                        return bool(
                            await watcher.fetchval(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                " AND wait_event_type = 'Lock' AND query LIKE '%INTO cursors%'"
                            )
                        )

                    if not await _within(waiting, deadline - time.monotonic(), proc):
                        return ""
                    # The commit's transaction has written its rows and waits at its last statement.
                    writing = await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND backend_xid IS NOT NULL"
                    )
                    proc.kill()
                    return "(its transaction had written rows)" if writing else "(waiting)"
            return ""
        finally:
            await locker.close()
            await watcher.close()


async def _within(check: Callable[[], bool | Awaitable[bool]], timeout: float, proc: Proc) -> bool:
    """Whether `check` comes true within `timeout` (False if the process ended meanwhile)."""
    return await within(check, timeout, every=0.005, stop_if=lambda: None if proc.alive else "the process ended")


def landed_line(trials: list[Trial], points: list[str], seconds: float) -> str:
    kills = [t for t in trials if t.exited is None]
    landed = Counter(t.point for t in kills if t.landed)
    return f"{len(kills)} SIGKILLs in {seconds:.0f}s, landed: " + ", ".join(f"{p} {landed[p]}" for p in points)


def shuffled_plan(points: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` kill points, every one about as often, in a random order."""
    plan = [points[i % len(points)] for i in range(count)]
    rng.shuffle(plan)
    return plan


async def write_config(tmp_path: Path, store_url: str, book: Book, chain: str, sink_url: str, **options: Any) -> Path:
    """The book imported into the store, and the daemon's config file written."""
    await import_book(store_url, book)
    config = tmp_path / "config.toml"
    config.write_text(config_toml(store_url, chain, sink_url, **options))
    return config


class Background:
    """`make(stop)` (the chain's traffic) run as a task while the daemons are killed; on leaving, it is
    stopped and cancelled and every process the runner started is closed."""

    def __init__(self, make: Callable[[asyncio.Event], Awaitable[None]], runner: Runner) -> None:
        self.make = make
        self.runner = runner
        self.stopping = asyncio.Event()

    async def __aenter__(self) -> Background:
        self.task = asyncio.create_task(self.make(self.stopping))
        return self

    async def stop(self) -> None:
        """No more traffic: wait for the block being made."""
        self.stopping.set()
        await self.task

    async def __aexit__(self, *exc: object) -> None:
        self.stopping.set()
        self.task.cancel()
        self.runner.close()


async def kill_runs(
    runner: Runner, config: Path, plan: list[str], kill: Callable[[Proc, str, int], Awaitable[Trial]]
) -> list[Trial]:
    """A daemon started for each planned point and killed there; none may exit by itself."""
    trials: list[Trial] = []
    for number, point in enumerate(plan, start=1):
        proc = runner.daemon(config)
        trial = await kill(proc, point, number)
        assert trial.exited is None, f"the daemon exited by itself:\n{proc.tail()}"
        trials.append(trial)
    return trials


def chain_line(traffic: Any, extra: str = "") -> str:
    return (
        f"chain: {traffic.blocks} blocks, {traffic.transactions} transactions ({dict(traffic.kinds)}), "
        f"{len(traffic.wants)} expected matches, {sum(w.alert for w in traffic.wants)} alerts{extra}"
    )


def crash_report(title: str, trials: list[Trial], points: list[str], began: float, *lines: str) -> None:
    """The landed kills, the suite's own lines, then each trial."""
    report(title, [landed_line(trials, points, time.monotonic() - began), *lines, *[t.line() for t in trials]])


async def check_live(
    receiver: Receiver,
    store_url: str,
    cursor: str,
    wants: list[Want],
    hashes: dict[int, str],
    start: int,
    tip: tuple[int, str],
) -> tuple[AlertFigures, dict[str, int]]:
    """The alerts acknowledged and the live store, against the expected matches from `start`."""
    figures = check_alerts(receiver, wants, mode="live")
    view = await store_view(store_url, cursor, Scope.live())
    return figures, check_store(view, wants, hashes, start - 1, tip)


async def finish_live(
    runner: Runner,
    config: Path,
    store_url: str,
    cursor: str,
    tip: tuple[int, str],
    receiver: Receiver,
    wants: list[Want],
) -> str:
    """Start once more, unkilled: wait for the tip, every alert and every confirmation; stop with SIGTERM."""
    final = runner.daemon(config)
    await final.wait_ready()
    await eventually(lambda: caught_up(store_url, cursor, tip), 90, "the restarted daemon to reach the tip")
    taken = resolve_ids((await store_view(store_url, cursor, Scope.live())).matches, wants)
    # Messages of one address go out one at a time, in order, so a backlog left by many kills drains
    # at the receiver's pace: wait while it moves, fail if it stalls.
    alerts = {w.id for w in wants if w.alert}
    everything = {w.id for w in wants}
    backlog = len(alerts - {b["id"] for b in bodies(receiver, "detected")})
    seconds = await until_done(
        lambda: len(alerts & {b["id"] for b in bodies(receiver, "detected")}), len(alerts), "alerts"
    )
    seconds += await until_done(
        lambda: len(everything & {b["id"] for b in bodies(receiver, "confirmed")}), len(everything), "confirmations"
    )
    assert await final.terminate() == 0, final.tail()
    ids = f"; token alerts first seen pending: {taken['pending']} of {taken.total()}" if taken else ""
    return (
        f"last run: tip reached, then {backlog} alerts still undelivered drained in {seconds:.0f}s; SIGTERM, exit 0"
        + ids
    )


def outcome_lines(figures: AlertFigures, stored: dict[str, int], tip: tuple[int, str]) -> list[str]:
    return [
        f"receiver: {figures.deliveries} acknowledged deliveries, {figures.alerts} alerts, each `detected` id "
        f"expected and every expected id detected; {figures.repeats} repeats, each with the same key and body; "
        f"events {dict(figures.events)}",
        f"store: cursor at the node's tip {tip[0]}, {stored['blocks']} blocks with the node's hashes, "
        f"{stored['matches']} matches = the expected ones, once each; one `detected` per alert among "
        f"{stored['outbox']} outbox messages",
    ]


def bodies(receiver: Receiver, event: str) -> list[dict[str, Any]]:
    return [b for b in (r.json() for r in receiver.accepted) if b["event"] == event]


async def caught_up(store_url: str, cursor: str, tip: tuple[int, str]) -> bool:
    return await cursor_at(store_url, cursor) == tip
