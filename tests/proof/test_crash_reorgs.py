"""Crash suite, reorgs: the live daemon killed while the chain reorganises; orphaned alerts are retracted."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from depositwatch.devnet import Anvil
from depositwatch.devnet import reorg as anvil_reorg
from depositwatch.store import Scope
from tests.btcnode import BitcoinRegtestServer
from tests.proof.crash import (
    DROP_GRACE,
    REORG_BTC_KILLS,
    REORG_DEPTH,
    REORG_EVM_KILLS,
    REORG_SHARE,
    Background,
    Killer,
    Trial,
    _within,
    caught_up,
    crash_report,
    kill_runs,
    n,
    shuffled_plan,
    write_config,
)
from tests.proof.harness import (
    EVM_CHAIN_ID,
    SEED,
    AlertFigures,
    BtcTraffic,
    EvmTraffic,
    Proc,
    Runner,
    Want,
    btc_book,
    btc_chain_toml,
    btc_final_wants,
    check_alerts_after_reorgs,
    check_store_after_reorgs,
    evm_book,
    evm_chain_toml,
    form_param,
    jittery,
    last_events,
    settled,
    store_view,
    until_done,
)
from tests.receivers import Receiver
from tests.util import eventually


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
    await eventually(lambda: caught_up(store_url, cursor, tip), 90, "the restarted daemon to reach the tip")
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
