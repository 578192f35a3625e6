"""Blind spots on Ethereum (issue 18), on anvil and on the real mainnet block 17,173,049.

Any token to or from a revoked address (unlisted tokens named from their contract, cached in the
store), address poisoning (zero and dust transfers), consensus-layer withdrawals, internal ETH in quiet
blocks, and a revoked forwarder contract on every path.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_signature_to_4byte_selector

from depositwatch.alerts.routing import Routed
from depositwatch.chains.evm import EvmSource
from depositwatch.chains.evm_tokens import decode_decimals, decode_symbol
from depositwatch.config import ChainConfig, SinkConfig, TokenConfig
from depositwatch.devnet import (
    Anvil,
    deploy_token,
    impersonate,
    mint_token,
    send_eth,
    send_token,
    send_transaction,
    set_balance,
    wait_receipt,
)
from depositwatch.jsonutil import loads
from depositwatch.matcher import match_block
from depositwatch.models import AddressEntry, AddressStatus, MatchKind
from depositwatch.registry import ChainBook
from depositwatch.store import Scope, SqlStore
from tests.blind_contracts import emitter_code, forwarder_code, forwarding_creation
from tests.pipeline.rigs import assert_poisoning_flagged, follow_to_tip
from tests.recorded_rpc import MAINNET_BLOCK, RecordedNode, json_lines, mainnet_17173049, realdata
from tests.replay.benches import run_bench

CHAIN_ID = 31337


def key(address: str) -> bytes:
    return bytes.fromhex(address[2:].lower())


def revoked_book(*addresses: str) -> ChainBook:
    book = ChainBook()
    for address in addresses:
        book.add(key(address), AddressStatus.REVOKED, 0)
    return book


def word(address: str) -> bytes:
    return abi_encode(["address"], [address])


@dataclass
class World:
    node: Anvil
    usdt: str
    fake: str  # a real ERC-20 outside the configured list: symbol FAKE, 9 decimals
    emitter: str  # emits Transfer logs, answers nothing to symbol() or decimals()
    customer: str
    attacker: str
    revoked: str
    active: str


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with Anvil(chain_id=CHAIN_ID) as node:
        w3 = node.w3
        deployer, customer, attacker = (node.accounts[i].address for i in (0, 1, 9))
        usdt = await deploy_token(w3, deployer, "USDT", 6)
        fake = await deploy_token(w3, deployer, "FAKE", 9, name="Fake Tether")
        for token in (usdt, fake):
            await wait_receipt(w3, await mint_token(w3, token, deployer, customer, 10**15))
        emitter = "0x" + "e1" * 20
        await node.rpc("anvil_setCode", emitter, "0x" + emitter_code().hex())
        yield World(node, usdt, fake, emitter, customer, attacker, revoked="0x" + "a1" * 20, active="0x" + "c3" * 20)


def chain(world: World, **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "eth",
        "kind": "evm",
        "chain_id": CHAIN_ID,
        "rpc_urls": [world.node.http_url],
        "tokens": [TokenConfig(symbol="USDT", contract=world.usdt, decimals=6)],
        "confirmations": 2,
        "batch_blocks": 5,
        "poll_interval": 0.05,
        "dust": {"ETH": 10**12, "USDT": 1000},
    }
    settings.update(overrides)
    return ChainConfig.model_validate(settings)


async def book(store: SqlStore, world: World, revoked: list[str] | None = None) -> None:
    hour_ago = int(time.time()) - 3600
    entries = [
        AddressEntry("eth", a, key(a), AddressStatus.REVOKED, "r", "cust-r", hour_ago)
        for a in (revoked or [world.revoked])
    ]
    entries.append(AddressEntry("eth", world.active, key(world.active), AddressStatus.ACTIVE, "a", "cust-a"))
    await store.import_addresses(list(enumerate(entries, start=2)))


async def mined(world: World, tx: Any) -> str:
    txid = str(await tx)
    receipt = await wait_receipt(world.node.w3, txid)
    assert receipt["status"] == "0x1"
    return txid


async def emit(world: World, sender: str, frm: str, to: str, value: int) -> str:
    data = word(frm) + word(to) + value.to_bytes(32, "big")
    return await mined(world, send_transaction(world.node.w3, sender, world.emitter, data=data, gas=100_000))


def payloads(messages: list[Any]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The first message of each alert, by (txid, index)."""
    found: dict[tuple[str, int | None], dict[str, Any]] = {}
    for message in sorted(messages, key=lambda m: m.seq):
        payload = loads(message.payload)
        found.setdefault((payload["txid"], payload["index"]), payload)
    return found


async def test_any_token_to_and_from_revoked_addresses(world: World, store: SqlStore) -> None:
    """An unlisted ERC-20 to or from a revoked address alerts with the contract's own symbol and decimals
    and `token_listed` false; a contract answering garbage gets the placeholder (base units); unlisted
    tokens to active addresses are no deposits; configured tokens keep their names."""
    await book(store, world)
    w3 = world.node.w3
    start = await world.node.block_number() + 1
    fake_in = await mined(world, send_token(w3, world.fake, world.customer, world.revoked, 5 * 10**9))
    await mined(world, send_token(w3, world.fake, world.customer, world.active, 10**9))
    odd_in = await emit(world, world.customer, world.customer, world.revoked, 777)
    await impersonate(w3, world.revoked)
    await set_balance(w3, world.revoked, 10**18)
    usdt_in = await mined(world, send_token(w3, world.usdt, world.customer, world.revoked, 10**6))
    usdt_out = await mined(world, send_token(w3, world.usdt, world.revoked, world.attacker, 10**6))
    fake_out = await mined(world, send_token(w3, world.fake, world.revoked, world.attacker, 10**9))

    await follow_to_tip(store, chain(world), start)
    rows = {(r["txid"], r["kind"]): r for r in await store.matches(Scope.live())}
    assert set(rows) == {
        (fake_in, "revoked_incoming"),
        (odd_in, "revoked_incoming"),
        (usdt_in, "revoked_incoming"),
        (usdt_out, "revoked_outgoing"),
        (fake_out, "revoked_outgoing"),
    }  # no deposit for FAKE to the active address
    sent = payloads(await store.outbox.messages())
    fake = sent[(fake_in, rows[(fake_in, "revoked_incoming")]["idx"])]
    assert fake["asset"] == {"symbol": "FAKE", "contract": world.fake, "decimals": 9}
    assert (fake["token_listed"], fake["amount"], fake["amount_decimal"]) == (False, "5000000000", "5")
    assert (fake["severity"], fake["poisoning"]) == ("critical", False)
    odd = sent[(odd_in, rows[(odd_in, "revoked_incoming")]["idx"])]
    assert odd["asset"]["symbol"] == "UNKNOWN" and odd["asset"]["decimals"] == 0
    assert (odd["token_listed"], odd["amount_decimal"]) == (False, "777")
    usdt = sent[(usdt_out, rows[(usdt_out, "revoked_outgoing")]["idx"])]
    assert (usdt["asset"]["symbol"], usdt["token_listed"], usdt["amount_decimal"]) == ("USDT", True, "1")
    assert sent[(fake_out, rows[(fake_out, "revoked_outgoing")]["idx"])]["token_listed"] is False

    # cached once per contract: the store holds both, and a fresh source asks the node nothing
    cached = await store.tokens.lookup("eth", [world.fake.lower(), world.emitter, world.usdt.lower()])
    assert {c: (i.symbol, i.decimals, i.known) for c, i in cached.items()} == {
        world.fake.lower(): ("FAKE", 9, True),
        world.emitter: ("UNKNOWN", 0, False),
    }
    source = EvmSource(chain(world))
    source.set_metadata_cache(store.tokens)
    source.set_revoked([key(world.revoked)])
    await source.open()
    try:
        again = [t for b in await source.fetch(start, await world.node.block_number() + 1) for t in b.transfers]
    finally:
        await source.close()
    assert source.unlisted.lookups == 0
    assert {(t.txid, t.asset.symbol, t.asset.listed) for t in again if not t.asset.listed} == {
        (fake_in, "FAKE", False),
        (odd_in, "UNKNOWN", False),
        (fake_out, "FAKE", False),
    }

    # sinks filter on it
    messages = await store.outbox.messages()
    listed_only = Routed(SinkConfig(name="listed", type="exec", command=["true"], unlisted_tokens=False))
    kept = {loads(m.payload)["txid"] for m in messages if listed_only.accepts(m)}
    assert kept == {usdt_in, usdt_out}
    everything = Routed(SinkConfig(name="all", type="exec", command=["true"]))
    assert {loads(m.payload)["txid"] for m in messages if everything.accepts(m)} == {
        fake_in,
        odd_in,
        usdt_in,
        usdt_out,
        fake_out,
    }


async def test_poisoning_is_recorded_at_low_severity_or_not_alerted(world: World, store: SqlStore) -> None:
    """Zero-value Transfers and dust (per-chain thresholds) to or from a revoked address are recorded with
    `poisoning` true at severity info, never reach a paging sink, and with `poisoning_alerts = "off"`
    are recorded without any alert."""
    await book(store, world)
    w3 = world.node.w3
    start = await world.node.block_number() + 1
    zero_fake = await mined(world, send_token(w3, world.fake, world.customer, world.revoked, 0))
    zero_odd = await emit(world, world.customer, world.revoked, world.customer, 0)  # a fake "sweep" of nothing
    dust_eth = await mined(world, send_eth(w3, world.customer, world.revoked, 10**12 - 1))
    dust_usdt = await mined(world, send_token(w3, world.usdt, world.customer, world.revoked, 999))
    real_eth = await mined(world, send_eth(w3, world.customer, world.revoked, 10**12))
    await follow_to_tip(store, chain(world), start)

    by_tx = await assert_poisoning_flagged(store, [zero_fake, zero_odd, dust_eth, dust_usdt], zero_odd, real_eth)
    quiet = Routed(SinkConfig(name="q", type="exec", command=["true"], poisoning=False))
    assert {t for t, m in by_tx.items() if quiet.accepts(m)} == {real_eth}


async def test_poisoning_alerts_off_records_without_alerting(world: World, store: SqlStore) -> None:
    """With `poisoning_alerts = "off"` a zero transfer is a match row and nothing in the outbox."""
    await book(store, world)
    w3 = world.node.w3
    start = await world.node.block_number() + 1
    zero = await mined(world, send_token(w3, world.usdt, world.customer, world.revoked, 0))
    real = await mined(world, send_token(w3, world.usdt, world.customer, world.revoked, 10**6))
    await follow_to_tip(store, chain(world, poisoning_alerts="off"), start)
    assert {r["txid"]: r["poisoning"] for r in await store.matches(Scope.live())} == {zero: 1, real: 0}
    assert {loads(m.payload)["txid"] for m in await store.outbox.messages()} == {real}


async def test_internal_eth_in_quiet_blocks_is_traced(world: World) -> None:
    """A plain ETH send (no call data) to a contract whose receive() forwards it, and a creation whose
    constructor forwards its value, each alone in its block: both internal transfers are seen."""
    w3 = world.node.w3
    relay = "0x" + "f0" * 20  # forwards to the revoked address; itself not watched
    await world.node.rpc("anvil_setCode", relay, "0x" + forwarder_code(key(world.revoked)).hex())
    start = await world.node.block_number() + 1
    plain = await mined(world, send_eth(w3, world.customer, relay, 10**16))
    creation = await mined(
        world,
        send_transaction(w3, world.customer, None, value=3 * 10**15, data=forwarding_creation(key(world.revoked))),
    )
    tip = await world.node.block_number()
    assert tip == start + 1  # one transaction a block: nothing else calls a contract there

    source = EvmSource(chain(world, traces=True, tokens=[]))
    await source.open()
    try:
        assert source.traces
        blocks = await source.fetch(start, tip + 1)
    finally:
        await source.close()
    watched = revoked_book(world.revoked)
    found = {
        (m.transfer.txid, m.transfer.index, m.kind, m.transfer.amount)
        for b in blocks
        for m in match_block("eth", b, watched)
    }
    assert found == {
        (plain, -1, MatchKind.REVOKED_INCOMING, 10**16),
        (creation, -1, MatchKind.REVOKED_INCOMING, 3 * 10**15),
    }


async def test_revoked_forwarder_contract_on_every_path(world: World, store: SqlStore) -> None:
    """A revoked deposit address that is a forwarder contract: ETH in (top level) and out (internal, its
    receive path and its own calls), configured and unlisted tokens in, and tokens it sends out."""
    w3 = world.node.w3
    forwarder = "0x" + "fd" * 20
    await world.node.rpc("anvil_setCode", forwarder, "0x" + forwarder_code(key(world.attacker)).hex())
    await book(store, world, revoked=[forwarder])
    start = await world.node.block_number() + 1
    eth_in = await mined(world, send_eth(w3, world.customer, forwarder, 2 * 10**16))  # forwarded on at once
    usdt_in = await mined(world, send_token(w3, world.usdt, world.customer, forwarder, 7 * 10**6))
    fake_in = await mined(world, send_token(w3, world.fake, world.customer, forwarder, 3 * 10**9))
    await set_balance(w3, forwarder, 10**17)

    def command(target: str, value: int, payload: bytes = b"") -> bytes:
        return word(target) + value.to_bytes(32, "big") + payload

    transfer = function_signature_to_4byte_selector("transfer(address,uint256)")
    usdt_out = await mined(
        world,
        send_transaction(
            w3,
            world.attacker,
            forwarder,
            data=command(world.usdt, 0, transfer + abi_encode(["address", "uint256"], [world.attacker, 5 * 10**6])),
            gas=200_000,
        ),
    )
    fake_out = await mined(
        world,
        send_transaction(
            w3,
            world.attacker,
            forwarder,
            data=command(world.fake, 0, transfer + abi_encode(["address", "uint256"], [world.attacker, 10**9])),
            gas=200_000,
        ),
    )
    eth_out = await mined(
        world, send_transaction(w3, world.attacker, forwarder, data=command(world.attacker, 4 * 10**16), gas=200_000)
    )
    await follow_to_tip(store, chain(world, traces=True), start)
    rows = {(r["txid"], r["kind"], r["asset_symbol"], r["amount"]) for r in await store.matches(Scope.live())}
    assert rows == {
        (eth_in, "revoked_incoming", "ETH", str(2 * 10**16)),  # top level
        (eth_in, "revoked_outgoing", "ETH", str(2 * 10**16)),  # its receive() passing it on
        (usdt_in, "revoked_incoming", "USDT", str(7 * 10**6)),
        (fake_in, "revoked_incoming", "FAKE", str(3 * 10**9)),
        (usdt_out, "revoked_outgoing", "USDT", str(5 * 10**6)),  # a call from it
        (fake_out, "revoked_outgoing", "FAKE", str(10**9)),
        (eth_out, "revoked_outgoing", "ETH", str(4 * 10**16)),  # internal, from it
    }


async def test_withdrawals_of_the_real_block_are_transfers() -> None:
    """Block 17,173,049's 16 consensus-layer withdrawals: ETH in wei (Gwei times 10^9), synthetic txid
    `withdrawal:<index>`, index = the withdrawal index; matched for a watched recipient, with the log
    filter on too."""
    (raw,) = json_lines(realdata("eth", "mainnet_17173049") / "expected_blocks.json")
    withdrawals = raw["withdrawals"]
    recipient = withdrawals[0]["address"]
    expected = {
        (f"withdrawal:{w['index']}", w["index"], w["amount"] * 10**9) for w in withdrawals if w["address"] == recipient
    }
    assert len(expected) >= 2
    watched = revoked_book(recipient)
    for narrowed in (False, True):
        async with RecordedNode(mainnet_17173049()) as node:
            config = ChainConfig(name="eth", kind="evm", chain_id=1, rpc_urls=[node.url])
            source = EvmSource(config)
            if narrowed:
                source.set_log_filter([key(recipient)])
            await source.open()
            try:
                (block,) = await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
            finally:
                await source.close()
        matches = match_block("eth", block, watched)
        assert {(m.transfer.txid, m.transfer.index, m.transfer.amount) for m in matches} == expected
        assert all(m.kind is MatchKind.REVOKED_INCOMING and m.transfer.from_key is None for m in matches)
        assert all(m.transfer.asset.symbol == "ETH" and m.transfer.asset.decimals == 18 for m in matches)


def test_token_metadata_answers_are_bounded() -> None:
    """`symbol()` as an ABI string or a zero-padded bytes32 (as MKR answers); anything else, and decimals
    above 36 or not one word, is unusable (the placeholder then)."""

    def abi_string(raw: bytes) -> str:
        return "0x" + abi_encode(["bytes"], [raw]).hex()

    assert decode_symbol(abi_string(b"USDT")) == "USDT"
    assert decode_symbol(abi_string("₮ether".encode())) == "₮ether"
    assert decode_symbol("0x" + b"MKR".ljust(32, b"\0").hex()) == "MKR"
    for bad in (
        "0x",
        None,
        7,
        "0x12",
        abi_string(b""),
        abi_string(b"A" * 33),
        abi_string(b"\xff\xfe"),
        abi_string("USDT\u202e".encode()),  # a right-to-left override
        abi_string(b"US\nDT"),
        "0x" + (64).to_bytes(32, "big").hex() + (4).to_bytes(32, "big").hex() + b"USDT".ljust(32, b"\0").hex(),
        "0x" + (32).to_bytes(32, "big").hex() + (2**200).to_bytes(32, "big").hex(),
        "0x" + b"M\0KR".ljust(32, b"\0").hex(),
        "0x" + "zz" * 32,
    ):
        assert decode_symbol(bad) is None, bad
    assert decode_decimals("0x" + (18).to_bytes(32, "big").hex()) == 18
    for bad in ("0x", "0x12", "0x" + (37).to_bytes(32, "big").hex(), "0x" + "ff" * 32, "0x" + "00" * 64, None):
        assert decode_decimals(bad) is None, bad


def test_trace_cost_bench_runs_and_reports_both_chains() -> None:
    """bench/trace_cost.py, the command docs/performance.md records, on tiny chains: the old rule traced
    every busy block and no quiet one; the new one traces all."""
    stdout = run_bench("trace_cost.py", "--blocks", "3", "--rounds", "1", timeout=300)
    rows = [line.split("|")[1:5] for line in stdout.splitlines() if line.startswith(("| busy", "| quiet"))]
    assert [[cell.strip() for cell in row][1:] for row in rows] == [["3", "3", "3"], ["3", "0", "3"]]
