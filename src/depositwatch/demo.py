"""`depositwatch demo`: the whole product on a local chain, in under a minute, cleaning up after itself.

It starts anvil, deploys a demo USDT, writes an address book (one revoked, one active address) to an
embedded SQLite store, runs the real daemon with a local webhook receiver that checks every signature,
then sends ETH and USDT to the revoked address, sweeps them out, and makes a deposit to the active one.
The receiver checks Standard Webhooks signatures with the project's own `verify` (the same check as the
`standardwebhooks` package, which the tests use), so the demo needs nothing beyond the runtime install.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from depositwatch.addressbook import ChainDirectory, read_import_csv
from depositwatch.alerts.signing import ID_HEADER, SignatureError, decode_secret, encode_secret, verify
from depositwatch.config import (
    AlertsConfig,
    ChainConfig,
    Config,
    HttpConfig,
    LogConfig,
    RetryConfig,
    Secret,
    SinkConfig,
    StoreConfig,
    TokenConfig,
)
from depositwatch.jsonutil import loads
from depositwatch.logging import setup_logging
from depositwatch.service import Service
from depositwatch.store import Scope, open_store
from depositwatch.systemd import Notifier

WAIT = 60.0


class DemoError(Exception):
    """The demo could not finish; the message says at which step."""


class Receiver:
    """A webhook receiver as a security team would run one: verify, deduplicate, keep."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._key = decode_secret(secret)
        self.alerts: list[dict[str, Any]] = []
        self.keys: set[str] = set()
        self.rejected = 0
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/alerts"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            key = verify(self._key, request.headers, body)
        except SignatureError:
            self.rejected += 1
            return web.Response(status=401)
        if key not in self.keys:  # a repeat carries the same key: drop it
            self.keys.add(key)
            self.alerts.append(loads(body))
            self.arrived.set()
        return web.Response(status=204)

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            for alert in self.alerts:
                if predicate(alert):
                    return alert
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoError(f"no alert for {what} within {WAIT:.0f} s")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)


def _is(txid: str, **fields: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for the alert about `txid` with these field values."""
    return lambda alert: alert["txid"] == txid and all(alert[k] == v for k, v in fields.items())


def _show(say: Callable[[str], None], alert: dict[str, Any]) -> None:
    address = alert["address"]
    say(
        f"    ALERT {alert['kind']} ({alert['event']}, {alert['severity']}): {alert['amount_decimal']} "
        f"{alert['asset']['symbol']} {'to' if alert['kind'] == 'revoked_incoming' else 'from'} "
        f"{address['address']} [{address['label']}, owner {address['owner']}]"
    )
    say(
        f"          tx {alert['txid']} block {alert['block']['height'] if alert['block'] else 'mempool'}, "
        f"id {alert['id']}, signature verified"
    )


async def run_demo(say: Callable[[str], None] = print) -> int:
    """Run the demo; return 0 when every step showed what it should."""
    from depositwatch.devnet import Anvil, deploy_token, impersonate, mint_token, send_eth, send_token, wait_receipt

    setup_logging("warning", "console")  # the demo speaks for itself; the daemon's info logs would drown it
    say("depositwatch demo: a local Ethereum node, a revoked deposit address, signed alerts\n")
    with tempfile.TemporaryDirectory(prefix="depositwatch-demo-") as tmp:
        async with Anvil(chain_id=31337) as node:
            w3 = node.w3
            deployer, customer, attacker = (node.accounts[i].address for i in (0, 1, 9))
            revoked = "0x" + secrets.token_hex(20)
            active = "0x" + secrets.token_hex(20)
            say(f"[1/6] anvil at {node.http_url}; deploying demo USDT (6 decimals)")
            usdt = await deploy_token(w3, deployer, "USDT", 6)
            await wait_receipt(w3, await mint_token(w3, usdt, deployer, customer, 1_000 * 10**6))

            store_path = Path(tmp) / "depositwatch.db"
            book = Path(tmp) / "book.csv"
            book.write_text(
                "chain,address,status,label,owner,revoked_at,reason\n"
                f"eth,{revoked},revoked,deposit-4711,customer-4711,{int(time.time()) - 3600},demo breach\n"
                f"eth,{active},active,deposit-4712,customer-4712,,\n"
            )
            say(f"[2/6] address book: {revoked} REVOKED (breach), {active} active")
            entries = read_import_csv(book.read_text(), ChainDirectory(ChainDirectory.DEFAULTS), source=str(book))
            store = await open_store(f"sqlite:///{store_path}", migrate=True)
            try:
                await store.import_addresses(entries)
            finally:
                await store.close()

            receiver = Receiver(encode_secret(secrets.token_bytes(32)))
            await receiver.start()
            head = await w3.eth.block_number
            config = Config(
                store=StoreConfig(url=f"sqlite:///{store_path}"),
                chains=[
                    ChainConfig(
                        name="eth",
                        kind="evm",
                        network="anvil",
                        chain_id=31337,
                        rpc_urls=[node.http_url],
                        tokens=[TokenConfig(symbol="USDT", contract=usdt, decimals=6)],
                        confirmations=3,
                        poll_interval=0.2,
                        start_height=head + 1,
                        max_lag_blocks=5,
                    )
                ],
                sinks=[
                    SinkConfig(
                        name="security-webhook",
                        type="webhook",
                        url=receiver.url,
                        secret=Secret(value=SecretStr(receiver.secret)),
                        kinds=["revoked_incoming", "revoked_outgoing"],
                        retry=RetryConfig(initial_backoff=0.2, max_backoff=2.0),
                    )
                ],
                alerts=AlertsConfig(poll_interval=0.1),
                http=HttpConfig(listen="127.0.0.1:0"),
                log=LogConfig(level="warning"),
            )
            service = Service(config, notifier=Notifier(address=""), install_signals=False)
            daemon = asyncio.create_task(service.run())
            try:
                say(f"[3/6] daemon running (store {store_path.name}, webhook {receiver.url})\n")
                say("[4/6] a customer sends 1.5 ETH and 250 USDT to the REVOKED address")
                eth_in = await send_eth(w3, customer, revoked, 15 * 10**17)
                usdt_in = await send_token(w3, usdt, customer, revoked, 250 * 10**6)
                for txid in (eth_in, usdt_in):
                    _show(say, await receiver.wait_for(_is(txid, event="detected"), f"transfer {txid}"))

                say("\n[5/6] the attacker, holding the leaked key, sweeps the revoked address")
                await impersonate(w3, revoked)
                eth_out = await send_eth(w3, revoked, attacker, 14 * 10**17)
                usdt_out = await send_token(w3, usdt, revoked, attacker, 250 * 10**6)
                for txid in (eth_out, usdt_out):
                    _show(say, await receiver.wait_for(_is(txid, kind="revoked_outgoing"), f"sweep {txid}"))

                say("\n[6/6] a customer deposits 100 USDT to an ACTIVE address: recorded, no alert")
                deposit = await send_token(w3, usdt, customer, active, 100 * 10**6)
                await wait_receipt(w3, deposit)
                await _wait_for_deposit(service, deposit)
                for _ in range(3):  # deepen the chain so alerts reach their confirmations
                    await send_eth(w3, deployer, deployer, 1)
                await receiver.wait_for(_is(usdt_out, event="confirmed"), "the sweep's confirmation")
                say(f"    deposit {deposit} recorded for customer-4712 (deposits are not alerts)")
            finally:
                service.stop()
                await asyncio.wait_for(daemon, 30)
                await receiver.stop()
            kinds = sorted({(a["kind"], a["event"]) for a in receiver.alerts})
            say(
                f"\nsummary: {len(receiver.alerts)} signed alerts received ({', '.join(f'{k} {e}' for k, e in kinds)}),"
                f" {receiver.rejected} rejected signatures, every repeat deduplicated by {ID_HEADER}."
            )
            say("the demo cleaned up: anvil stopped, the temporary store removed.")
            return 0 if receiver.rejected == 0 else 1


async def _wait_for_deposit(service: Service, txid: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if service.store is not None:
            rows = await service.store.matches(Scope.live(), kind=None)
            if any(r["txid"] == txid and r["kind"] == "deposit" for r in rows):
                return
        await asyncio.sleep(0.1)
    raise DemoError(f"the deposit {txid} was not recorded within {WAIT:.0f} s")
