"""Crash suite: the daemon and replay killed with SIGKILL at random points, restarted each time.

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
import contextlib
import functools
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from depositwatch.devnet import Anvil
from depositwatch.devnet import reorg as anvil_reorg
from depositwatch.replay import run_id
from depositwatch.store import Scope
from tests.btcnode import BitcoinRegtestServer
from tests.proof.faultproxy import Fault, FaultProxy
from tests.proof.harness import (
    EVM_CHAIN_ID,
    FULL,
    SEED,
    AlertFigures,
    Book,
    BtcTraffic,
    EvmTraffic,
    LeaseHolder,
    Proc,
    Runner,
    Want,
    btc_book,
    btc_chain_toml,
    btc_final_wants,
    check_alerts,
    check_alerts_after_reorgs,
    check_store,
    check_store_after_reorgs,
    config_toml,
    cursor_at,
    evm_book,
    evm_chain_toml,
    form_param,
    import_book,
    jittery,
    last_events,
    lease_holder,
    report,
    resolve_ids,
    settled,
    store_view,
    until_done,
)
from tests.receivers import Receiver
from tests.util import eventually, within

# Kills per suite: (CI, full).
LIVE_EVM_KILLS = (14, 150)
LIVE_BTC_KILLS = (8, 80)
REPLAY_KILLS = (8, 60)
REPLAY_BLOCKS = (130, 900)

EVM_FETCH_METHODS = ("eth_getLogs", "eth_getBlockReceipts")


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


# --- the live daemon on anvil ------------------------------------------------------------------------


@form_param(timeout_ci=170, timeout_full=3600)
async def test_live_daemon_on_anvil_killed_at_random_points_loses_and_repeats_nothing(
    form: str, tmp_path: Path, pg_url: str
) -> None:
    rng = random.Random(SEED)
    book = evm_book()
    runner = Runner(tmp_path, "daemon")
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node:
        # Transactions wait in the pool a moment, so the pending watcher sees many of them first (ETH
        # and token calls): their alerts start there and must stay one each through every kill.
        traffic = EvmTraffic(node, book, random.Random(rng.random()), pending=0.3)
        start = await traffic.setup()
        async with (
            FaultProxy(node.http_url) as proxy,
            Receiver(jittery(random.Random(rng.random()))) as receiver,
        ):
            chain = evm_chain_toml(proxy.url, token=traffic.token, start=start, batch_blocks=3, pending_tokens=True)
            config = await write_config(tmp_path, pg_url, book, chain, receiver.url)
            killer = Killer(
                rng,
                proxy=proxy,
                fetch_methods=EVM_FETCH_METHODS,
                receiver=receiver,
                pg_url=pg_url,
                cursor_like="live:eth",
            )
            began = time.monotonic()
            async with Background(traffic.run, runner) as background:
                trials = await kill_runs(runner, config, killer.schedule(n(LIVE_EVM_KILLS)), killer.kill)
                await background.stop()
                await node.mine(3)  # every match reaches its confirmation depth
                tip = await traffic.tip()
                last = await finish_live(runner, config, pg_url, "live:eth", tip, receiver, traffic.wants)
            hashes = await traffic.hashes(start - 1, tip[0])
            figures, stored = await check_live(receiver, pg_url, "live:eth", traffic.wants, hashes, start, tip)
    crash_report(
        f"crash: live daemon on anvil and PostgreSQL ({form}, seed {SEED})",
        trials,
        killer.points,
        began,
        chain_line(traffic),
        last,
        *outcome_lines(figures, stored, tip),
    )


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
    await eventually(lambda: _caught_up(store_url, cursor, tip), 90, "the restarted daemon to reach the tip")
    taken = resolve_ids((await store_view(store_url, cursor, Scope.live())).matches, wants)
    # Messages of one address go out one at a time, in order, so a backlog left by many kills drains
    # at the receiver's pace: wait while it moves, fail if it stalls.
    alerts = {w.id for w in wants if w.alert}
    everything = {w.id for w in wants}
    backlog = len(alerts - {b["id"] for b in _bodies(receiver, "detected")})
    seconds = await until_done(
        lambda: len(alerts & {b["id"] for b in _bodies(receiver, "detected")}), len(alerts), "alerts"
    )
    seconds += await until_done(
        lambda: len(everything & {b["id"] for b in _bodies(receiver, "confirmed")}), len(everything), "confirmations"
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


def _bodies(receiver: Receiver, event: str) -> list[dict[str, Any]]:
    return [b for b in (r.json() for r in receiver.accepted) if b["event"] == event]


async def _caught_up(store_url: str, cursor: str, tip: tuple[int, str]) -> bool:
    return await cursor_at(store_url, cursor) == tip


# --- the live daemon on the Bitcoin regtest stand-in ----------------------------------------------------


@form_param(timeout_ci=120, timeout_full=3600)
async def test_live_daemon_on_bitcoin_killed_at_random_points_loses_and_repeats_nothing(
    form: str, tmp_path: Path, sqlite_url: str
) -> None:
    rng = random.Random(SEED + 1)
    book = btc_book()
    runner = Runner(tmp_path, "btcd")
    async with BitcoinRegtestServer() as node:
        traffic = BtcTraffic(node.chain, book, random.Random(rng.random()))
        start = traffic.setup()
        async with (
            FaultProxy(node.url) as proxy,
            Receiver(jittery(random.Random(rng.random()))) as receiver,
        ):
            chain = btc_chain_toml(node, proxy.url, start=start)
            config = await write_config(tmp_path, sqlite_url, book, chain, receiver.url)
            killer = Killer(rng, proxy=proxy, fetch_methods=("getblock",), receiver=receiver)
            began = time.monotonic()
            async with Background(traffic.run, runner) as background:
                trials = await kill_runs(runner, config, killer.schedule(n(LIVE_BTC_KILLS)), killer.kill)
                await background.stop()
                node.chain.mine(3)
                tip = traffic.tip()
                last = await finish_live(runner, config, sqlite_url, "live:btc", tip, receiver, traffic.wants)
            hashes = traffic.hashes(start - 1, tip[0])
            figures, stored = await check_live(receiver, sqlite_url, "live:btc", traffic.wants, hashes, start, tip)
    mempool_first = sum(1 for b in _bodies(receiver, "detected") if b["mempool"])
    crash_report(
        f"crash: live daemon on the Bitcoin regtest stand-in and SQLite, mempool on ({form}, seed {SEED + 1})",
        trials,
        killer.points,
        began,
        chain_line(traffic, f" ({mempool_first} first seen in the mempool)"),
        last,
        *outcome_lines(figures, stored, tip),
    )


# --- replay --------------------------------------------------------------------------------------------


@form_param(timeout_ci=150, timeout_full=3600)
async def test_replay_killed_and_rerun_until_done_outputs_exactly_the_expected_matches(
    form: str, tmp_path: Path, pg_url: str
) -> None:
    """`depositwatch replay --output FILE --send-alerts`, killed and run again until it finishes.

    The output file is opened for appending and a resumed run first writes again what earlier runs
    committed, so the file holds every run's lines; the last run's lines (from the file's size before it
    started) must be exactly the expected matches, once each.
    """
    rng = random.Random(SEED + 2)
    book = evm_book()
    runner = Runner(tmp_path, "replay")
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node:
        traffic = EvmTraffic(node, book, random.Random(rng.random()))
        first = await traffic.setup()
        while traffic.blocks < n(REPLAY_BLOCKS):
            await traffic.block()
        last, _ = await traffic.tip()
        await node.mine(2)
        async with (
            FaultProxy(node.http_url) as proxy,
            Receiver(jittery(random.Random(rng.random()))) as receiver,
        ):
            # A node a little slower than loopback anvil, so that kills land while the range is worked
            # through (the full form's longer range needs it slower still); later runs only deliver.
            proxy.set(Fault("delay", seconds=0.03 if FULL else 0.005))
            chain = evm_chain_toml(proxy.url, token=traffic.token, start=first, batch_blocks=2)
            config = await write_config(tmp_path, pg_url, book, chain, receiver.url)
            output = tmp_path / "matches.jsonl"
            argv = ["--config", str(config), "replay", "--chain", "eth", "--from", str(first), "--to", str(last)]
            argv += ["--output", str(output), "--send-alerts"]
            killer = Killer(
                rng,
                proxy=proxy,
                fetch_methods=EVM_FETCH_METHODS,
                receiver=receiver,
                pg_url=pg_url,
                cursor_like="replay:%",
                random_window=(1.5, 4.5),
            )
            plan = killer.schedule(n(REPLAY_KILLS))
            trials: list[Trial] = []
            offsets: list[int] = []
            began = time.monotonic()
            try:
                while True:
                    offsets.append(output.stat().st_size if output.exists() else 0)
                    proc = runner.spawn(*argv)
                    if len(trials) >= len(plan):
                        code = await proc.wait(120)
                        trials.append(Trial(len(trials) + 1, "none", False, time.monotonic() - proc.started, "", code))
                        break
                    trial = await killer.kill(proc, plan[len(trials)], len(trials) + 1)
                    trials.append(trial)
                    if trial.exited is not None:
                        break
                final = runner.procs[-1]
                # The last run finishes its range, then drains the outbox for up to 60 s: it exits 0 when
                # the outbox settled, 1 when alerts are still pending, saying how many. They stay in the
                # outbox; a dispatcher delivers them: here `alerts deliver --until-empty`, as an operator
                # without a daemon would.
                code = trials[-1].exited
                assert code in (0, 1), final.tail()
                said = "still pending in the outbox" in final.text()
                assert said == (code == 1), final.tail()
                wants = [w for w in traffic.wants if first <= w.height <= last]
                alerts = {w.id for w in wants if w.alert}
                left = len(alerts - {b["id"] for b in _bodies(receiver, "detected")})
                assert code == 1 or not left, f"exit 0 with {left} alerts undelivered\n{final.tail()}"
                if code:
                    deliver = runner.spawn("--config", str(config), "alerts", "deliver", "--until-empty")
                    assert await deliver.wait(900) == 0, deliver.tail()
            finally:
                runner.close()
            figures = check_alerts(receiver, wants, mode="replay")
            rid = run_id("eth", first, last, str(EVM_CHAIN_ID))
            scope = Scope.replay(rid, True)
            view = await store_view(pg_url, scope.name, scope)
            tip = (last, (await traffic.hashes(last, last))[last])
            stored = check_store(view, wants, await traffic.hashes(first - 1, last), first - 1, tip)
            hashes = await traffic.hashes(first, last)
    data = output.read_bytes()
    last_run = check_replay_output(data[offsets[-1] :], wants, hashes)
    whole = file_figures(data)
    report(
        f"crash: replay on anvil and PostgreSQL, --send-alerts ({form}, seed {SEED + 2})",
        [
            landed_line(trials, killer.points, time.monotonic() - began) + f"; {len(trials)} runs in all",
            f"range {first}..{last}: {traffic.blocks} blocks, {len(wants)} expected matches, "
            f"{sum(w.alert for w in wants)} alerts",
            f"last run's output: {last_run} lines = the expected matches, once each, every field checked; "
            f"{left} alerts undelivered when it exited {code}"
            + (", delivered afterwards by `alerts deliver --until-empty`" if code else ""),
            f"whole file: {whole['lines']} lines from {len(offsets)} runs, {whole['distinct']} distinct, "
            f"{whole['torn']} torn (a killed run's unfinished line, glued to the next run's first)",
            *outcome_lines(figures, stored, tip),
            *[t.line() for t in trials],
        ],
    )


def check_replay_output(data: bytes, wants: list[Want], hashes: dict[int, str]) -> int:
    """The lines of one complete run: every expected match once, nothing else, the fields right."""
    assert data.endswith(b"\n"), "the last run's output does not end with a complete line"
    lines = [json.loads(line) for line in data.decode().splitlines()]
    got = Counter((line["kind"], line["txid"].lower(), line["index"]) for line in lines)
    expected = Counter(w.triple for w in wants)
    assert got == expected, (
        f"replay output differs: missing {list(expected - got)[:5]}, extra {list(got - expected)[:5]}"
    )
    by_triple = {w.triple: w for w in wants}
    for line in lines:
        want = by_triple[(line["kind"], line["txid"].lower(), line["index"])]
        assert int(line["amount"]) == want.amount, (line, want)
        assert line["block_height"] == want.height and line["block_hash"] == hashes[want.height], (line, want)
        assert line["address"].lower()[2:] == want.key, (line, want)
    return len(lines)


def file_figures(data: bytes) -> dict[str, int]:
    lines = data.decode(errors="replace").splitlines()
    torn = 0
    distinct = set()
    for line in lines:
        try:
            parsed = json.loads(line)
        except ValueError:
            torn += 1
            continue
        distinct.add((parsed["kind"], parsed["txid"], parsed["index"]))
    return {"lines": len(lines), "distinct": len(distinct), "torn": torn}


# --- two daemons on one PostgreSQL store: the leader killed, during failovers too ------------------

FAILOVER_KILLS = (9, 90)
FAILOVER_TTL = 3.0


async def _holder_proc(pg_url: str, lease: str, procs: list[Proc], timeout: float = 60.0) -> tuple[Proc, int]:
    """The running daemon that holds `lease` now, and its epoch (waits for a takeover in progress)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await lease_holder(pg_url, lease)
        if found is not None:
            for proc in procs:
                if proc.alive and proc.popen.pid == found.pid:
                    return proc, found.epoch
        await asyncio.sleep(0.02)
    raise AssertionError(f"no running daemon holds {lease}:\n" + "\n".join(p.tail(10) for p in procs))


async def _taken_over(pg_url: str, lease: str, epoch: int, timeout: float = 60.0) -> tuple[LeaseHolder, float]:
    """Wait until `lease` moved past `epoch`; the new holder and the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        found = await lease_holder(pg_url, lease)
        if found is not None and found.epoch > epoch:
            return found, time.monotonic() - began
        await asyncio.sleep(0.02)
    raise AssertionError(f"{lease} was not taken over from epoch {epoch} within {timeout} s")


def _replenish(procs: list[Proc], runner: Runner, config: Path) -> list[Proc]:
    """The instances still running, and fresh ones up to two; none may have ended but by our SIGKILL
    (a woken leader, fenced out, stands by: it does not crash)."""
    for proc in procs:
        assert proc.alive or proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}:\n{proc.tail()}"
    running = [p for p in procs if p.alive]
    return running + [runner.daemon(config) for _ in range(2 - len(running))]


@form_param(timeout_ci=240, timeout_full=3600)
async def test_leader_failover_on_postgresql_killed_at_random_points_loses_and_repeats_nothing(
    form: str, tmp_path: Path, pg_url: str
) -> None:
    """Two daemons on one PostgreSQL schema; the leader of the chain (or of the dispatcher, for a kill
    in a delivery) is SIGKILLed at the usual points, and at `failover`: the leader killed, then the
    instance that takes over killed right after its takeover, before or while it commits its first
    blocks; at `freeze` the leader is stopped with SIGSTOP until the other took over, then woken (it
    must commit and send nothing more, and stand by). A fresh instance is started after each kill, so
    two always run. At the end the alert set, the store and the cursor are checked exactly as for a
    single daemon, and each takeover's time is reported (a killed holder's session is gone, so nobody
    waits for its lease to expire; a frozen one's is not, so the lease must expire)."""
    rng = random.Random(SEED + 3)
    book = evm_book()
    runner = Runner(tmp_path, "daemon")
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node:
        traffic = EvmTraffic(node, book, random.Random(rng.random()))
        start = await traffic.setup()
        async with (
            FaultProxy(node.http_url) as proxy,
            Receiver(jittery(random.Random(rng.random()))) as receiver,
        ):
            chain = evm_chain_toml(proxy.url, token=traffic.token, start=start, batch_blocks=3)
            config = await write_config(tmp_path, pg_url, book, chain, receiver.url, lease_ttl=FAILOVER_TTL)
            killer = Killer(
                rng,
                proxy=proxy,
                fetch_methods=EVM_FETCH_METHODS,
                receiver=receiver,
                pg_url=pg_url,
                cursor_like="live:eth",
            )
            points = [p for p in killer.points if p != "start"] + ["failover", "freeze"]
            plan = shuffled_plan(points, n(FAILOVER_KILLS), rng)
            trials: list[Trial] = []
            takeovers: list[float] = []
            freezes: list[float] = []
            began = time.monotonic()
            async with Background(traffic.run, runner) as background:
                procs = [runner.daemon(config), runner.daemon(config)]
                for number, point in enumerate(plan, start=1):
                    for proc in procs:  # a standby still starting cannot take over yet
                        await proc.wait_ready()
                    lease = "dispatcher" if point == "delivery" else "chain:eth"
                    leader, epoch = await _holder_proc(pg_url, lease, procs)
                    if point == "freeze":  # SIGSTOP: its session lives on, so the lease must expire
                        leader.popen.send_signal(signal.SIGSTOP)
                        _, took = await _taken_over(pg_url, lease, epoch)
                        freezes.append(took)
                        await asyncio.sleep(rng.uniform(0.0, 1.0))
                        leader.popen.send_signal(signal.SIGCONT)  # wakes fenced out, and stands by
                        after = time.monotonic() - leader.started
                        trials.append(Trial(number, "freeze", True, after, f"(taken over {took:.2f}s after SIGSTOP)"))
                        procs = _replenish(procs, runner, config)
                        continue
                    if point == "failover":
                        trial = await killer.kill(leader, "random", number)
                        _, took = await _taken_over(pg_url, lease, epoch)
                        takeovers.append(took)
                        successor, epoch = await _holder_proc(pg_url, lease, procs)
                        await asyncio.sleep(rng.uniform(0.0, 0.3))
                        successor.kill()
                        trial = Trial(number, "failover", True, trial.after, f"(successor killed {took:.2f}s in)")
                    else:
                        trial = await killer.kill(leader, point, number)
                        assert trial.exited is None, f"the daemon exited by itself:\n{leader.tail()}"
                    procs = _replenish(procs, runner, config)
                    _, took = await _taken_over(pg_url, lease, epoch)
                    if point != "failover":  # there, a fresh instance's start-up is in the time
                        takeovers.append(took)
                    trials.append(trial)
                await background.stop()
                await node.mine(3)  # every match reaches its confirmation depth
                tip = await traffic.tip()
                for proc in procs:  # a clean stop gives the leases back: the last run takes them at once
                    await proc.wait_ready()  # a start-up cut by SIGTERM is no clean stop
                    assert await proc.terminate() == 0, proc.tail()
                last = await finish_live(runner, config, pg_url, "live:eth", tip, receiver, traffic.wants)
            hashes = await traffic.hashes(start - 1, tip[0])
            figures, stored = await check_live(receiver, pg_url, "live:eth", traffic.wants, hashes, start, tip)
    ordered = sorted(takeovers)
    crash_report(
        f"crash: leader failover, two daemons on anvil and PostgreSQL ({form}, seed {SEED + 3})",
        trials,
        points,
        began,
        f"takeovers after a kill: {len(ordered)}, median {ordered[len(ordered) // 2]:.2f}s, "
        f"max {ordered[-1]:.2f}s (lease_ttl {FAILOVER_TTL:g}s: a dead holder's session frees the lease at once)",
        f"takeovers after a SIGSTOP: {len(freezes)}, max {max(freezes, default=0):.2f}s "
        f"(bound: lease_ttl + {min(1.0, FAILOVER_TTL / 4):g}s after the last renewal)",
        chain_line(traffic),
        last,
        *outcome_lines(figures, stored, tip),
    )


# --- the live daemon killed while it handles reorgs -----------------------------------------------------
#
# Blocks are made as above, and reorgs of 1 to 6 blocks (deeper than the 3 confirmations, so confirmed
# alerts are retracted too) now and then, and at the `reorg` kill point: the daemon is up and following,
# a reorg is made, and the daemon is killed a moment later, while it unwinds the orphaned blocks,
# retracts and applies the new branch. At the end the oracle is the final chain: every transfer in it
# alerted (last message `confirmed`), every announced transfer gone from it retracted under its id,
# no idempotency key with two bodies, the store's live matches exactly the final chain's, the cursor at
# the final tip.

REORG_EVM_KILLS = (8, 80)
REORG_BTC_KILLS = (8, 80)
REORG_SHARE = 0.12  # of blocks followed by a reorg, besides those made at the `reorg` kill point
REORG_DEPTH = 6
DROP_GRACE = 5.0  # the mempool watchers' wait before they retract a transaction gone from the pool (60 s by default)


class Reorgs:
    """Traffic and reorgs on one chain, one at a time (a reorg never lands inside a block's making)."""

    def __init__(self, traffic: Any, make: Callable[[int], Awaitable[None]], rng: random.Random, start: int) -> None:
        self.traffic = traffic
        self.make = make  # replaces the last `depth` blocks
        self.rng = rng
        self.start = start
        self.lock = asyncio.Lock()
        self.depths: Counter[int] = Counter()

    async def height(self) -> int:
        tip = self.traffic.tip()
        return int((await tip if not isinstance(tip, tuple) else tip)[0])

    async def reorg(self) -> int:
        """Make one reorg of 1..REORG_DEPTH blocks above the start; returns its depth (0: none yet)."""
        async with self.lock:
            depth = min(self.rng.randint(1, REORG_DEPTH), await self.height() - self.start + 1)
            if depth < 1:
                return 0
            await self.make(depth)
            self.depths[depth] += 1
            return depth

    async def run(self, stop: asyncio.Event, gap: tuple[float, float] = (0.05, 0.3)) -> None:
        while not stop.is_set():
            async with self.lock:
                await self.traffic.block()
            if self.rng.random() < REORG_SHARE:
                await self.reorg()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(*gap))


def reorg_killer(rng: random.Random, receiver: Receiver, count: int) -> tuple[Killer, list[str], list[str]]:
    """A killer at the usual points and at `reorg`; those points, and `count` of them in a random order."""
    killer = Killer(rng, receiver=receiver)
    points = [*killer.points, "reorg"]
    return killer, points, shuffled_plan(points, count, rng)


async def kill_in_reorg(killer: Killer, reorgs: Reorgs, proc: Proc, point: str, number: int) -> Trial:
    """The usual kill points, and `reorg`: once the daemon is up and following, a reorg, then the kill."""
    if point != "reorg":
        return await killer.kill(proc, point, number)
    rng = killer.rng
    await proc.wait_ready()
    await _within(lambda: False, rng.uniform(0.2, 1.2), proc)  # let it follow the chain a moment
    depth = await reorgs.reorg()
    await _within(lambda: False, rng.uniform(0.0, 0.4), proc)
    after = time.monotonic() - proc.started
    landed = proc.alive and depth > 0
    proc.kill()
    return Trial(number, point, landed, after, f"(depth {depth})")


async def finish_after_reorgs(
    runner: Runner,
    config: Path,
    store_url: str,
    cursor: str,
    tip: tuple[int, str],
    receiver: Receiver,
    final: list[Want],
    gone: list[Want],
) -> str:
    """Start once more, unkilled: wait for the tip and for every id's last message; stop with SIGTERM."""
    final_run = runner.daemon(config)
    await final_run.wait_ready()
    await eventually(lambda: _caught_up(store_url, cursor, tip), 90, "the restarted daemon to reach the tip")
    ids = {w.id for w in final} | {w.id for w in gone}
    try:
        # A transfer the daemon saw only in the mempool, then mined and dropped by a reorg while it was
        # down, is retracted by the mempool watcher once it has been missing for its drop grace:
        # a stall shorter than that would be no stall.
        seconds = await until_done(lambda: settled(receiver, final, gone), len(ids), "alerts", stall=DROP_GRACE + 30)
    except AssertionError as stuck:
        raise AssertionError(f"{stuck}: {unsettled(receiver, final, gone)}") from None

    async def drained() -> bool:
        view = await store_view(store_url, cursor, Scope.live())
        return all(m.status not in ("new", "pending") for m in view.outbox)

    await eventually(drained, 60, "the outbox to drain")
    assert await final_run.terminate() == 0, final_run.tail()
    return f"last run: tip reached, every id in its final state after {seconds:.0f}s; SIGTERM, exit 0"


def unsettled(receiver: Receiver, final: list[Want], gone: list[Want]) -> list[str]:
    """The ids not in their final state, each with its transfer and the events received, by rev."""
    final_ids = {w.id for w in final}
    events: dict[str, list[tuple[int, str]]] = {}
    for body in (r.json() for r in receiver.accepted):
        events.setdefault(body["id"], []).append((int(body["idempotency_key"].rsplit(":", 1)[1]), body["event"]))
    last = last_events(r.json() for r in receiver.accepted)
    found = [
        f"final {w.triple} at {w.height}: {sorted(events.get(w.id, []))}"
        for w in final
        if last.get(w.id) != "confirmed"
    ]
    found += [
        f"gone {w.triple} at {w.height}: {sorted(events.get(w.id, []))}"
        for w in gone
        if w.id not in final_ids and last.get(w.id, "retracted") != "retracted"
    ]
    return found


async def check_after_reorgs(
    receiver: Receiver,
    store_url: str,
    cursor: str,
    final: list[Want],
    gone: list[Want],
    hashes: dict[int, str],
    start: int,
    tip: tuple[int, str],
) -> tuple[AlertFigures, dict[str, int]]:
    """The alerts acknowledged and the live store, against the final chain's matches and the orphaned ones."""
    figures = check_alerts_after_reorgs(receiver, final, gone, mode="live")
    view = await store_view(store_url, cursor, Scope.live())
    return figures, check_store_after_reorgs(view, final, gone, hashes, start - 1, tip)


def reorg_lines(reorgs: Reorgs, final: list[Want], gone: list[Want], figures: AlertFigures) -> list[str]:
    final_ids = {w.id for w in final}
    left = {w.id for w in gone} - final_ids
    return [
        f"reorgs: {sum(reorgs.depths.values())} (by depth {dict(sorted(reorgs.depths.items()))}); "
        f"{len(final)} matches in the final chain, {sum(w.alert for w in final)} alerts; {len(left)} transfers "
        f"orphaned for good, {figures.events['retracted']} retractions delivered",
    ]


@form_param(timeout_ci=200, timeout_full=3600)
async def test_live_daemon_on_anvil_killed_during_reorgs_retracts_and_loses_nothing(
    form: str, tmp_path: Path, pg_url: str
) -> None:
    rng = random.Random(SEED + 4)
    book = evm_book()
    runner = Runner(tmp_path, "daemon")
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node:
        traffic = EvmTraffic(node, book, random.Random(rng.random()))
        start = await traffic.setup()
        gone: list[Want] = []

        async def replace(depth: int) -> None:
            """`anvil_reorg`: the last `depth` blocks replaced by as many empty ones; their transfers are gone."""
            fork = await node.block_number() - depth
            await anvil_reorg(node.w3, depth)
            gone.extend(w for w in traffic.wants if w.height > fork)
            traffic.wants = [w for w in traffic.wants if w.height <= fork]

        reorgs = Reorgs(traffic, replace, random.Random(rng.random()), start)
        async with Receiver(jittery(random.Random(rng.random()))) as receiver:
            chain = evm_chain_toml(
                node.http_url, token=traffic.token, start=start, batch_blocks=3, drop_grace=DROP_GRACE
            )
            config = await write_config(tmp_path, pg_url, book, chain, receiver.url)
            killer, points, plan = reorg_killer(rng, receiver, n(REORG_EVM_KILLS))
            began = time.monotonic()
            async with Background(reorgs.run, runner) as background:
                trials = await kill_runs(runner, config, plan, functools.partial(kill_in_reorg, killer, reorgs))
                await background.stop()
                await node.mine(3)  # every match reaches its confirmation depth
                tip = await traffic.tip()
                last = await finish_after_reorgs(runner, config, pg_url, "live:eth", tip, receiver, traffic.wants, gone)
            hashes = await traffic.hashes(start - 1, tip[0])
            figures, stored = await check_after_reorgs(
                receiver, pg_url, "live:eth", traffic.wants, gone, hashes, start, tip
            )
    crash_report(
        f"crash: live daemon on anvil and PostgreSQL, killed during reorgs ({form}, seed {SEED + 4})",
        trials,
        points,
        began,
        f"chain: {traffic.blocks} blocks made, {traffic.transactions} transactions ({dict(traffic.kinds)})",
        *reorg_lines(reorgs, traffic.wants, gone, figures),
        last,
        *reorg_outcome_lines(figures, stored, tip),
    )


def reorg_outcome_lines(figures: AlertFigures, stored: dict[str, int], tip: tuple[int, str]) -> list[str]:
    return [
        f"receiver: {figures.deliveries} acknowledged deliveries, {figures.alerts} alert ids detected; every "
        f"final-chain id last `confirmed`, every orphaned one announced last `retracted`; {figures.repeats} "
        f"repeats, each with the same key and body; events {dict(figures.events)}",
        f"store: cursor at the final tip {tip[0]}, {stored['blocks']} blocks with the final chain's hashes, "
        f"{stored['matches']} live matches = the final chain's, once each, {stored['retracted']} retracted; "
        f"{stored['outbox']} outbox messages, all delivered",
    ]


@form_param(timeout_ci=200, timeout_full=3600)
async def test_live_daemon_on_bitcoin_killed_during_reorgs_retracts_and_loses_nothing(
    form: str, tmp_path: Path, sqlite_url: str
) -> None:
    rng = random.Random(SEED + 5)
    book = btc_book()
    runner = Runner(tmp_path, "btcd")
    async with BitcoinRegtestServer() as node:
        chain = node.chain
        traffic = BtcTraffic(chain, book, random.Random(rng.random()))
        start = traffic.setup()
        kept = Counter[str]()
        choose = random.Random(rng.random())
        seen: dict[str, Want] = {}  # every match any chain state made (only a reorg orphans a block)

        async def replace(depth: int) -> None:
            """A competing branch one block longer. Either the orphaned transactions wait in the mempool
            and are mined anew in its second block (same ids, other heights), or they are dropped (gone)."""
            seen.update((w.id, w) for w in btc_final_wants(chain, book, start))
            if choose.random() < 0.5:
                chain.reorg(depth)
                kept["mined anew"] += 1
            else:
                chain.invalidate(chain.active[chain.height - depth + 1])
                chain.mempool.clear()
                chain.mine(depth + 1)
                kept["dropped"] += 1

        reorgs = Reorgs(traffic, replace, random.Random(rng.random()), start)
        async with Receiver(jittery(random.Random(rng.random()))) as receiver:
            chain_toml = btc_chain_toml(node, node.url, start=start, drop_grace=DROP_GRACE)
            config = await write_config(tmp_path, sqlite_url, book, chain_toml, receiver.url)
            killer, points, plan = reorg_killer(rng, receiver, n(REORG_BTC_KILLS))
            began = time.monotonic()
            async with Background(reorgs.run, runner) as background:
                trials = await kill_runs(runner, config, plan, functools.partial(kill_in_reorg, killer, reorgs))
                await background.stop()
                chain.mine(3)
                tip = traffic.tip()
                final = btc_final_wants(chain, book, start)
                final_ids = {w.id for w in final}
                # Not `traffic.wants`: a sweep of an output whose first sweep was orphaned is not in it.
                gone = [w for w in seen.values() if w.id not in final_ids]
                last = await finish_after_reorgs(runner, config, sqlite_url, "live:btc", tip, receiver, final, gone)
            hashes = traffic.hashes(start - 1, tip[0])
            figures, stored = await check_after_reorgs(
                receiver, sqlite_url, "live:btc", final, gone, hashes, start, tip
            )
    crash_report(
        f"crash: live daemon on the Bitcoin stand-in and SQLite, killed during reorgs ({form}, seed {SEED + 5})",
        trials,
        points,
        began,
        f"chain: {traffic.blocks} blocks made, {traffic.transactions} transactions ({dict(traffic.kinds)}); "
        f"orphaned transactions {dict(kept)}",
        *reorg_lines(reorgs, final, gone, figures),
        last,
        *reorg_outcome_lines(figures, stored, tip),
    )
