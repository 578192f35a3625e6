"""Fault suite: the running daemon behind fault proxies, one between it and its node (JSON-RPC) and one
between its dispatcher and the webhook receiver.

For every fault: while it lasts, blocks with transfers keep coming; the fault must actually hit
requests; the daemon stays alive; its JSON log has a warning or error naming the failing call (or
the sink's failure); the store never holds a match that was not expected, nor a retraction. When the
fault ends, the cursor reaches the node's tip and every expected alert has been acknowledged. At the
end: the alert ids are exactly the expected ones, repeats are byte-identical, every block is in the
store with the node's hash and every expected transfer is matched exactly once.

A node on another chain is refused at start-up (the daemon exits non-zero saying so); a node that was
down at start-up and comes back on another chain stops that chain with a clear error, the daemon
staying up and /healthz saying which chain failed.

The full form (DEPOSITWATCH_PROOF=full) runs several rounds of every fault in a random order, some
of them intermittent (each request hit with probability one half).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from depositwatch.devnet import Anvil
from depositwatch.store import Scope
from tests.proof.faultproxy import Fault, FaultProxy
from tests.proof.harness import (
    EVM_CHAIN_ID,
    FULL,
    SEED,
    EvmTraffic,
    Proc,
    Runner,
    check_alerts,
    check_matches_subset,
    check_store,
    config_toml,
    cursor_at,
    evm_book,
    evm_chain_toml,
    form_param,
    import_book,
    report,
    store_view,
)
from tests.receivers import Receiver
from tests.util import eventually

ROUNDS = (1, 6)  # CI, full
ANY_CALL = ("eth_getBlockByNumber", "eth_blockNumber", "eth_getLogs", "eth_getBlockReceipts", "eth_chainId")


@dataclass(frozen=True)
class Step:
    name: str
    where: str  # "node" or "sink"
    fault: Fault
    says: tuple[str, ...]  # a warning or error record must contain one of these
    seconds: float = 1.5
    keeps_up: bool = False  # the daemon must reach the tip while the fault lasts


STEPS = (
    Step("hang on eth_getLogs", "node", Fault("hang", frozenset({"eth_getLogs"})), ("eth_getLogs",)),
    Step("connection reset", "node", Fault("reset"), ANY_CALL),
    Step("HTTP 503", "node", Fault("status", frozenset({"eth_getBlockByNumber"}), status=503), ("HTTP 503",)),
    Step("HTTP 429 Retry-After", "node", Fault("status", status=429, retry_after="1"), ("HTTP 429",)),
    Step(
        "body cut short (connection closed)",
        "node",
        Fault("cut", frozenset({"eth_getBlockReceipts"})),
        ("eth_getBlockReceipts",),
    ),
    Step(
        "truncated JSON",
        "node",
        Fault("truncate", frozenset({"eth_getBlockByNumber"})),
        ("eth_getBlockByNumber",),
    ),
    Step("invalid JSON", "node", Fault("invalid_json", frozenset({"eth_blockNumber"})), ("eth_blockNumber",)),
    Step(
        "JSON-RPC error for one call of a batch",
        "node",
        Fault("batch_error", frozenset({"eth_getBlockReceipts"})),
        ("eth_getBlockReceipts for block", "header not found (injected)"),
    ),
    Step("node goes back in height", "node", Fault("behind", lag=4), ("node is behind the cursor",)),
    Step("answers 100 times too large", "node", Fault("pad", factor=100), (), keeps_up=True),
    Step("receiver hangs", "sink", Fault("hang"), ("no answer within",)),
    Step("receiver resets", "sink", Fault("reset"), ("connection failed",)),
    Step("receiver HTTP 500", "sink", Fault("status", status=500), ("HTTP 500",)),
    Step("receiver HTTP 429 Retry-After", "sink", Fault("status", status=429, retry_after="1"), ("HTTP 429",)),
    Step("receiver answer cut short", "sink", Fault("cut"), ("connection failed",)),
    Step(
        "receiver stores it, the answer is lost",
        "sink",
        Fault("forward_then_fail", status=502),
        ("HTTP 502",),
    ),
)


@dataclass
class Outcome:
    step: str
    hits: int
    recovered_in: float
    logged: str
    records: int  # warning and error records while the fault lasted and until recovery


def _text(record: dict[str, Any]) -> str:
    return json.dumps(record)


def _says(proc: Proc, since: int, needles: tuple[str, ...]) -> str | None:
    """The first warning or error record after `since` containing one of `needles`."""
    for record in proc.records()[since:]:
        if record.get("level") in ("warning", "error") and any(n in _text(record) for n in needles):
            return str(record.get("error") or record.get("event"))
    return None


@form_param(timeout_ci=170, timeout_full=3600)
async def test_daemon_rides_out_node_and_receiver_faults(form: str, tmp_path: Path, sqlite_url: str) -> None:
    rng = random.Random(SEED + 10)
    book = evm_book()
    runner = Runner(tmp_path, "daemon")
    outcomes: list[Outcome] = []
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node, Receiver() as receiver:
        traffic = EvmTraffic(node, book, random.Random(rng.random()))
        start = await traffic.setup()
        async with (
            FaultProxy(node.http_url, rng=random.Random(rng.random())) as node_proxy,
            FaultProxy(f"http://127.0.0.1:{receiver.port}", rng=random.Random(rng.random())) as sink_proxy,
        ):
            await import_book(sqlite_url, book)
            config = tmp_path / "config.toml"
            chain = evm_chain_toml(node_proxy.url, token=traffic.token, start=start, batch_blocks=3)
            # The faults name the full scan's methods (eth_getBlockReceipts): read every block in full here.
            chain += "filter_max_keys = 0\n"
            config.write_text(config_toml(sqlite_url, chain, sink_proxy.url + receiver.path, http=True, sink_timeout=1))
            began = time.monotonic()
            daemon = runner.daemon(config)
            try:
                await daemon.wait_ready()
                plan = _plan(rng)
                for step in plan:
                    proxy = node_proxy if step.where == "node" else sink_proxy
                    outcomes.append(await _run_step(step, proxy, daemon, traffic, receiver, node, sqlite_url))
                assert await daemon.terminate() == 0, daemon.tail()
                wrong_chain = await _wrong_chain_cases(tmp_path, runner, config, node_proxy)
            finally:
                runner.close()
            figures = check_alerts(receiver, traffic.wants, mode="live")
            tip = await traffic.tip()
            view = await store_view(sqlite_url, "live:eth", Scope.live())
            stored = check_store(view, traffic.wants, await traffic.hashes(start - 1, tip[0]), start - 1, tip)
    report(
        f"faults: live daemon on anvil and SQLite behind two fault proxies ({form}, seed {SEED + 10})",
        [
            f"{len(outcomes)} faults in {time.monotonic() - began:.0f}s, {traffic.blocks} blocks, "
            f"{len(traffic.wants)} expected matches, {sum(w.alert for w in traffic.wants)} alerts",
            f"receiver: {figures.deliveries} acknowledged deliveries, {figures.alerts} alerts exactly, "
            f"{figures.repeats} repeats with the same key and body",
            f"store: cursor at the tip {tip[0]}, {stored['blocks']} blocks, {stored['matches']} matches = expected",
            *[
                f"{o.step:<44} hit {o.hits:>4} requests, caught up {o.recovered_in:4.1f}s after, "
                f"{o.records:>3} warnings; log: {o.logged[:100]}"
                for o in outcomes
            ],
            *wrong_chain,
        ],
    )


def _plan(rng: random.Random) -> list[Step]:
    """CI: every fault once, in order. Full: several rounds, shuffled, some intermittent and longer."""
    if not FULL:
        return list(STEPS)
    # Once: a node that never answers, past the client's own request timeout (60 s).
    plan = [Step("hang past the request timeout", "node", Fault("hang", frozenset({"eth_getLogs"})), ("Timeout",), 65)]
    for _ in range(ROUNDS[1]):
        steps = list(STEPS)
        rng.shuffle(steps)
        for step in steps:
            share = 0.5 if rng.random() < 0.4 and step.fault.kind not in ("behind", "pad", "hang") else 1.0
            fault = replace(step.fault, probability=share)
            plan.append(replace(step, fault=fault, seconds=rng.uniform(1.0, 4.0)))
    return plan


async def _run_step(
    step: Step,
    proxy: FaultProxy,
    daemon: Proc,
    traffic: EvmTraffic,
    receiver: Receiver,
    node: Anvil,
    store_url: str,
) -> Outcome:
    since = len(daemon.records())
    fault = replace(step.fault)
    if fault.kind == "behind":
        fault.height = await node.block_number() - fault.lag
    hits_before = proxy.applied[fault.kind]
    proxy.set(fault)
    deadline = time.monotonic() + step.seconds
    blocks = 0
    while time.monotonic() < deadline or proxy.applied[fault.kind] == hits_before or blocks < 2:
        await traffic.block()
        blocks += 1
        await asyncio.sleep(0.15 if blocks > 1 else 0.01)  # a few blocks at once: the fetches are batches
        assert daemon.alive, f"{step.name}: the daemon died:\n{daemon.tail()}"
        assert time.monotonic() < deadline + 20, f"{step.name}: the fault never hit a request"
    assert daemon.alive, f"{step.name}: the daemon died:\n{daemon.tail()}"
    view = await store_view(store_url, "live:eth", Scope.live())
    check_matches_subset(view, traffic.wants)
    tip = await traffic.tip()
    if step.keeps_up:
        await eventually(lambda: _at(store_url, tip), 30, f"{step.name}: keeping up during the fault")
    hits = proxy.applied[fault.kind] - hits_before
    proxy.clear()
    cleared = time.monotonic()
    await eventually(lambda: _at(store_url, tip), 60, f"{step.name}: catching up after the fault")
    alerts = {w.id for w in traffic.wants if w.alert}
    await eventually(
        lambda: {r.json()["id"] for r in receiver.accepted if r.json()["event"] == "detected"} >= alerts,
        60,
        f"{step.name}: every alert after the fault",
    )
    recovered = time.monotonic() - cleared
    assert daemon.alive, f"{step.name}: the daemon died:\n{daemon.tail()}"
    logged = "(no error: answers were only bigger)"
    if step.says:
        found = _says(daemon, since, step.says)
        assert found is not None, f"{step.name}: no warning or error naming {step.says} in the log:\n{daemon.tail()}"
        logged = found
    view = await store_view(store_url, "live:eth", Scope.live())
    check_matches_subset(view, traffic.wants)
    noisy = sum(1 for r in daemon.records()[since:] if r.get("level") in ("warning", "error"))
    name = step.name + ("" if fault.probability >= 1 else " (intermittent)")
    return Outcome(name, hits, recovered, logged, noisy)


async def _at(store_url: str, tip: tuple[int, str]) -> bool:
    return await cursor_at(store_url, "live:eth") == tip


async def _wrong_chain_cases(tmp_path: Path, runner: Runner, config: Path, node_proxy: FaultProxy) -> list[str]:
    """A node on another chain: refused at start-up; or, down at start-up then back on another chain,
    its chain stops with a clear error while the daemon stays up."""
    lines = []
    # 1. At start-up, with a fresh store: refuse, exit non-zero, say why.
    fresh = tmp_path / "fresh.toml"
    fresh.write_text(config.read_text().replace("depositwatch.db", "fresh.db"))
    node_proxy.set(Fault("chain_id", chain_id=1))
    refused = runner.daemon(fresh)
    code = await refused.wait(60)
    assert code != 0, refused.tail()
    assert "reports chain id 1" in refused.text() and "config says 31337" in refused.text(), refused.tail()
    lines.append(f"node on chain id 1 at start-up: exit {code}, {_last_error(refused)[:120]}")

    # 2. Down at start-up, back on another chain: that chain stops, clearly; the daemon goes on.
    node_proxy.set(Fault("reset"))
    daemon = runner.daemon(config)
    await daemon.wait_ready()
    await eventually(lambda: "node unreachable at start-up" in daemon.text(), 30, "the start-up node check")
    node_proxy.set(Fault("chain_id", chain_id=1))
    await eventually(lambda: "chain failed; restarting with backoff" in daemon.text(), 30, "the chain to stop")
    assert daemon.alive, daemon.tail()
    record = next(r for r in daemon.records() if r.get("event") == "chain failed; restarting with backoff")
    assert "reports chain id 1" in record["error"], record
    async with aiohttp.ClientSession() as http:
        url = _http_url(daemon)
        async with http.get(f"{url}/healthz") as resp:
            health = await resp.json()
            assert resp.status == 503, health
            assert health["chains"]["eth"]["state"] == "failed", health
    node_proxy.clear()
    assert await daemon.terminate() == 0, daemon.tail()
    lines.append(
        f"node down at start-up, back on chain id 1: chain failed, daemon up, /healthz 503; {record['error'][:100]}"
    )
    return lines


def _last_error(proc: Proc) -> str:
    lines = [line for line in proc.text().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _http_url(proc: Proc) -> str:
    for record in proc.records():
        if record.get("event") == "http endpoint listening":
            return f"http://{record['address']}"
    raise AssertionError(f"no http endpoint in the log:\n{proc.tail()}")


@pytest.mark.parametrize("answer", [None, []], ids=["null", "list"])
async def test_daemon_survives_a_node_with_no_usable_latest_block(answer: Any, tmp_path: Path, sqlite_url: str) -> None:
    book = evm_book()
    runner = Runner(tmp_path, "daemon")
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node, Receiver() as receiver:
        traffic = EvmTraffic(node, book, random.Random(SEED))
        start = await traffic.setup()
        async with FaultProxy(node.http_url) as proxy:
            await import_book(sqlite_url, book)
            config = tmp_path / "config.toml"
            chain = evm_chain_toml(proxy.url, token=traffic.token, start=start)
            config.write_text(config_toml(sqlite_url, chain, receiver.url))
            daemon = runner.daemon(config)
            try:
                await daemon.wait_ready()
                await traffic.block()
                proxy.set(Fault("answer", frozenset({"eth_getBlockByNumber"}), result=answer))
                await traffic.block()
                # the bad answer reported; the daemon still running, and catching up once it is gone
                await eventually(
                    lambda: _says(daemon, 0, ("eth_getBlockByNumber for latest",)) is not None,
                    30,
                    "the daemon to report the bad answer",
                )
                assert daemon.alive, daemon.tail()
                proxy.clear()
                tip = await traffic.tip()
                await eventually(lambda: _at(sqlite_url, tip), 30, "catching up")
            finally:
                runner.close()


async def test_daemon_fails_over_to_the_second_node_url_mid_stream(tmp_path: Path, sqlite_url: str) -> None:
    """Two URLs for one anvil, each through its own proxy; the first dies mid-stream: no gap, no duplicate,
    and the alerts of the blocks after the switch arrive."""
    book = evm_book()
    runner = Runner(tmp_path, "daemon")
    async with Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as node, Receiver() as receiver:
        traffic = EvmTraffic(node, book, random.Random(SEED + 20))
        start = await traffic.setup()
        async with FaultProxy(node.http_url) as first, FaultProxy(node.http_url) as second:
            await import_book(sqlite_url, book)
            config = tmp_path / "config.toml"
            chain = evm_chain_toml(first.url, token=traffic.token, start=start).replace(
                f'rpc_urls = ["{first.url}"]', f'rpc_urls = ["{first.url}", "{second.url}"]'
            )
            config.write_text(config_toml(sqlite_url, chain, receiver.url))
            daemon = runner.daemon(config)
            try:
                await daemon.wait_ready()
                for _ in range(3):
                    await traffic.block()
                early = await traffic.tip()
                await eventually(lambda: _at(sqlite_url, early), 30, "following through the first URL")
                assert second.requests == 0  # the second URL is not used while the first works
                before = {w.id for w in traffic.wants if w.alert}
                dying = first.hold({"eth_getLogs", "eth_getBlockByNumber"})
                await traffic.block()
                await asyncio.wait_for(dying.wait(), 30)
                await first.stop()  # the first node goes away in the middle of a fetch
                for _ in range(3):
                    await traffic.block()
                tip = await traffic.tip()
                await eventually(lambda: _at(sqlite_url, tip), 60, "catching up through the second URL")
                after = {w.id for w in traffic.wants if w.alert} - before
                await eventually(
                    lambda: (
                        {r.json()["id"] for r in receiver.accepted if r.json()["event"] == "detected"} >= before | after
                    ),
                    60,
                    "every alert, those after the switch included",
                )
                assert daemon.alive, daemon.tail()
                assert await daemon.terminate() == 0, daemon.tail()
            finally:
                runner.close()
            assert second.methods_seen["eth_chainId"] >= 1  # the chain id was checked on the second node
            assert second.methods_seen["eth_getBlockByNumber"] >= 1
            assert after, "the traffic after the switch had alerts"
            check_alerts(receiver, traffic.wants, mode="live")
            view = await store_view(sqlite_url, "live:eth", Scope.live())
            check_store(view, traffic.wants, await traffic.hashes(start - 1, tip[0]), start - 1, tip)


HOSTILE = (
    ("an array nested 100,000 deep", Fault("deep")),
    ("an endless answer", Fault("endless")),
    ("a redirect to another host", Fault("redirect", status=307)),
)


@form_param(timeout_ci=240, timeout_full=900)
async def test_hostile_answers_of_one_node_leave_the_other_chain_alerting(
    form: str, tmp_path: Path, sqlite_url: str
) -> None:
    """An EVM chain and a Bitcoin chain in one daemon, each node behind its own proxy. Each hostile answer
    (deep nesting, an endless body, a redirect elsewhere) hits one node while the other chain's alerts
    keep coming; the daemon stays up, the redirect target gets nothing, and once the answers are honest
    again both chains catch up with every alert exactly once."""
    from tests.btcnode import BitcoinRegtestServer
    from tests.chains.test_node_client import Recorder
    from tests.proof.harness import BtcTraffic, btc_book, btc_chain_toml

    rng = random.Random(SEED + 30)
    eth_book, bitcoin_book = evm_book(), btc_book()
    runner = Runner(tmp_path, "daemon")
    lines: list[str] = []
    async with (
        Anvil(chain_id=EVM_CHAIN_ID, no_mining=True) as anvil,
        BitcoinRegtestServer() as bitcoind,
        Receiver() as receiver,
        Recorder() as elsewhere,
    ):
        eth = EvmTraffic(anvil, eth_book, random.Random(rng.random()))
        btc = BtcTraffic(bitcoind.chain, bitcoin_book, random.Random(rng.random()))
        eth_start, btc_start = await eth.setup(), btc.setup()
        async with FaultProxy(anvil.http_url) as eth_proxy, FaultProxy(bitcoind.url) as btc_proxy:
            await import_book(sqlite_url, eth_book)
            await import_book(sqlite_url, bitcoin_book)
            cap = "max_response_bytes = 4194304\nread_timeout = 10\n"
            chains = (
                evm_chain_toml(eth_proxy.url, token=eth.token, start=eth_start)
                + cap
                + btc_chain_toml(bitcoind, btc_proxy.url, start=btc_start)
                + cap
            )
            config = tmp_path / "config.toml"
            config.write_text(config_toml(sqlite_url, chains, receiver.url))
            daemon = runner.daemon(config)

            def delivered() -> set[str]:
                return {r.json()["id"] for r in receiver.accepted if r.json()["event"] == "detected"}

            async def healthy_block(which: str) -> None:
                await (eth.block() if which == "eth" else btc.block())

            try:
                await daemon.wait_ready()
                for name, template in HOSTILE:
                    for bad, good in (("eth", "btc"), ("btc", "eth")):
                        proxy = eth_proxy if bad == "eth" else btc_proxy
                        fault = replace(template, location=elsewhere.url)
                        hits = proxy.applied[fault.kind]
                        proxy.set(fault)
                        wants = eth.wants if good == "eth" else btc.wants
                        for _ in range(2):
                            await healthy_block(good)
                        began = time.monotonic()
                        expected = {w.id for w in wants if w.alert}
                        await eventually(
                            lambda expected=expected: delivered() >= expected,
                            60,
                            f"{good} alerting while {bad} answers {name}",
                        )
                        waited = time.monotonic() - began
                        await eventually(
                            lambda proxy=proxy, kind=fault.kind, hits=hits: proxy.applied[kind] > hits,
                            30,
                            f"{name} reaching the {bad} client",
                        )
                        assert daemon.alive, daemon.tail()
                        proxy.clear()
                        lines.append(f"{bad} answering {name}: {good} alerts within {waited:.1f}s, daemon up")
                await eth.block()
                await btc.block()
                eth_tip, btc_tip = await eth.tip(), btc.tip()
                await eventually(lambda: _chain_at(sqlite_url, "live:eth", eth_tip), 60, "eth catching up")
                await eventually(lambda: _chain_at(sqlite_url, "live:btc", btc_tip), 60, "btc catching up")
                every = {w.id for w in (*eth.wants, *btc.wants) if w.alert}
                await eventually(lambda: delivered() >= every, 60, "every alert at the end")
                assert await daemon.terminate() == 0, daemon.tail()
            finally:
                runner.close()
            assert elsewhere.requests == []  # no redirect was followed, no credential went there
            check_alerts(receiver, [*eth.wants, *btc.wants], mode="live")
            eth_view = _one_chain(await store_view(sqlite_url, "live:eth", Scope.live()), "eth")
            check_store(eth_view, eth.wants, await eth.hashes(eth_start - 1, eth_tip[0]), eth_start - 1, eth_tip)
            btc_view = _one_chain(await store_view(sqlite_url, "live:btc", Scope.live()), "btc")
            check_store(btc_view, btc.wants, btc.hashes(btc_start - 1, btc_tip[0]), btc_start - 1, btc_tip)
    report(f"faults: hostile node answers, two chains in one daemon ({form}, seed {SEED + 30})", lines)


def _one_chain(view: Any, chain: str) -> Any:
    """The view with the matches of one chain only (the scope holds both chains')."""
    return replace(view, matches=[m for m in view.matches if m["chain"] == chain])


async def _chain_at(store_url: str, cursor: str, tip: tuple[int, str]) -> bool:
    return await cursor_at(store_url, cursor) == tip
