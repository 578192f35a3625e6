"""Crash suite, leader failover: two daemons on one PostgreSQL store, the leader killed at random points."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

from depositwatch.devnet import Anvil
from tests.proof.crash import (
    EVM_FETCH_METHODS,
    FAILOVER_KILLS,
    FAILOVER_TTL,
    Background,
    Killer,
    Trial,
    chain_line,
    check_live,
    crash_report,
    finish_live,
    n,
    outcome_lines,
    shuffled_plan,
    write_config,
)
from tests.proof.faultproxy import FaultProxy
from tests.proof.harness import (
    EVM_CHAIN_ID,
    SEED,
    EvmTraffic,
    LeaseHolder,
    Proc,
    Runner,
    evm_book,
    evm_chain_toml,
    form_param,
    jittery,
    lease_holder,
)
from tests.receivers import Receiver


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
