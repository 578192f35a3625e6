"""The daemon follows TRON beside an EVM chain: alerts from both, metrics and health per chain, one
chain's node failure does not stop the other, the API key never shown, and HA leadership for TRON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from depositwatch.devnet import Anvil, send_eth, wait_receipt
from tests.daemon.test_daemon import (
    CHAIN_ID,
    Daemon,
    Setup,
    detected,
    free_port,
    health,
    keys_consistent,
    launch,
    reap,
    scrape,
    stop,
    wait_for,
    wait_until_async,
)
from tests.pipeline.test_tron_pipeline import CUSTOMER, REVOKED, USDT, addr, txid
from tests.receivers import Receiver
from tests.tronnode.chain import TronChain, trc20, trx
from tests.tronnode.server import TronNodeServer

ETH_REVOKED = "0x" + "a1" * 20
KEY = "tron-daemon-key-canary-58c0d2e4f1"
ENV = {"DW_TRON_KEY": KEY}


@dataclass
class World:
    tmp: Path
    store_url: str
    anvil: Anvil
    tron: TronNodeServer
    receiver: Receiver
    started: list[Daemon]

    def config(self) -> Path:
        path = self.tmp / f"config-{len(self.started)}.toml"
        path.write_text(
            f'[store]\nurl = "{self.store_url}"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
            "[alerts]\npoll_interval = 0.05\nshutdown_grace = 5\n"
            f'[[chains]]\nname = "eth"\nkind = "evm"\nchain_id = {CHAIN_ID}\n'
            f'rpc_urls = ["{self.anvil.http_url}"]\nconfirmations = 3\npoll_interval = 0.1\nstart_height = 1\n'
            f'[[chains]]\nname = "tron"\nkind = "tron"\nnetwork = "testnode"\nrpc_urls = ["{self.tron.url}"]\n'
            'api_key = { env = "DW_TRON_KEY" }\npoll_interval = 0.1\n'
            f"start_height = {self.tron.chain.tip + 1}\ninternal = false\n"
            f'tokens = [{{ symbol = "USDT", contract = "{addr(USDT)}", decimals = 6 }}]\n'
            + Setup.sink(self.receiver.url)
        )
        return path

    async def start(self, config: Path) -> Daemon:
        port = config.read_text().split('listen = "127.0.0.1:')[1].split('"')[0]
        daemon = launch(config, self.tmp, len(self.started), ENV, http=f"http://127.0.0.1:{port}")
        self.started.append(daemon)
        try:
            await daemon.notify.wait_for("READY=1")
        except AssertionError:
            raise AssertionError(daemon.output()) from None
        return daemon

    async def book(self) -> None:
        import asyncio

        from depositwatch.cli import main

        path = self.tmp / "book.csv"
        path.write_text(
            "chain,address,status,label,owner,revoked_at,reason\n"
            f"eth,{ETH_REVOKED},revoked,r-eth,cust-1,2020-01-01T00:00:00Z,breach\n"
            f"tron,{addr(REVOKED)},revoked,r-tron,cust-1,2020-01-01T00:00:00Z,breach\n"
        )
        config = self.tmp / "book.toml"
        config.write_text(f'[store]\nurl = "{self.store_url}"\n')
        assert await asyncio.to_thread(main, ["--config", str(config), "addresses", "import", str(path)]) == 0


@pytest.fixture
async def world(tmp_path: Path, pg_url: str) -> AsyncIterator[World]:
    async with (
        Anvil(chain_id=CHAIN_ID) as anvil,
        TronNodeServer(TronChain(), api_key=KEY) as tron,
        Receiver() as receiver,
    ):
        w = World(tmp_path, pg_url, anvil, tron, receiver, [])
        await w.book()
        try:
            yield w
        finally:
            reap(w.started)


def alert_of(receiver: Receiver, tx: str) -> dict[str, Any] | None:
    return next(
        (r.json() for r in receiver.accepted if r.json()["txid"] == tx and r.json()["event"] == "detected"), None
    )


async def pay_eth(node: Anvil) -> str:
    tx = str(await send_eth(node.w3, node.accounts[1].address, ETH_REVOKED, 10**15))
    await wait_receipt(node.w3, tx)
    return tx


def pay_tron(chain: TronChain, *, token: bool = False) -> str:
    nonce = chain.next_nonce()
    tx = trc20(CUSTOMER, REVOKED, USDT, 2_000_000, nonce=nonce) if token else trx(CUSTOMER, REVOKED, 7, nonce=nonce)
    chain.mine([tx])
    return txid(tx)


async def test_tron_beside_anvil_and_one_failing_node_does_not_stop_the_other(world: World) -> None:
    daemon = await world.start(world.config())
    receiver = world.receiver
    eth_tx = await pay_eth(world.anvil)
    trx_tx, usdt_tx = pay_tron(world.tron.chain), pay_tron(world.tron.chain, token=True)
    await wait_for(lambda: all(alert_of(receiver, t) for t in (eth_tx, trx_tx, usdt_tx)), what="alerts of both chains")
    trx_alert, usdt_alert = alert_of(receiver, trx_tx), alert_of(receiver, usdt_tx)
    assert trx_alert is not None and usdt_alert is not None
    assert (trx_alert["chain"], trx_alert["chain_id"], trx_alert["kind"]) == ("tron", None, "revoked_incoming")
    assert trx_alert["asset"] == {"symbol": "TRX", "contract": None, "decimals": 6}
    assert usdt_alert["asset"] == {"symbol": "USDT", "contract": addr(USDT), "decimals": 6}
    assert usdt_alert["amount_decimal"] == "2" and usdt_alert["to"] == addr(REVOKED)
    assert usdt_alert["address"]["label"] == "r-tron"

    async with aiohttp.ClientSession() as http:
        sample = await scrape(http, daemon)
        assert sample['depositwatch_chain_state{chain="tron",state="following"}'] == 1
        assert sample['depositwatch_processed_height{chain="tron"}'] >= world.tron.chain.tip - 1

        # the TRON node goes away: Ethereum's alerts keep coming, health names the TRON outage
        port = int(world.tron.url.rsplit(":", 1)[1])
        await world.tron.stop()
        missed = pay_tron(world.tron.chain)
        eth_during = await pay_eth(world.anvil)
        await wait_for(lambda: alert_of(receiver, eth_during) is not None, what="an eth alert during the outage")

        async def tron_health() -> tuple[int, dict[str, Any]]:
            return await health(http, daemon)

        await wait_until_async(tron_health, lambda h: h[1]["chains"]["tron"]["state"] == "node-down")  # type: ignore[index]
        status, body = await health(http, daemon)
        assert status == 503 and body["chains"]["eth"]["state"] == "following"

        # it comes back on the same address: the block mined meanwhile is not missed
        async with TronNodeServer(world.tron.chain, api_key=KEY, port=port):
            await wait_for(lambda: alert_of(receiver, missed) is not None, what="the TRON alert after the outage")
            await wait_until_async(tron_health, lambda h: h[1]["chains"]["tron"]["state"] == "following")  # type: ignore[index]
            assert await stop(daemon) == 0
    assert keys_consistent(receiver)
    assert KEY not in daemon.output()
    assert "internal" in daemon.output()  # the start-up line says whether internal transfers are seen


async def test_a_standby_takes_over_tron_when_the_leader_dies(world: World) -> None:
    """Two instances on PostgreSQL: kill -9 the leader, the standby follows TRON on; every alert once."""
    config = world.config()
    leader = await world.start(config)
    await wait_for(lambda: "chain:tron" in leader.output(), what="the leader's TRON lease")
    second = world.tmp / "second.toml"
    listen = config.read_text().split('listen = "')[1].split('"')[0]
    second.write_text(config.read_text().replace(listen, f"127.0.0.1:{free_port()}"))
    standby = await world.start(second)
    chain = world.tron.chain
    sent = [pay_tron(chain) for _ in range(3)]
    await wait_for(lambda: all(alert_of(world.receiver, t) for t in sent), what="alerts from the leader")
    assert "standing by" in standby.output()
    leader.process.kill()
    leader.process.wait()
    sent += [pay_tron(chain) for _ in range(3)]
    await wait_for(lambda: all(alert_of(world.receiver, t) for t in sent), timeout=60, what="alerts after failover")
    got = {r.json()["txid"] for r in world.receiver.accepted if r.json()["chain"] == "tron"}
    assert got == set(sent) and len(set(detected(world.receiver))) == len(sent)
    assert keys_consistent(world.receiver)
    assert await stop(standby) == 0
