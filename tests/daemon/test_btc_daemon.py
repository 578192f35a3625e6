"""The daemon following Bitcoin: the regtest stand-in, mempool first sight, mined, confirmed, a sweep."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.btcnode import BitcoinRegtestServer, p2tr, p2wpkh, script_to_address
from tests.daemon.test_daemon import SECRET, execute_sql, free_port, launch, reap, run_depositwatch, stop
from tests.receivers import Receiver
from tests.util import eventually

pytestmark = pytest.mark.filterwarnings("ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning")

REVOKED = p2wpkh(b"\xa1" * 20)
ACTIVE = p2tr(b"\xc3" * 32)


def events(receiver: Receiver, txid: str) -> list[tuple[str, str, int, bool]]:
    return [
        (b["kind"], b["event"], b["confirmations"], b["mempool"])
        for b in (r.json() for r in receiver.accepted)
        if b["txid"] == txid
    ]


async def wait_for(receiver: Receiver, txid: str, event: str, timeout: float = 30.0, kind: str | None = None) -> None:
    await eventually(
        lambda: any(e[1] == event and kind in (None, e[0]) for e in events(receiver, txid)),
        timeout,
        f"{event} for {txid}",
        detail=lambda: str(events(receiver, txid)),
    )


async def test_daemon_follows_bitcoin_with_mempool_and_sweeps(tmp_path: Path, pg_url: str) -> None:
    """Mempool sighting alerts at once (0 confirmations), then `mined` and `confirmed`; a sweep alerts too."""
    async with BitcoinRegtestServer() as node, Receiver() as receiver:
        chain = node.chain
        chain.mine(101)
        revoked_address = script_to_address(REVOKED, "regtest")
        active_address = script_to_address(ACTIVE, "regtest")
        book = tmp_path / "book.csv"
        book.write_text(
            "chain,address,status,label,owner,revoked_at,reason\n"
            f"btc,{revoked_address},revoked,old-1,cust-1,2020-01-01T00:00:00Z,breach\n"
            f"btc,{active_address},active,new-1,cust-2,,\n"
        )
        config = tmp_path / "config.toml"
        config.write_text(
            f'[store]\nurl = "{pg_url}"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n[alerts]\npoll_interval = 0.05\n'
            '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
            f'rpc_urls = ["{node.url}"]\nrpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
            f"confirmations = 2\npoll_interval = 0.1\nstart_height = {chain.height + 1}\nmempool = true\n"
            f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\nsecret = {{ value = "{SECRET}" }}\n'
            'kinds = ["revoked_incoming", "revoked_outgoing", "deposit"]\n'
            "retry = { initial_backoff = 0.05, max_backoff = 0.5 }\n"
        )
        await run_depositwatch("--config", str(config), "addresses", "import", str(book))
        daemon = launch(config, tmp_path, 0)
        notify = daemon.notify
        try:
            await notify.wait_for("READY=1")
            pay = chain.send([(REVOKED, 70_000), (ACTIVE, 30_000)])
            await wait_for(receiver, pay.txid, "detected")
            assert events(receiver, pay.txid)[0] == ("revoked_incoming", "detected", 0, True)
            chain.mine(1)
            await wait_for(receiver, pay.txid, "mined")
            chain.mine(1)
            await wait_for(receiver, pay.txid, "confirmed", kind="revoked_incoming")
            # the deposit to the active address is final at 2 confirmations and goes to the deposits sink
            # (its own delivery, which may arrive before or after the alert's)
            await wait_for(receiver, pay.txid, "confirmed", kind="deposit")
            assert ("deposit", "confirmed", 2, False) in events(receiver, pay.txid)

            sweep = chain.send([(p2wpkh(b"\x66" * 20), 60_000)], from_script=REVOKED)
            chain.mine(1)
            # the sweep's change returns to the revoked address: its revoked_incoming can come first
            await wait_for(receiver, sweep.txid, "detected", kind="revoked_outgoing")
            assert await stop(daemon) == 0, daemon.output()
        finally:
            reap([daemon])


FAIL_MEMPOOL_MATCHES = """
CREATE FUNCTION fail_mempool() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected mempool store failure'; END $$;
CREATE TRIGGER fail_mempool BEFORE INSERT ON matches FOR EACH ROW
WHEN (NEW.status = 'mempool') EXECUTE FUNCTION fail_mempool();
"""
HEAL_MEMPOOL_MATCHES = "DROP TRIGGER fail_mempool ON matches; DROP FUNCTION fail_mempool();"


async def test_mempool_watcher_whose_store_fails_is_restarted_and_says_so(tmp_path: Path, pg_url: str) -> None:
    """A store error in the mempool watcher is logged, counted and the watcher restarted: mempool alerts
    come back once the store is repaired, without a block being mined."""
    async with BitcoinRegtestServer() as node, Receiver() as receiver, aiohttp.ClientSession() as http:
        chain = node.chain
        chain.mine(101)
        port = free_port()
        config = tmp_path / "config.toml"
        config.write_text(
            f'[store]\nurl = "{pg_url}"\n[http]\nlisten = "127.0.0.1:{port}"\n[alerts]\npoll_interval = 0.05\n'
            '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
            f'rpc_urls = ["{node.url}"]\nrpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
            f"confirmations = 2\npoll_interval = 0.1\nstart_height = {chain.height + 1}\nmempool = true\n"
            f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\nsecret = {{ value = "{SECRET}" }}\n'
            "retry = { initial_backoff = 0.05, max_backoff = 0.5 }\n"
        )
        book = tmp_path / "book.csv"
        book.write_text(
            "chain,address,status,label,owner,revoked_at,reason\n"
            f"btc,{script_to_address(REVOKED, 'regtest')},revoked,old-1,cust-1,2020-01-01T00:00:00Z,breach\n"
        )
        await run_depositwatch("--config", str(config), "addresses", "import", str(book))
        daemon = launch(config, tmp_path, 0)
        try:
            await daemon.notify.wait_for("READY=1")
            await execute_sql(pg_url, FAIL_MEMPOOL_MATCHES)
            pay = chain.send([(REVOKED, 70_000)])

            async def restarts() -> float:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    for line in (await resp.text()).splitlines():
                        if line.startswith('depositwatch_component_restarts_total{component="mempool:btc"}'):
                            return float(line.rsplit(" ", 1)[1])
                return -1.0

            async def restarted() -> bool:
                return await restarts() >= 1

            await eventually(restarted, 30, "the mempool watcher restarted", every=0.1, detail=daemon.output)
            output = daemon.output()
            assert "mempool watcher failed; restarting with backoff" in output
            assert "injected mempool store failure" in output
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                component = (await resp.json())["components"]["mempool:btc"]
            assert component["restarts"] >= 1 and "injected mempool store failure" in component["error"]
            assert events(receiver, pay.txid) == []  # nothing mined, the mempool path is stopped by the store

            await execute_sql(pg_url, HEAL_MEMPOOL_MATCHES)
            await wait_for(receiver, pay.txid, "detected")  # the restarted watcher, still unmined
            assert events(receiver, pay.txid)[0] == ("revoked_incoming", "detected", 0, True)
            assert daemon.process.poll() is None
            assert await stop(daemon) == 0, daemon.output()
        finally:
            reap([daemon])
