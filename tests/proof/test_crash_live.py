"""Crash suite, live daemons: on anvil with PostgreSQL and on the Bitcoin stand-in with SQLite, killed at
random points (kill points and checks: tests/proof/crash.py)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from depositwatch.devnet import Anvil
from tests.btcnode import BitcoinRegtestServer
from tests.proof.crash import (
    EVM_FETCH_METHODS,
    LIVE_BTC_KILLS,
    LIVE_EVM_KILLS,
    Background,
    Killer,
    bodies,
    chain_line,
    check_live,
    crash_report,
    finish_live,
    kill_runs,
    n,
    outcome_lines,
    write_config,
)
from tests.proof.faultproxy import FaultProxy
from tests.proof.harness import (
    EVM_CHAIN_ID,
    SEED,
    BtcTraffic,
    EvmTraffic,
    Runner,
    btc_book,
    btc_chain_toml,
    evm_book,
    evm_chain_toml,
    form_param,
    jittery,
)
from tests.receivers import Receiver


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
    mempool_first = sum(1 for b in bodies(receiver, "detected") if b["mempool"])
    crash_report(
        f"crash: live daemon on the Bitcoin regtest stand-in and SQLite, mempool on ({form}, seed {SEED + 1})",
        trials,
        killer.points,
        began,
        chain_line(traffic, f" ({mempool_first} first seen in the mempool)"),
        last,
        *outcome_lines(figures, stored, tip),
    )
