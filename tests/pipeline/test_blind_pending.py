"""Blind spot 2 of issue 18 on anvil with `--no-mining`: pending Ethereum transactions.

A pending transaction moving ETH to or from a revoked address alerts at once (`confirmations: 0`,
`mempool: true`), then the block brings the `mined` update and the confirmations; a transaction dropped
from the pool, or replaced by another of the same sender and nonce, is retracted. The same for pending
ERC-20 `transfer` and `transferFrom` calls (configured tokens and any other contract), whose block match
takes the pending alert's id; a token call that reverts when mined is retracted.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.devnet import (
    Anvil,
    deploy_token,
    impersonate,
    mint_token,
    send_eth,
    send_token,
    send_transaction,
    set_balance,
)
from depositwatch.evm_pending import PendingWatcher, parse_txpool, token_call
from depositwatch.follower import Follower
from depositwatch.models import AddressEntry, AddressStatus, MatchKind, match_id, pending_token_id
from depositwatch.pipeline import attach, make_policy, make_settings, make_source
from depositwatch.registry import AddressRegistry
from depositwatch.store import Scope, SqlStore

CHAIN_ID = 31337
REVOKED = "0x" + "a1" * 20


def key(address: str) -> bytes:
    return bytes.fromhex(address[2:].lower())


@dataclass
class Rig:
    node: Anvil
    store: SqlStore
    follower: Follower
    watcher: PendingWatcher

    async def drain(self) -> None:
        while await self.follower.step():
            pass

    async def events(self, kind: MatchKind, txid: str) -> list[tuple[str, str, int, bool]]:
        """(event, kind, confirmations, mempool) of the alert's messages, oldest first."""
        alert = match_id("eth", kind, txid, None)
        messages = sorted(
            (m for m in await self.store.outbox.messages(limit=1000) if m.alert_id == alert), key=lambda m: m.rev
        )
        out = []
        for message in messages:
            payload = json.loads(message.payload)
            out.append((message.event, payload["kind"], payload["confirmations"], payload["mempool"]))
        return out


@asynccontextmanager
async def rigged(store: SqlStore, node: Anvil, **settings: Any) -> AsyncIterator[Rig]:
    """A follower and a pending watcher on `node`, wired as the daemon wires them, the book holding REVOKED."""
    hour_ago = int(time.time()) - 3600
    entry = AddressEntry("eth", REVOKED, key(REVOKED), AddressStatus.REVOKED, "r", "cust-r", hour_ago)
    await store.import_addresses([(2, entry)])
    registry = await AddressRegistry.load(store)
    config = ChainConfig.model_validate(
        {"name": "eth", "kind": "evm", "chain_id": CHAIN_ID, "rpc_urls": [node.http_url], "confirmations": 2} | settings
    )
    source = make_source(config)
    attach(source, registry, None, store.tokens)
    policy = make_policy(config, AlertsConfig())
    follower = Follower(
        source=source,
        store=store,
        registry=registry,
        policy=policy,
        scope=Scope.live(),
        cursor_name="live:eth",
        settings=make_settings(config, start_height=await node.block_number() + 1),
    )
    await source.open()
    try:
        await follower.start()
        await follower.step()
        watcher = PendingWatcher(
            source, store, registry, policy, Scope.live(), lambda: follower.lag == 0, drop_grace=0.0
        )
        yield Rig(node, store, follower, watcher)
    finally:
        await source.close()


@pytest.fixture
async def rig(store: SqlStore) -> AsyncIterator[Rig]:
    async with Anvil(chain_id=CHAIN_ID, no_mining=True) as node, rigged(store, node) as made:
        yield made


@dataclass
class Tokens:
    rig: Rig
    usdt: str  # configured
    fake: str  # not configured: symbol FAKE, 9 decimals
    customer: str
    attacker: str


@pytest.fixture
async def tokens(store: SqlStore) -> AsyncIterator[Tokens]:
    async with Anvil(chain_id=CHAIN_ID, no_mining=True) as node:
        w3 = node.w3
        deployer, customer, attacker = (node.accounts[i].address for i in (0, 1, 9))
        usdt = await deploy_token(w3, deployer, "USDT", 6)
        fake = await deploy_token(w3, deployer, "FAKE", 9, name="Fake Tether")
        for token in (usdt, fake):
            await mint_token(w3, token, deployer, customer, 10**15)
            await mint_token(w3, token, deployer, REVOKED, 10**15)
        await node.mine()
        usdt_config = {"symbol": "USDT", "contract": usdt, "decimals": 6}
        async with rigged(store, node, tokens=[usdt_config]) as made:
            yield Tokens(made, usdt, fake, customer, attacker)


def _payloads(messages: list[Any], alert: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sorted(messages, key=lambda m: m.rev) if m.alert_id == alert]


async def test_pending_incoming_then_mined_then_confirmed(rig: Rig) -> None:
    """First sight in the pool, then the block's `mined` update, then `confirmed`; the start-up check
    says the node offers pending transactions."""
    w3 = rig.node.w3
    assert await rig.watcher.offered()
    customer = rig.node.accounts[1].address
    txid = await send_eth(w3, customer, REVOKED, 10**17)
    other = await send_eth(w3, customer, rig.node.accounts[2].address, 10**17)  # touches nothing watched
    assert await rig.watcher.step() == 1
    assert await rig.watcher.step() == 0  # nothing new
    assert await rig.events(MatchKind.REVOKED_INCOMING, txid) == [("detected", "revoked_incoming", 0, True)]
    await rig.node.mine()
    await rig.drain()
    await rig.node.mine()
    await rig.drain()
    assert await rig.watcher.step() == 0  # mined: nothing retracted
    assert await rig.events(MatchKind.REVOKED_INCOMING, txid) == [
        ("detected", "revoked_incoming", 0, True),
        ("mined", "revoked_incoming", 1, False),
        ("confirmed", "revoked_incoming", 2, False),
    ]
    assert {m["txid"] for m in await rig.store.matches(Scope.live())} == {txid}
    assert other not in {m["txid"] for m in await rig.store.matches(Scope.live())}


async def test_pending_outgoing_sweep(rig: Rig) -> None:
    """The leaked key moving ETH out, seen while pending."""
    w3 = rig.node.w3
    await impersonate(w3, REVOKED)
    await set_balance(w3, REVOKED, 10**18)
    txid = await send_eth(w3, REVOKED, rig.node.accounts[9].address, 3 * 10**17)
    assert await rig.watcher.step() == 1
    assert await rig.events(MatchKind.REVOKED_OUTGOING, txid) == [("detected", "revoked_outgoing", 0, True)]


async def test_dropped_and_replaced_transactions_are_retracted(rig: Rig) -> None:
    """A pending transaction dropped from the pool, and one replaced by another with the same sender and
    nonce that is then mined, are retracted; the replacement (to nobody watched) alerts nothing."""
    w3 = rig.node.w3
    customer = rig.node.accounts[1].address
    dropped = await send_eth(w3, customer, REVOKED, 5 * 10**16)
    assert await rig.watcher.step() == 1
    assert await rig.node.rpc("anvil_dropTransaction", dropped) is not None
    assert await rig.watcher.step() == 1
    assert [e[0] for e in await rig.events(MatchKind.REVOKED_INCOMING, dropped)] == ["detected", "retracted"]
    assert (await rig.events(MatchKind.REVOKED_INCOMING, dropped))[-1][1] == "retracted"

    nonce = int(await rig.node.rpc("eth_getTransactionCount", customer, "pending"), 16)
    legacy = {"from": customer, "nonce": hex(nonce), "gas": hex(21_000)}
    replaced = await rig.node.rpc(
        "eth_sendTransaction", {**legacy, "to": REVOKED, "value": hex(10**16), "gasPrice": hex(2 * 10**9)}
    )
    assert await rig.watcher.step() == 1
    replacement = await rig.node.rpc(
        "eth_sendTransaction",
        {**legacy, "to": rig.node.accounts[3].address, "value": hex(10**16), "gasPrice": hex(30 * 10**9)},
    )
    assert replacement != replaced
    await rig.node.mine()
    await rig.drain()
    assert await rig.node.rpc("eth_getTransactionByHash", replaced) is None
    assert await rig.watcher.step() == 1
    assert [e[0] for e in await rig.events(MatchKind.REVOKED_INCOMING, replaced)] == ["detected", "retracted"]
    statuses = {m["txid"]: m["status"] for m in await rig.store.matches(Scope.live())}
    assert statuses == {dropped: "retracted", replaced: "retracted"}


async def test_a_restarted_watcher_retracts_what_an_earlier_one_recorded(tokens: Tokens) -> None:
    """After a restart or a failover the watcher starts with an empty memory: the pending ETH and token
    sightings recorded before it, dropped from the pool since, are still retracted (from the store)."""
    rig = tokens.rig
    eth = await send_eth(rig.node.w3, tokens.customer, REVOKED, 10**15)
    token = await send_token(rig.node.w3, tokens.usdt, tokens.customer, REVOKED, 10**6)
    assert await rig.watcher.step() == 2
    w = rig.watcher
    fresh = PendingWatcher(w.source, w.store, w.registry, w.policy, w.scope, w.caught_up, drop_grace=0.0)
    for tx in (eth, token):
        assert await rig.node.rpc("anvil_dropTransaction", tx) is not None
    assert await fresh.step() == 2
    assert {r["txid"]: r["status"] for r in await rig.store.matches(Scope.live())} == {
        eth: "retracted",
        token: "retracted",
    }
    assert [e[0] for e in await rig.events(MatchKind.REVOKED_INCOMING, eth)] == ["detected", "retracted"]


def test_hostile_pool_answers_are_refused() -> None:
    """Malformed `txpool_content` answers raise BadNodeAnswer naming the chain and the call."""
    sender = "0x" + "11" * 20
    good = {"hash": "0x" + "22" * 32, "from": sender, "to": REVOKED, "value": "0x1"}
    assert list(parse_txpool({"pending": {sender: {"0": good}}, "queued": {}}, "eth")) == [good["hash"]]
    for answer in (
        None,
        {"queued": {}},
        {"pending": {"nonsense": {}}},
        {"pending": {sender: {"0": {**good, "from": "0x" + "33" * 20}}}},
        {"pending": {sender: {"0": {**good, "value": "1e18"}}}},
        {"pending": {sender: {"0": {**good, "hash": "0x12"}}}},
        {"pending": {sender: {"0": {**good, "to": 7}}}},
    ):
        with pytest.raises(BadNodeAnswer, match="chain eth: txpool_content"):
            parse_txpool(answer, "eth")


async def test_pending_token_transfer_then_mined_then_confirmed(tokens: Tokens) -> None:
    """A pending `transfer` of a configured token to a revoked address alerts at once; the block's match
    takes that alert's id (one alert, no second one for the log), with the log's index once mined."""
    rig = tokens.rig
    txid = await send_token(rig.node.w3, tokens.usdt, tokens.customer, REVOKED, 5 * 10**6)
    await send_token(rig.node.w3, tokens.usdt, tokens.customer, tokens.attacker, 10**6)  # nothing watched
    assert await rig.watcher.step() == 1
    alert = pending_token_id("eth", MatchKind.REVOKED_INCOMING, txid, tokens.usdt)
    first = _payloads(await rig.store.outbox.messages(), alert)
    assert [(p["event"], p["kind"], p["confirmations"], p["mempool"]) for p in first] == [
        ("detected", "revoked_incoming", 0, True)
    ]
    assert (first[0]["asset"]["symbol"], first[0]["amount_decimal"], first[0]["token_listed"]) == ("USDT", "5", True)
    assert first[0]["index"] is None and first[0]["txid"] == txid
    await rig.node.mine()
    await rig.drain()
    await rig.node.mine()
    await rig.drain()
    assert await rig.watcher.step() == 0
    sent = _payloads(await rig.store.outbox.messages(), alert)
    assert [(p["event"], p["confirmations"], p["mempool"]) for p in sent] == [
        ("detected", 0, True),
        ("mined", 1, False),
        ("confirmed", 2, False),
    ]
    assert sent[-1]["index"] is not None and sent[-1]["amount"] == str(5 * 10**6)
    rows = await rig.store.matches(Scope.live())
    assert [(r["id"], r["txid"], r["status"]) for r in rows] == [(alert, txid, "confirmed")]
    assert {m.alert_id for m in await rig.store.outbox.messages()} == {alert}


async def test_pending_transfer_from_and_unlisted_tokens(tokens: Tokens) -> None:
    """`transferFrom` out of a revoked address (a sweep through an allowance) and a `transfer` of a token
    the config does not list, both while pending; the unlisted one is named from its contract."""
    rig = tokens.rig
    w3 = rig.node.w3
    await impersonate(w3, REVOKED)
    await set_balance(w3, REVOKED, 10**18)
    approve = bytes.fromhex("095ea7b3") + abi_encode(["address", "uint256"], [tokens.attacker, 10**12])
    await send_transaction(w3, REVOKED, tokens.usdt, data=approve, gas=100_000)
    await rig.node.mine()
    await rig.drain()
    pulled = bytes.fromhex("23b872dd") + abi_encode(
        ["address", "address", "uint256"], [REVOKED, tokens.attacker, 7 * 10**6]
    )
    sweep = await send_transaction(w3, tokens.attacker, tokens.usdt, data=pulled, gas=100_000)
    fake_in = await send_token(w3, tokens.fake, tokens.customer, REVOKED, 3 * 10**9)
    assert await rig.watcher.step() == 2
    out = _payloads(
        await rig.store.outbox.messages(), pending_token_id("eth", MatchKind.REVOKED_OUTGOING, sweep, tokens.usdt)
    )
    assert [(p["kind"], p["from"].lower(), p["to"].lower(), p["amount_decimal"]) for p in out] == [
        ("revoked_outgoing", REVOKED, tokens.attacker.lower(), "7")
    ]
    fake = _payloads(
        await rig.store.outbox.messages(), pending_token_id("eth", MatchKind.REVOKED_INCOMING, fake_in, tokens.fake)
    )
    assert (fake[0]["asset"], fake[0]["token_listed"], fake[0]["amount_decimal"]) == (
        {"symbol": "FAKE", "contract": tokens.fake, "decimals": 9},
        False,
        "3",
    )
    await rig.node.mine()
    await rig.drain()
    statuses = {(r["txid"], r["kind"]): r["status"] for r in await rig.store.matches(Scope.live())}
    assert statuses == {(sweep, "revoked_outgoing"): "seen", (fake_in, "revoked_incoming"): "seen"}


async def test_pending_token_calls_dropped_or_reverted_are_retracted(tokens: Tokens) -> None:
    """A pending token transfer dropped from the pool is retracted; one that reverts when mined (more
    than the sender holds) is retracted once mined, as no Transfer log follows it."""
    rig = tokens.rig
    w3 = rig.node.w3
    dropped = await send_token(w3, tokens.usdt, tokens.customer, REVOKED, 10**6)
    assert await rig.watcher.step() == 1
    assert await rig.node.rpc("anvil_dropTransaction", dropped) is not None
    assert await rig.watcher.step() == 1
    alert = pending_token_id("eth", MatchKind.REVOKED_INCOMING, dropped, tokens.usdt)
    assert [p["event"] for p in _payloads(await rig.store.outbox.messages(), alert)] == ["detected", "retracted"]

    too_much = await send_token(w3, tokens.usdt, tokens.customer, REVOKED, 10**18, gas=100_000)
    assert await rig.watcher.step() == 1
    await rig.node.mine()
    await rig.drain()
    receipt = await rig.node.rpc("eth_getTransactionReceipt", too_much)
    assert receipt["status"] == "0x0"
    assert await rig.watcher.step() == 1
    alert = pending_token_id("eth", MatchKind.REVOKED_INCOMING, too_much, tokens.usdt)
    assert [p["event"] for p in _payloads(await rig.store.outbox.messages(), alert)] == ["detected", "retracted"]
    assert {r["txid"]: r["status"] for r in await rig.store.matches(Scope.live())} == {
        dropped: "retracted",
        too_much: "retracted",
    }


class _BlockFirst:
    """The watcher's store, with the block of the transactions it is about to record committed first: the
    order in which a pool read just before the block and the block's commit can reach the store."""

    def __init__(self, rig: Rig) -> None:
        self._rig = rig

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rig.store, name)

    async def record_mempool(self, *args: Any) -> int:
        await self._rig.node.mine()
        await self._rig.drain()
        return await self._rig.store.record_mempool(*args)


@pytest.mark.parametrize("kind", ["token", "eth"])
async def test_pending_read_before_its_block_is_committed_alerts_once(tokens: Tokens, kind: str) -> None:
    """A transaction read from the pool whose block is committed before the pending sighting is recorded:
    the block's alert is the only one (no second alert under another id); the sighting adds nothing."""
    rig = tokens.rig
    if kind == "token":
        txid = await send_token(rig.node.w3, tokens.usdt, tokens.customer, REVOKED, 5 * 10**6)
    else:
        txid = await send_eth(rig.node.w3, tokens.customer, REVOKED, 10**15)
    rig.watcher.store = _BlockFirst(rig)  # type: ignore[assignment]
    assert await rig.watcher.step() == 0
    rows = await rig.store.matches(Scope.live())
    assert [(r["txid"], r["kind"], r["status"]) for r in rows] == [(txid, "revoked_incoming", "seen")]
    messages = [m for m in await rig.store.outbox.messages() if m.alert_id is not None]
    assert [(m.alert_id, m.event) for m in messages] == [(rows[0]["id"], "detected")]
    if kind == "token":
        assert rows[0]["id"] != pending_token_id("eth", MatchKind.REVOKED_INCOMING, txid, tokens.usdt)


def _word(address: str) -> str:
    return address[2:].lower().rjust(64, "0")


def test_token_call_data_is_decoded_strictly() -> None:
    """`transfer` and `transferFrom` call data: exact length, address words with 12 zero bytes; anything
    else is no token call (None), never an error."""
    sender, to = "0x" + "11" * 20, "0x" + "22" * 20
    amount = f"{10**6:064x}"
    good = "0xa9059cbb" + _word(to) + amount
    assert token_call(good, sender) == (bytes.fromhex("11" * 20), bytes.fromhex("22" * 20), 10**6)
    assert token_call("0x23b872dd" + _word(sender) + _word(to) + "f" * 64, "0x" + "33" * 20) == (
        bytes.fromhex("11" * 20),
        bytes.fromhex("22" * 20),
        2**256 - 1,
    )
    for bad in (
        good + "00",  # one byte more
        good[:-2],  # one byte less
        "0xa9059cbb" + "01" + _word(to)[2:] + amount,  # an address word with its upper bytes set
        "0x23b872dd" + _word(to) + amount,  # transferFrom with transfer's arguments
        "0xa9059cbc" + _word(to) + amount,  # another selector
        "0xa9059cbb" + _word(to) + "zz" * 32,  # not hex
        "0xa9059cbb" + _word(to)[:-2] + " 1" + amount,  # a space inside an address word
        "0xa9059cbb" + _word(to) + "_1" + amount[2:],  # int() would take the underscore
        "0x",
        "",
    ):
        assert token_call(bad, sender) is None, bad


def test_pool_inputs_must_be_hex_strings() -> None:
    """A pending transaction's `input` that is not a string is a malformed pool answer."""
    sender = "0x" + "11" * 20
    good = {"hash": "0x" + "22" * 32, "from": sender, "to": REVOKED, "value": "0x0", "input": "0xa9059cbb"}
    assert parse_txpool({"pending": {sender: {"0": good}}}, "eth")
    with pytest.raises(BadNodeAnswer, match="input"):
        parse_txpool({"pending": {sender: {"0": {**good, "input": 5}}}}, "eth")


async def test_pending_tokens_off_leaves_token_calls_to_their_block(tokens: Tokens) -> None:
    """With the chain's `pending_tokens = false` a pending token transfer alerts nothing; ETH still does."""
    rig = tokens.rig
    assert rig.watcher.pending_tokens  # the default
    config = rig.watcher.source.config.model_copy(update={"pending_tokens": False})
    source = make_source(config)
    await source.open()
    try:
        off = PendingWatcher(source, rig.store, rig.watcher.registry, rig.watcher.policy, Scope.live(), lambda: True)
        token_tx = await send_token(rig.node.w3, tokens.usdt, tokens.customer, REVOKED, 10**6)
        eth_tx = await send_eth(rig.node.w3, tokens.customer, REVOKED, 10**15)
        assert await off.step() == 1
        assert {m["txid"] for m in await rig.store.matches(Scope.live())} == {eth_tx}
        assert token_tx not in off._ids_by_tx
    finally:
        await source.close()
