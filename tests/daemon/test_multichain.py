"""One daemon, several EVM networks: two anvil nodes with different chain ids and token decimals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from depositwatch.devnet import Anvil, deploy_token, mint_token, send_eth, send_token, wait_receipt
from tests.daemon.test_daemon import SECRET, Daemon, launch, reap, run_depositwatch, stop
from tests.receivers import Receiver
from tests.util import eventually, free_port

REVOKED = "0x" + "a1" * 20
LATER = "0x" + "b2" * 20


@dataclass
class Net:
    name: str
    node: Anvil
    usdt: str
    decimals: int
    customer: str


@dataclass
class World:
    tmp: Path
    store_url: str
    receiver: Receiver
    eth: Net
    bsc: Net
    daemons: list[Daemon]

    def config(self, *, bsc_chain_id: int = 56) -> Path:
        path = self.tmp / f"config-{len(self.daemons)}.toml"
        sections = [
            f'[store]\nurl = "{self.store_url}"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
            "[alerts]\npoll_interval = 0.05\n"
        ]
        for net, chain_id, symbol in ((self.eth, 31337, "ETH"), (self.bsc, bsc_chain_id, "BNB")):
            sections.append(
                f'[[chains]]\nname = "{net.name}"\nkind = "evm"\nchain_id = {chain_id}\n'
                f'rpc_urls = ["{net.node.http_url}"]\nnative_symbol = "{symbol}"\nconfirmations = 2\n'
                "poll_interval = 0.1\nstart_height = 1\nmax_lag_blocks = 5\n"
                f'[[chains.tokens]]\nsymbol = "USDT"\ncontract = "{net.usdt}"\ndecimals = {net.decimals}\n'
            )
        sections.append(
            f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{self.receiver.url}"\n'
            f'secret = {{ value = "{SECRET}" }}\n'
            "retry = { initial_backoff = 0.05, max_backoff = 0.5 }\n"
        )
        path.write_text("".join(sections))
        return path

    async def cli(self, config: Path, *args: str) -> str:
        return await run_depositwatch("--config", str(config), *args)

    async def start(self, config: Path) -> Daemon:
        daemon = launch(config, self.tmp, len(self.daemons))
        self.daemons.append(daemon)
        return daemon


async def network(name: str, chain_id: int, decimals: int) -> tuple[Anvil, Net]:
    node = Anvil(chain_id=chain_id)
    await node.start()
    deployer, customer = node.accounts[0].address, node.accounts[1].address
    usdt = await deploy_token(node.w3, deployer, "USDT", decimals)
    await wait_receipt(node.w3, await mint_token(node.w3, usdt, deployer, customer, 10**30))
    return node, Net(name, node, usdt, decimals, customer)


@pytest.fixture
async def world(tmp_path: Path, pg_url: str) -> AsyncIterator[World]:
    eth_node, eth = await network("eth", 31337, 6)
    bsc_node, bsc = await network("bsc", 56, 18)
    try:
        async with Receiver() as receiver:
            w = World(tmp_path, pg_url, receiver, eth, bsc, [])
            try:
                yield w
            finally:
                reap(w.daemons)
    finally:
        await eth_node.stop()
        await bsc_node.stop()


def alerts(receiver: Receiver) -> dict[str, dict[str, object]]:
    return {r.json()["txid"]: r.json() for r in receiver.accepted if r.json()["event"] == "detected"}


async def wait_for_tx(receiver: Receiver, txid: str, timeout: float = 30.0) -> dict[str, object]:
    await eventually(lambda: txid in alerts(receiver), timeout, f"an alert for {txid}")
    return alerts(receiver)[txid]


async def test_two_networks_one_daemon(world: World) -> None:
    """Transfers match on their own chain only; a stopped node does not delay the other; evm:* revokes on both."""
    config = world.config()
    book = world.tmp / "book.csv"
    book.write_text(
        "chain,address,status,label,owner,revoked_at,reason\n"
        f"eth,{REVOKED},revoked,r-eth,cust-1,2020-01-01T00:00:00Z,breach\n"
        f"bsc,{REVOKED},revoked,r-bsc,cust-1,2020-01-01T00:00:00Z,breach\n"
        f"eth,{LATER},active,l-eth,cust-2,,\n"
        f"bsc,{LATER},active,l-bsc,cust-2,,\n"
    )
    await world.cli(config, "addresses", "import", str(book))
    daemon = await world.start(config)
    await daemon.notify.wait_for("READY=1")

    eth_tx = await send_token(world.eth.node.w3, world.eth.usdt, world.eth.customer, REVOKED, 5 * 10**6)
    bsc_tx = await send_token(world.bsc.node.w3, world.bsc.usdt, world.bsc.customer, REVOKED, 5 * 10**18)
    eth_alert = await wait_for_tx(world.receiver, eth_tx)
    bsc_alert = await wait_for_tx(world.receiver, bsc_tx)
    assert (eth_alert["chain"], eth_alert["chain_id"], eth_alert["amount_decimal"]) == ("eth", 31337, "5")
    assert (bsc_alert["chain"], bsc_alert["chain_id"], bsc_alert["amount_decimal"]) == ("bsc", 56, "5")
    assert bsc_alert["asset"] == {"symbol": "USDT", "contract": world.bsc.usdt, "decimals": 18}
    assert eth_alert["address"]["label"] == "r-eth" and bsc_alert["address"]["label"] == "r-bsc"
    native = await send_eth(world.bsc.node.w3, world.bsc.customer, REVOKED, 10**18)
    assert (await wait_for_tx(world.receiver, native))["asset"]["symbol"] == "BNB"  # type: ignore[index]

    # one node stops: the other chain's alerts keep coming
    await world.eth.node.stop()
    bsc_tx2 = await send_eth(world.bsc.node.w3, world.bsc.customer, REVOKED, 1)
    await wait_for_tx(world.receiver, bsc_tx2, timeout=10)

    # one revocation across every EVM chain: the bsc address (its node up) alerts at once
    listing = world.tmp / "leaked.txt"
    listing.write_text(LATER + "\n")
    reloads = daemon.output().count("address book reloaded")
    out = await world.cli(
        config,
        "addresses",
        "revoke",
        "--chain",
        "evm:*",
        "--file",
        str(listing),
        "--at",
        "2021-01-01T00:00:00Z",
        "--reason",
        "second leak",
    )
    assert "on bsc, eth" in out
    await eventually(lambda: daemon.output().count("address book reloaded") > reloads, 30, "the revocation to load")
    bsc_tx3 = await send_eth(world.bsc.node.w3, world.bsc.customer, LATER, 7)
    assert (await wait_for_tx(world.receiver, bsc_tx3))["kind"] == "revoked_incoming"
    listed = await world.cli(config, "addresses", "list", "--status", "revoked", "--format", "json")
    assert listed.lower().count(LATER[2:]) == 2  # revoked on both chains
    assert await stop(daemon) == 0


async def test_wrong_chain_id_is_refused(world: World) -> None:
    """A node answering with another chain id than configured stops the daemon at start, saying which."""
    config = world.config(bsc_chain_id=97)
    daemon = await world.start(config)
    code = await asyncio.to_thread(daemon.process.wait, 60)
    assert code != 0
    output = daemon.output()
    assert "chain bsc" in output and "56" in output and "97" in output
