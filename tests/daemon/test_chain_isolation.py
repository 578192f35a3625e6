"""One chain's failure is that chain's alone: a daemon with two EVM chains and one Bitcoin chain, where one
chain at a time fails (node down, wrong chain, a store error in its commit, a hostile answer) while the
others keep alerting,
and the failed one shows as such in /healthz and /metrics, then comes back by itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from depositwatch.devnet import Anvil, send_eth, wait_receipt
from tests.btcnode import BitcoinRegtestServer, p2wpkh, script_to_address
from tests.daemon.test_daemon import SECRET, Daemon, execute_sql, free_port, launch, reap, run_depositwatch, stop
from tests.proof.faultproxy import Fault, FaultProxy
from tests.receivers import Receiver
from tests.util import eventually, serve

pytestmark = pytest.mark.filterwarnings("ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning")

REVOKED = "0x" + "a1" * 20
BTC_REVOKED = p2wpkh(b"\xa1" * 20)
BUG = "injected commit failure"  # what the trigger below raises: a store error no chain code expects


class HugeTimestamps:
    """A pass-through JSON-RPC proxy that, while `on`, gives every block it forwards a timestamp of
    2^256-1: a hostile answer that passes the node client's checks today and breaks the commit."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.on = False
        self.rewritten = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> HugeTimestamps:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with self._session.post(self.upstream, data=body, headers=headers) as resp:
            status, answer = resp.status, await resp.read()
        if self.on and status == 200:
            calls = orjson.loads(body)
            methods = {c.get("id"): c.get("method") for c in (calls if isinstance(calls, list) else [calls])}
            data = orjson.loads(answer)
            for item in data if isinstance(data, list) else [data]:
                result = item.get("result")
                if methods.get(item.get("id")) == "eth_getBlockByNumber" and isinstance(result, dict):
                    result["timestamp"] = hex(2**256 - 1)
                    self.rewritten += 1
            answer = orjson.dumps(data)
        return web.Response(status=status, body=answer, content_type="application/json")


@dataclass
class World:
    tmp: Path
    pg_url: str
    eth: Anvil
    bsc: Anvil
    eth_proxy: FaultProxy
    bsc_proxy: FaultProxy
    hostile: HugeTimestamps
    btc: BitcoinRegtestServer
    receiver: Receiver
    daemons: list[Daemon]

    def config(self, http_port: int) -> Path:
        path = self.tmp / "config.toml"
        evm = "confirmations = 2\npoll_interval = 0.1\nstart_height = 1\nmax_lag_blocks = 5\n"
        path.write_text(
            f'[store]\nurl = "{self.pg_url}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
            "[alerts]\npoll_interval = 0.05\n"
            f'[[chains]]\nname = "eth"\nkind = "evm"\nchain_id = 31337\nrpc_urls = ["{self.hostile.url}"]\n{evm}'
            f'[[chains]]\nname = "bsc"\nkind = "evm"\nchain_id = 56\nrpc_urls = ["{self.bsc_proxy.url}"]\n'
            f'native_symbol = "BNB"\n{evm}'
            '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
            f'rpc_urls = ["{self.btc.url}"]\nrpc_user = "{self.btc.user}"\n'
            f'rpc_password = {{ value = "{self.btc.password}" }}\n'
            f"confirmations = 2\npoll_interval = 0.1\nstart_height = {self.btc.chain.height + 1}\nmempool = false\n"
            f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{self.receiver.url}"\n'
            f'secret = {{ value = "{SECRET}" }}\nretry = {{ initial_backoff = 0.05, max_backoff = 0.5 }}\n'
        )
        return path

    async def import_book(self, config: Path) -> None:
        book = self.tmp / "book.csv"
        book.write_text(
            "chain,address,status,label,owner,revoked_at,reason\n"
            f"eth,{REVOKED},revoked,r-eth,cust-1,2020-01-01T00:00:00Z,breach\n"
            f"bsc,{REVOKED},revoked,r-bsc,cust-1,2020-01-01T00:00:00Z,breach\n"
            f"btc,{script_to_address(BTC_REVOKED, 'regtest')},revoked,r-btc,cust-1,2020-01-01T00:00:00Z,breach\n"
        )
        await run_depositwatch("--config", str(config), "addresses", "import", str(book))

    # payments and their alerts ------------------------------------------------------------------------

    async def pay(self, chain: str) -> str:
        if chain == "btc":
            tx = self.btc.chain.send([(BTC_REVOKED, 50_000)])
            self.btc.chain.mine(1)
            return str(tx.txid)
        node = self.eth if chain == "eth" else self.bsc
        txid = await send_eth(node.w3, node.accounts[1].address, REVOKED, 10**15)
        await wait_receipt(node.w3, txid)
        return str(txid)

    def alerted(self) -> set[str]:
        """The transactions alerted from a block: `detected` in a block, or `mined` after a pending-transaction
        alert. That one (`mempool: true`, from the txpool, which the hostile proxy does not touch) can come
        first when the poll catches a transaction before anvil mines it; it says nothing about whether the
        chain's blocks are being followed."""
        return {
            body["txid"]
            for body in (r.json() for r in self.receiver.accepted)
            if body["event"] in ("detected", "mined") and not body["mempool"]
        }

    async def alert_from(self, chain: str, daemon: Daemon, timeout: float = 30.0) -> None:
        """Pay the revoked address on `chain` and wait for its alert at the receiver."""
        txid = await self.pay(chain)
        await until(lambda: _true(txid in self.alerted()), timeout, f"an alert for {chain} {txid}", daemon)


def _true(value: bool) -> Awaitable[bool]:
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str, daemon: Daemon) -> None:
    """Wait on a state, not a time; fail with the daemon's log when it never comes or the daemon exits."""

    def exited() -> str | None:
        return None if daemon.process.poll() is None else f"the daemon exited ({daemon.process.returncode})"

    await eventually(check, timeout, what, every=0.1, stop_if=exited, detail=lambda: tail(daemon))


def tail(daemon: Daemon) -> str:
    return "\n".join(daemon.output().splitlines()[-30:])


class Scraper:
    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.base}/healthz") as resp:
            return resp.status, await resp.json()

    async def chain(self, name: str) -> dict[str, Any]:
        _, body = await self.health()
        chain: dict[str, Any] = body["chains"][name]
        return chain

    async def metrics(self) -> dict[str, float]:
        async with self.http.get(f"{self.base}/metrics") as resp:
            text = await resp.text()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }


FAIL_ETH_COMMITS = f"""
CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '{BUG}'; END $$;
CREATE TRIGGER fail_commit BEFORE INSERT ON blocks FOR EACH ROW
WHEN (NEW.cursor = 'live:eth') EXECUTE FUNCTION fail_commit();
"""
HEAL_ETH_COMMITS = "DROP TRIGGER fail_commit ON blocks; DROP FUNCTION fail_commit();"


@pytest.fixture
async def world(tmp_path: Path, pg_url: str) -> AsyncIterator[World]:
    async with (
        Anvil(chain_id=31337) as eth,
        Anvil(chain_id=56) as bsc,
        FaultProxy(eth.http_url) as eth_proxy,
        FaultProxy(bsc.http_url) as bsc_proxy,
        HugeTimestamps(eth_proxy.url) as hostile,
        BitcoinRegtestServer() as btc,
        Receiver() as receiver,
    ):
        btc.chain.mine(101)
        w = World(tmp_path, pg_url, eth, bsc, eth_proxy, bsc_proxy, hostile, btc, receiver, [])
        try:
            yield w
        finally:
            reap(w.daemons)


async def test_one_chains_failure_is_its_own(world: World) -> None:
    """Node down, wrong chain, a store error in the commit, a hostile block: each stops one chain only,
    visibly, for a while."""
    port = free_port()
    config = world.config(port)
    await world.import_book(config)
    world.bsc_proxy.set(Fault("status", status=503))  # bsc's node is down from the start
    daemon = launch(config, world.tmp, 0)
    world.daemons.append(daemon)
    await daemon.notify.wait_for("READY=1")
    async with aiohttp.ClientSession() as http:
        scrape = Scraper(http, f"http://127.0.0.1:{port}")

        async def bsc_is(state: str) -> bool:
            return (await scrape.chain("bsc"))["state"] == state

        # 1. a node that is down: that chain is node-down, the others alert
        await until(lambda: bsc_is("node-down"), 30, "bsc node-down", daemon)
        status, body = await scrape.health()
        assert status == 503 and body["chains"]["bsc"]["error"]
        for chain in ("eth", "btc"):
            await world.alert_from(chain, daemon)
        assert (await scrape.metrics())['depositwatch_chain_state{chain="bsc",state="node-down"}'] == 1

        # 2. the node comes back on another chain: bsc fails (restarted with backoff), the others alert
        world.bsc_proxy.set(Fault("chain_id", chain_id=1))
        await until(lambda: bsc_is("failed"), 30, "bsc failed", daemon)
        bsc = await scrape.chain("bsc")
        assert "chain id 1" in bsc["error"] and not bsc["healthy"]
        metrics = await scrape.metrics()
        assert metrics['depositwatch_chain_state{chain="bsc",state="failed"}'] == 1
        assert metrics['depositwatch_chain_restarts_total{chain="bsc"}'] >= 1
        assert metrics['depositwatch_chain_restarts_total{chain="eth"}'] == 0
        for chain in ("eth", "btc"):
            await world.alert_from(chain, daemon)

        # ... and the right node again: bsc follows by itself and alerts
        world.bsc_proxy.clear()
        await until(lambda: bsc_is("following"), 60, "bsc following again", daemon)
        await world.alert_from("bsc", daemon)

        # 3. a store error no chain code expects, in eth's commit: eth fails, bsc and btc alert
        await execute_sql(world.pg_url, FAIL_ETH_COMMITS)
        stuck = await world.pay("eth")

        async def eth_failed() -> bool:
            return (await scrape.chain("eth"))["state"] == "failed"

        await until(eth_failed, 30, "eth failed", daemon)
        eth = await scrape.chain("eth")
        assert BUG in eth["error"] and eth["restarts"] >= 1
        for chain in ("bsc", "btc"):
            await world.alert_from(chain, daemon)
        metrics = await scrape.metrics()
        assert metrics['depositwatch_chain_state{chain="eth",state="failed"}'] == 1
        assert metrics['depositwatch_chain_state{chain="bsc",state="following"}'] == 1
        assert metrics['depositwatch_chain_restarts_total{chain="eth"}'] >= 1
        log = daemon.output()
        assert "chain failed; restarting with backoff" in log and BUG in log
        assert "Traceback" in log  # the first failure of the episode comes with its traceback

        # ... the store is repaired: eth restarts by itself and the payment it could not commit alerts
        await execute_sql(world.pg_url, HEAL_ETH_COMMITS)
        await until(lambda: _true(stuck in world.alerted()), 60, "the eth alert after the repair", daemon)
        await until(lambda: _true(daemon.process.poll() is None), 1, "alive", daemon)
        await world.alert_from("eth", daemon)

        # 4. a hostile answer: eth's blocks come with a 2^256-1 timestamp. Whether the node client
        # rejects it (node-down) or the commit cannot store it (failed), eth alone stops; the others alert.
        world.hostile.on = True
        stuck = await world.pay("eth")

        async def eth_stopped() -> bool:
            return (await scrape.chain("eth"))["state"] in ("failed", "node-down")

        await until(eth_stopped, 30, "eth stopped by the hostile answer", daemon)
        assert world.hostile.rewritten > 0 and (await scrape.chain("eth"))["error"]
        for chain in ("bsc", "btc"):
            await world.alert_from(chain, daemon)
        assert stuck not in world.alerted()
        world.hostile.on = False
        await until(lambda: _true(stuck in world.alerted()), 60, "the eth alert after the hostile node", daemon)

        async def all_healthy() -> bool:
            return (await scrape.health())[0] == 200

        await until(all_healthy, 30, "every chain healthy", daemon)
    assert await stop(daemon) == 0, tail(daemon)
