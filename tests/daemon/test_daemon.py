"""The real daemon as a subprocess, against anvil, PostgreSQL and webhook receivers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

import depositwatch
from depositwatch.devnet import Anvil, send_eth, wait_receipt
from tests.proof.faultproxy import Fault, FaultProxy
from tests.receivers import WEBHOOK_SECRET, Receiver
from tests.util import NotifySocket, eventually, free_port, within

CHAIN_ID = 31337
REVOKED = "0x" + "a1" * 20
ACTIVE = "0x" + "c3" * 20
SECRET = WEBHOOK_SECRET


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    notify: NotifySocket
    http: str
    log: Path
    config: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Setup:
    tmp: Path
    node: Anvil
    store_url: str
    receiver: Receiver
    started: list[Daemon]

    def config(self, *, rpc_url: str | None = None, sinks: str | None = None, http_port: int = 0) -> Path:
        path = self.tmp / f"config-{len(list(self.tmp.glob('config-*')))}.toml"
        path.write_text(
            f'[store]\nurl = "{self.store_url}"\n'
            f'[http]\nlisten = "127.0.0.1:{http_port}"\n'
            "[alerts]\npoll_interval = 0.05\nshutdown_grace = 5\n"
            '[[chains]]\nname = "eth"\nkind = "evm"\n'
            f'chain_id = {CHAIN_ID}\nrpc_urls = ["{rpc_url or self.node.http_url}"]\n'
            "confirmations = 3\npoll_interval = 0.1\nmax_lag_blocks = 5\nbatch_blocks = 3\nstart_height = 1\n"
            + (sinks if sinks is not None else self.sink(self.receiver.url))
        )
        return path

    @staticmethod
    def sink(url: str, name: str = "hook") -> str:
        return (
            f'[[sinks]]\nname = "{name}"\ntype = "webhook"\nurl = "{url}"\nsecret = {{ value = "{SECRET}" }}\n'
            "retry = { initial_backoff = 0.05, max_backoff = 0.5 }\n"
        )

    async def start(self, config: Path, *, watchdog_usec: int | None = None, wait_ready: bool = True) -> Daemon:
        n = len(self.started)
        http_port = free_port()
        own = self.tmp / f"run-{n}.toml"  # each instance its own copy: its own HTTP port
        own.write_text(config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{http_port}"'))
        env = {} if watchdog_usec is None else {"WATCHDOG_USEC": str(watchdog_usec)}
        daemon = launch(own, self.tmp, n, env, http=f"http://127.0.0.1:{http_port}")
        self.started.append(daemon)
        if wait_ready:
            try:
                await daemon.notify.wait_for("READY=1")
            except AssertionError:
                raise AssertionError(daemon.output()) from None
        return daemon


def launch(config: Path, tmp: Path, n: int, env: dict[str, str] | None = None, *, http: str = "") -> Daemon:
    """Start `depositwatch run` as a subprocess with a notify socket the test owns."""
    notify = NotifySocket(tmp / f"notify-{n}.sock")
    log = tmp / f"daemon-{n}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "depositwatch", "--config", str(config), "--log-format", "json", "run"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": str(notify.path), **(env or {})},
        )
    return Daemon(process, notify, http, log, config)


def reap(daemons: list[Daemon]) -> None:
    """Kill what is still running and close the notify sockets."""
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        daemon.notify.close()


async def stop(daemon: Daemon, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if daemon.process.poll() is None:
        daemon.process.send_signal(sig)
    if await within(lambda: daemon.process.poll() is not None, timeout):
        return daemon.process.returncode
    daemon.process.kill()
    raise AssertionError("the daemon did not stop in time:\n" + daemon.output())


async def execute_sql(pg_url: str, sql: str) -> None:
    """Run `sql` on the PostgreSQL store at `pg_url` (to break or mend it under a running daemon)."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fetch_value(pg_url: str, sql: str) -> Any:
    """The first column of the first row of `sql` on the PostgreSQL store at `pg_url`."""
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def run_depositwatch(*argv: str, code: int = 0) -> str:
    """Run a depositwatch command as a process; its output (stdout and stderr), after checking it exited
    with `code`."""
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "depositwatch", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await done.communicate()
    assert done.returncode == code, out.decode()
    return out.decode()


async def book(store_url: str, tmp: Path) -> None:
    csv = tmp / "book.csv"
    csv.write_text(
        "chain,address,status,label,owner,revoked_at,reason\n"
        f"eth,{REVOKED},revoked,r1,cust-r1,2020-01-01T00:00:00Z,breach\n"
        f"eth,{ACTIVE},active,a1,cust-a1,,\n"
    )
    await run_depositwatch("addresses", "import", str(csv), "--store", store_url)


async def _setup(tmp_path: Path, store_url: str) -> AsyncIterator[Setup]:
    async with Anvil(chain_id=CHAIN_ID) as node, Receiver() as receiver:
        await book(store_url, tmp_path)
        s = Setup(tmp_path, node, store_url, receiver, [])
        try:
            yield s
        finally:
            reap(s.started)


@pytest.fixture(params=["postgres"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> AsyncIterator[Setup]:
    async for s in _setup(tmp_path, pg_url):
        yield s


@pytest.fixture
async def sqlite_setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async for s in _setup(tmp_path, f"sqlite:///{tmp_path}/state.db"):
        yield s


def detected(receiver: Receiver) -> list[str]:
    """Alert ids of the `detected` messages acknowledged, with repeats."""
    return [r.json()["id"] for r in receiver.accepted if r.json()["event"] == "detected"]


def keys_consistent(receiver: Receiver) -> bool:
    """Any repeat carries the same idempotency key and the same body."""
    bodies: dict[str | None, bytes] = {}
    return all(bodies.setdefault(r.key, r.body) == r.body for r in receiver.accepted)


async def pay(node: Anvil, to: str, n: int) -> list[str]:
    txids = []
    for _ in range(n):
        txid = await send_eth(node.w3, node.accounts[1].address, to, 10**15)
        await wait_receipt(node.w3, txid)
        txids.append(txid)
    return txids


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    await eventually(predicate, timeout, what)


async def test_sigterm_mid_stream_then_restart_misses_and_repeats_nothing(setup: Setup) -> None:
    """SIGTERM while blocks arrive exits 0; the restarted daemon neither misses nor repeats an alert."""
    config = setup.config()
    first = await setup.start(config)
    sending = asyncio.create_task(pay(setup.node, REVOKED, 12))
    await wait_for(lambda: len(detected(setup.receiver)) >= 3, what="first alerts")
    assert await stop(first) == 0, first.output()
    txids = await sending
    txids += await pay(setup.node, REVOKED, 4)  # mined while the daemon is down
    second = await setup.start(config)
    await wait_for(lambda: len(set(detected(setup.receiver))) >= 16, what="all 16 alerts")
    ids = detected(setup.receiver)
    assert len(set(ids)) == 16
    assert {r.json()["txid"] for r in setup.receiver.accepted if r.json()["event"] == "detected"} == set(txids)
    assert keys_consistent(setup.receiver)
    assert await stop(second) == 0


async def test_sigterm_while_a_commit_waits_on_the_store_stops_within_the_bound(setup: Setup) -> None:
    """The store holds the chain's commit (another session locks the cursors: a migration, a VACUUM FULL):
    SIGTERM still ends the daemon, exit 0, once the chains' stop bound has passed, with a warning naming
    the chain and where it waited; the blocks it had not committed are read again by the next start, so
    their alert is delivered, once."""
    daemon = await setup.start(setup.config())
    cursor = "SELECT height FROM cursors WHERE name = 'live:eth'"
    await pay(setup.node, ACTIVE, 1)
    first = await setup.node.block_number()

    async def committed(height: int) -> bool:
        return int(await fetch_value(setup.store_url, cursor) or 0) >= height

    await eventually(lambda: committed(first), what="the first block committed")
    blocker = await asyncpg.connect(setup.store_url)
    try:
        await blocker.execute("BEGIN; LOCK TABLE cursors IN EXCLUSIVE MODE")
        [txid] = await pay(setup.node, REVOKED, 1)
        waiting = "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation = 'cursors'::regclass"

        async def commit_waits() -> bool:
            return bool(await blocker.fetchval(waiting))

        await eventually(commit_waits, what="the block's commit waiting on the lock")
        assert await stop(daemon) == 0, daemon.output()  # within the helper's 30 s
    finally:
        await blocker.close()  # its transaction ends: the lock is free
    output = daemon.output()
    assert "chains did not stop in time; cancelled" in output and '"eth"' in output, output
    assert "follow > _run_while_leading > run > _run > _step > _commit > " in output  # where it waited
    mined = await setup.node.block_number()
    assert not await committed(mined)  # the cancelled commit left nothing
    again = await setup.start(setup.config())
    await eventually(lambda: committed(mined), what="the block committed after the restart")
    await wait_for(lambda: txid in {r.json()["txid"] for r in setup.receiver.accepted}, what="the alert")
    assert len(set(detected(setup.receiver))) == 1
    assert keys_consistent(setup.receiver)
    assert await stop(again) == 0


async def test_metrics_and_health_follow_the_chain(setup: Setup) -> None:
    """/metrics reports heights and lag; /healthz is 200 while following and 503 when the node is gone."""
    daemon = await setup.start(setup.config())
    await pay(setup.node, ACTIVE, 2)
    tip = await setup.node.block_number()
    async with aiohttp.ClientSession() as http:

        async def metric(name: str) -> float | None:
            async with http.get(f"{daemon.http}/metrics") as resp:
                for line in (await resp.text()).splitlines():
                    if line.startswith(name + "{"):
                        return float(line.rsplit(" ", 1)[1])
            return None

        await wait_until_async(lambda: metric("depositwatch_processed_height"), lambda v: v == tip)
        assert await metric("depositwatch_lag_blocks") == 0
        assert await metric("depositwatch_node_height") == tip
        assert (await metric("depositwatch_matches_total")) is not None
        async with http.get(f"{daemon.http}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["chains"]["eth"]["state"] == "following"
        await setup.node.stop()

        async def unhealthy() -> int:
            async with http.get(f"{daemon.http}/healthz") as resp:
                return resp.status

        await wait_until_async(unhealthy, lambda status: status == 503)
        assert "STATUS=eth" in " ".join(m for _, m in daemon.notify.drain())
    assert await stop(daemon) == 0


async def wait_until_async(
    get: Callable[[], Awaitable[object]], ok: Callable[[object], bool], timeout: float = 30.0
) -> None:
    """Until `ok(await get())`; on timeout the error shows the last value read."""
    seen: list[object] = []

    async def holds() -> bool:
        value = await get()
        seen[:] = [value]
        return ok(value)

    await eventually(holds, timeout, "the value", detail=lambda: f"last read: {seen[0]!r}" if seen else "none read")


async def test_cli_revocation_and_sighup_take_effect_while_running(sqlite_setup: Setup) -> None:
    """A revocation by the CLI applies within a second; SIGHUP brings in a new sink without a restart."""
    s = sqlite_setup
    config = s.config()
    daemon = await s.start(config)
    await pay(s.node, ACTIVE, 1)
    listing = s.tmp / "leaked.txt"
    listing.write_text(ACTIVE + "\n")
    await run_depositwatch(
        "addresses", "revoke", "--chain", "eth", "--file", str(listing), "--at", "2021-01-01T00:00:00Z",
        "--reason", "leak", "--store", s.store_url,
    )  # fmt: skip
    await wait_for(lambda: "address book reloaded" in daemon.output(), what="the revocation to load")
    [txid] = await pay(s.node, ACTIVE, 1)
    await wait_for(lambda: txid in {r.json()["txid"] for r in s.receiver.accepted}, what="alert after revocation")

    async with Receiver() as second:
        daemon.config.write_text(daemon.config.read_text() + Setup.sink(second.url, "second"))
        daemon.process.send_signal(signal.SIGHUP)
        await wait_for(lambda: "sinks reloaded" in daemon.output(), what="the new sink to be loaded")
        [txid2] = await pay(s.node, REVOKED, 1)
        await wait_for(lambda: txid2 in {r.json()["txid"] for r in second.accepted}, what="alert to the new sink")
    assert daemon.process.poll() is None
    assert await stop(daemon) == 0


async def test_sqlite_runs_a_single_instance(sqlite_setup: Setup) -> None:
    """A second daemon on the same SQLite store refuses to start and says why."""
    s = sqlite_setup
    config = s.config()
    first = await s.start(config)
    second = await s.start(config, wait_ready=False)
    code = await asyncio.to_thread(second.process.wait, 30)
    assert code != 0
    assert "SQLite runs a single instance" in second.output()
    # a stand-alone dispatcher next to the daemon would deliver everything twice: refused too
    text = await run_depositwatch("--config", str(first.config), "alerts", "deliver", "--until-empty", code=2)
    assert "SQLite runs a single instance" in text
    assert first.process.poll() is None
    assert await stop(first) == 0


async def test_standby_takes_over_when_the_leader_dies(setup: Setup) -> None:
    """Two instances on PostgreSQL: kill -9 the leader, the standby follows on; the alert set is exact."""
    config = setup.config()
    leader = await setup.start(config)
    await wait_for(lambda: "chain:eth" in leader.output() or "lease acquired" in leader.output(), what="lease")
    standby = await setup.start(config)
    txids = await pay(setup.node, REVOKED, 3)
    await wait_for(lambda: len(set(detected(setup.receiver))) >= 3, what="alerts from the leader")
    assert "standing by" in standby.output()
    leader.process.kill()
    leader.process.wait()
    txids += await pay(setup.node, REVOKED, 3)
    await wait_for(lambda: len(set(detected(setup.receiver))) >= 6, timeout=60, what="alerts after failover")
    got = [r.json()["txid"] for r in setup.receiver.accepted if r.json()["event"] == "detected"]
    assert set(got) == set(txids)
    assert keys_consistent(setup.receiver)
    assert await stop(standby) == 0


async def test_watchdog_pings_stop_when_a_loop_hangs(tmp_path: Path, sqlite_url: str) -> None:
    """With WATCHDOG_USEC set the daemon pings; when the chain loop hangs on its node, the pings stop."""
    hang = asyncio.Event()

    async with Anvil(chain_id=CHAIN_ID) as node, Receiver() as receiver, aiohttp.ClientSession() as client:

        async def proxy(request: web.Request) -> web.Response:
            body = await request.read()
            if hang.is_set():
                await asyncio.sleep(3600)
            async with client.post(node.http_url, data=body, headers={"Content-Type": "application/json"}) as resp:
                return web.Response(body=await resp.read(), content_type="application/json")

        app = web.Application()
        app.router.add_post("/", proxy)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        await book(sqlite_url, tmp_path)
        s = Setup(tmp_path, node, sqlite_url, receiver, [])
        daemon = await s.start(s.config(rpc_url=f"http://127.0.0.1:{port}/"), watchdog_usec=1_000_000)
        try:
            await daemon.notify.wait_for("WATCHDOG=1")
            hang.set()
            for _ in range(35):  # read as they come: a message's time is when it was read
                daemon.notify.drain()
                await asyncio.sleep(0.1)
            cut = time.monotonic() - 1.0
            recent = [m for t, m in daemon.notify.messages if t > cut]
            assert any("STATUS=" in m for m in recent), recent  # the main loop itself is alive
            assert not any("WATCHDOG=1" in m for m in recent), recent
            assert "withholding the watchdog ping" in daemon.output()
        finally:
            daemon.process.kill()
            daemon.process.wait()
            daemon.notify.close()
            with contextlib.suppress(Exception):
                await runner.cleanup()


async def scrape(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, float]:
    """Every sample of /metrics by its name and labels."""
    async with http.get(f"{daemon.http}/metrics") as resp:
        text = await resp.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def health(http: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{daemon.http}/healthz") as resp:
        return resp.status, await resp.json()


async def test_metrics_in_seconds_and_every_series_from_the_start(setup: Setup) -> None:
    """Counters and label sets exist at 0 before any event; ages in seconds; delivery latency; build info."""
    daemon = await setup.start(setup.config())
    async with aiohttp.ClientSession() as http:
        first = await scrape(http, daemon)
        for series in (
            'depositwatch_reorgs_total{chain="eth"}',
            'depositwatch_rpc_errors_total{chain="eth"}',
            'depositwatch_chain_restarts_total{chain="eth"}',
            'depositwatch_component_restarts_total{component="dispatcher"}',
            'depositwatch_component_restarts_total{component="address_book"}',
            'depositwatch_matches_total{chain="eth",kind="revoked_incoming"}',
            'depositwatch_deliveries_total{outcome="delivered",sink="hook"}',
            'depositwatch_deliveries_total{outcome="error",sink="hook"}',
            'depositwatch_test_alerts_total{outcome="delivered",sink="hook"}',
            'depositwatch_outbox_messages{status="new"}',
            'depositwatch_outbox_messages{status="dead"}',
            'depositwatch_delivery_latency_seconds_count{sink="hook"}',
        ):
            assert first.get(series) == 0, series
        assert first['depositwatch_build_info{version="' + depositwatch.__version__ + '"}'] == 1
        [txid] = await pay(setup.node, REVOKED, 1)
        await wait_for(lambda: txid in {r.json()["txid"] for r in setup.receiver.accepted}, what="the alert")

        async def delivered() -> float:
            return (await scrape(http, daemon)).get('depositwatch_delivery_latency_seconds_count{sink="hook"}', 0)

        await wait_until_async(delivered, lambda count: count == 1)
        sample = await scrape(http, daemon)
        assert sample['depositwatch_delivery_latency_seconds_bucket{le="60.0",sink="hook"}'] == 1
        assert sample['depositwatch_chain_state{chain="eth",state="following"}'] == 1
        assert sample['depositwatch_chain_state{chain="eth",state="failed"}'] == 0
        assert 0 <= sample['depositwatch_block_age_seconds{chain="eth"}'] < 600
        assert 0 <= sample['depositwatch_seconds_since_last_commit{chain="eth"}'] < 600
        assert abs(sample['depositwatch_last_commit_timestamp_seconds{chain="eth"}'] - time.time()) < 600
    assert await stop(daemon) == 0


async def leader_and_standby(s: Setup, leader_rpc: str, standby_max_commit_age: int) -> tuple[Daemon, Daemon]:
    """Two instances with `standby_max_commit_age` set: the leader (reading its node through `leader_rpc`)
    once it holds the chain's lease, then the standby once it stands by."""
    bound = f"start_height = 1\nstandby_max_commit_age = {standby_max_commit_age}\n"
    leader_config = s.config(rpc_url=leader_rpc)
    leader_config.write_text(leader_config.read_text().replace("start_height = 1\n", bound))
    leader = await s.start(leader_config)
    await wait_for(lambda: "chain:eth" in leader.output(), what="the leader's lease")
    standby_config = s.config()
    standby_config.write_text(standby_config.read_text().replace("start_height = 1\n", bound))
    standby = await s.start(standby_config)
    await wait_for(lambda: "standing by" in standby.output(), what="the standby")
    return leader, standby


async def test_health_shows_the_outage_and_a_standby_sees_the_leader_stall(setup: Setup) -> None:
    """/healthz says node-down with the node's error during an outage (not `following`, `null`); a standby
    reports the time since the leader's last commit and turns unhealthy when it passes the bound."""
    async with FaultProxy(setup.node.http_url) as proxy, aiohttp.ClientSession() as http:
        leader, standby = await leader_and_standby(setup, proxy.url, standby_max_commit_age=5)
        await pay(setup.node, ACTIVE, 1)

        async def standby_health() -> tuple[int, dict[str, Any]]:
            return await health(http, standby)

        await wait_until_async(standby_health, lambda h: h[0] == 200)  # type: ignore[index]
        _, body = await health(http, standby)
        eth = body["chains"]["eth"]
        assert (eth["state"], eth["max_commit_age"]) == ("standby", 5)
        assert 0 <= eth["seconds_since_last_commit"] <= 5

        proxy.set(Fault("status", status=503))  # the leader's node fails: no more commits
        await pay(setup.node, ACTIVE, 1)

        async def leader_health() -> tuple[int, dict[str, Any]]:
            return await health(http, leader)

        await wait_until_async(leader_health, lambda h: h[1]["chains"]["eth"]["state"] == "node-down")  # type: ignore[index]
        status, body = await health(http, leader)
        assert status == 503
        assert "503" in body["chains"]["eth"]["error"]
        await wait_until_async(standby_health, lambda h: h[0] == 503)  # type: ignore[index]
        _, body = await health(http, standby)
        eth = body["chains"]["eth"]
        assert eth["state"] == "standby" and not eth["healthy"] and eth["seconds_since_last_commit"] >= 5

        proxy.clear()  # the leader's node is back: it commits, the standby is healthy again
        await wait_until_async(standby_health, lambda h: h[0] == 200)  # type: ignore[index]
    assert await stop(standby) == 0
    assert await stop(leader) == 0
