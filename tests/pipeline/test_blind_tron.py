"""Blind spot 1 of issue 18 on TRON, on the TRON test node: any TRC-20 to or from a revoked address.

A Transfer log of a contract the config does not list is kept when its `from` or `to` is revoked; its
asset is named from the contract (`symbol()` and `decimals()` over `/wallet/triggerconstantcontract`,
asked once per contract and cached in the store), `token_listed` false; a contract that reverts or
answers garbage gets the placeholder (amounts in base units). Zero and dust transfers to or from revoked
addresses are poisoning. Configured tokens are unchanged, and replay finds the same.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from depositwatch.addresses.tron import tron_address
from depositwatch.alerts.routing import Routed
from depositwatch.chains import tron_txs, tron_wire
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.tron import TronSource
from depositwatch.chains.tron_decode import TronTokens, decode_block
from depositwatch.chains.tron_tokens import constant_result
from depositwatch.config import ChainConfig, SinkConfig
from depositwatch.jsonutil import loads
from depositwatch.models import AddressEntry, AddressStatus, Asset
from depositwatch.replay import replay
from depositwatch.store import Scope, SqlStore
from tests.pipeline.rigs import assert_poisoning_flagged, follow_to_tip
from tests.tronnode.chain import (
    DECIMALS,
    SYMBOL,
    TRANSFER_TOPIC,
    Contract,
    TronChain,
    Tx,
    account,
    block_json,
    infos_json,
    token_contract,
    trc20,
    trx,
)
from tests.tronnode.server import TronNodeServer

USDT = account(500)  # configured
FAKE = account(502)  # a real TRC-20 outside the config: symbol FAKE, 9 decimals
ODD = account(503)  # reverts symbol()
BROKEN = account(504)  # decimals() hits an invalid opcode
GARBAGE = account(505)  # answers symbol() with 3 bytes and decimals() with 255
NOCODE = account(506)  # an address without a contract (its "logs" come from the test chain only)
CUSTOMER, ATTACKER = account(1), account(9)
REVOKED, ACTIVE = account(10), account(12)
REVOKED_AT = 1_600_000_000  # before every block of the test chain
CONSTANT = "/wallet/triggerconstantcontract"


def addr(key: bytes) -> str:
    return tron_address(key)


def config(url: str, **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "tron",
        "kind": "tron",
        "network": "testnode",
        "rpc_urls": [url],
        "tokens": [{"symbol": "USDT", "contract": addr(USDT), "decimals": 6}],
        "batch_blocks": 30,
        "poll_interval": 0.05,
        "internal": True,
        "dust": {"USDT": 1000, "TRX": 1000},
    }
    settings.update(overrides)
    return ChainConfig.model_validate(settings)


def deploy(chain: TronChain) -> None:
    chain.contracts[USDT] = token_contract("USDT", 6)
    chain.contracts[FAKE] = token_contract("FAKE", 9)
    odd = token_contract("ODD", 4)
    del odd.returns[SYMBOL]
    odd.reverts[SYMBOL] = bytes.fromhex("08c379a0") + bytes(64)
    chain.contracts[ODD] = odd
    broken = token_contract("BRK", 4)
    del broken.returns[DECIMALS]
    broken.fails[DECIMALS] = "Invalid operation code: opCode[fe];"
    chain.contracts[BROKEN] = broken
    chain.contracts[GARBAGE] = Contract(returns={SYMBOL: b"abc", DECIMALS: (255).to_bytes(32, "big")})


async def book(store: SqlStore) -> None:
    entries = [
        AddressEntry("tron", addr(REVOKED), REVOKED, AddressStatus.REVOKED, "r1", "cust-r1", REVOKED_AT),
        AddressEntry("tron", addr(ACTIVE), ACTIVE, AddressStatus.ACTIVE, "a1", "cust-a1"),
    ]
    await store.import_addresses(list(enumerate(entries, start=2)))


def mine(chain: TronChain, tx: Tx) -> str:
    tx.nonce = chain.next_nonce()
    chain.mine([tx], count=2)
    return tron_wire.tx_id(tx.raw()).hex()


def payloads(messages: list[Any]) -> dict[str, dict[str, Any]]:
    """The first message of each alert, by txid (one alert per transaction here)."""
    found: dict[str, dict[str, Any]] = {}
    for message in sorted(messages, key=lambda m: m.seq):
        payload = loads(message.payload)
        found.setdefault(payload["txid"], payload)
    return found


@pytest.fixture
async def node() -> AsyncIterator[TronNodeServer]:
    chain = TronChain()
    deploy(chain)
    async with TronNodeServer(chain) as server:
        yield server


async def test_any_trc20_to_and_from_revoked_addresses(node: TronNodeServer, store: SqlStore) -> None:
    """An unlisted TRC-20 to or from a revoked address alerts with the contract's own symbol and decimals
    and `token_listed` false; contracts that revert, fail or answer garbage get the placeholder (base
    units); unlisted tokens to active addresses are no deposits; USDT keeps its configured name; each
    contract is asked once and cached in the store; sinks filter on `token_listed`."""
    await book(store)
    chain = node.chain
    start = chain.tip + 1
    fake_in = mine(chain, trc20(CUSTOMER, REVOKED, FAKE, 5 * 10**9))
    mine(chain, trc20(CUSTOMER, ACTIVE, FAKE, 10**9))  # no deposit: FAKE is not a configured token
    odd_in = mine(chain, trc20(CUSTOMER, REVOKED, ODD, 777))
    broken_in = mine(chain, trc20(CUSTOMER, REVOKED, BROKEN, 778))
    garbage_in = mine(chain, trc20(CUSTOMER, REVOKED, GARBAGE, 779))
    nocode_in = mine(chain, trc20(CUSTOMER, REVOKED, NOCODE, 780))
    usdt_in = mine(chain, trc20(CUSTOMER, REVOKED, USDT, 10**6))
    usdt_out = mine(chain, trc20(REVOKED, ATTACKER, USDT, 10**6))
    fake_out = mine(chain, trc20(REVOKED, ATTACKER, FAKE, 10**9))
    mine(chain, trc20(CUSTOMER, REVOKED, FAKE, 10**9, result="REVERT", receipt_result="REVERT"))  # failed call

    await follow_to_tip(store, config(node.url), start)
    rows = {(r["txid"], r["kind"]): r for r in await store.matches(Scope.live())}
    assert set(rows) == {
        (fake_in, "revoked_incoming"),
        (odd_in, "revoked_incoming"),
        (broken_in, "revoked_incoming"),
        (garbage_in, "revoked_incoming"),
        (nocode_in, "revoked_incoming"),
        (usdt_in, "revoked_incoming"),
        (usdt_out, "revoked_outgoing"),
        (fake_out, "revoked_outgoing"),
    }
    assert node.calls[CONSTANT] == 2 * 5  # symbol() and decimals() of each unlisted contract, once
    sent = payloads(await store.outbox.messages())
    fake = sent[fake_in]
    assert fake["asset"] == {"symbol": "FAKE", "contract": addr(FAKE), "decimals": 9}
    assert (fake["token_listed"], fake["amount"], fake["amount_decimal"]) == (False, "5000000000", "5")
    assert (fake["severity"], fake["poisoning"], fake["index"]) == ("critical", False, 0)
    for txid, contract, amount in (
        (odd_in, ODD, "777"),
        (broken_in, BROKEN, "778"),
        (garbage_in, GARBAGE, "779"),
        (nocode_in, NOCODE, "780"),
    ):
        assert sent[txid]["asset"] == {"symbol": "UNKNOWN", "contract": addr(contract), "decimals": 0}
        assert (sent[txid]["token_listed"], sent[txid]["amount_decimal"]) == (False, amount)
    usdt = sent[usdt_out]
    assert (usdt["asset"]["symbol"], usdt["asset"]["decimals"], usdt["token_listed"]) == ("USDT", 6, True)
    assert (usdt["amount_decimal"], sent[usdt_in]["token_listed"]) == ("1", True)
    assert (sent[fake_out]["kind"], sent[fake_out]["token_listed"]) == ("revoked_outgoing", False)

    cached = await store.tokens.lookup("tron", [addr(k) for k in (FAKE, ODD, BROKEN, GARBAGE, NOCODE, USDT)])
    assert {c: (i.symbol, i.decimals, i.known) for c, i in cached.items()} == {
        addr(FAKE): ("FAKE", 9, True),
        addr(ODD): ("UNKNOWN", 0, False),
        addr(BROKEN): ("UNKNOWN", 0, False),
        addr(GARBAGE): ("UNKNOWN", 0, False),
        addr(NOCODE): ("UNKNOWN", 0, False),
    }
    # a fresh source with the store asks the node nothing
    source = TronSource.from_config(config(node.url))
    source.set_metadata_cache(store.tokens)
    source.set_revoked({REVOKED})
    await source.open()
    asked = node.calls[CONSTANT]
    try:
        again = [t for b in await source.fetch(start, chain.tip + 1) for t in b.transfers]
    finally:
        await source.close()
    assert node.calls[CONSTANT] == asked and source.unlisted.lookups == 0
    assert {(t.txid, t.asset.symbol) for t in again if not t.asset.listed} == {
        (fake_in, "FAKE"),
        (odd_in, "UNKNOWN"),
        (broken_in, "UNKNOWN"),
        (garbage_in, "UNKNOWN"),
        (nocode_in, "UNKNOWN"),
        (fake_out, "FAKE"),
    }  # the FAKE transfer to the active address is not even built: no revoked key in it

    messages = await store.outbox.messages()
    listed_only = Routed(SinkConfig(name="listed", type="exec", command=["true"], unlisted_tokens=False))
    assert {loads(m.payload)["txid"] for m in messages if listed_only.accepts(m)} == {usdt_in, usdt_out}


async def test_any_tokens_off_keeps_only_configured_tokens(node: TronNodeServer, store: SqlStore) -> None:
    """`any_tokens = false`: only the configured TRC-20 is matched, and no contract is asked anything."""
    await book(store)
    start = node.chain.tip + 1
    mine(node.chain, trc20(CUSTOMER, REVOKED, FAKE, 5))
    usdt_in = mine(node.chain, trc20(CUSTOMER, REVOKED, USDT, 10**6))
    await follow_to_tip(store, config(node.url, any_tokens=False), start)
    assert {r["txid"] for r in await store.matches(Scope.live())} == {usdt_in}
    assert node.calls[CONSTANT] == 0


async def test_tron_poisoning_is_info_never_paged_or_off(node: TronNodeServer, store: SqlStore) -> None:
    """Zero-value Transfers (unlisted or not) and dust (the chain's `dust` thresholds) to or from a revoked
    address are recorded with `poisoning` true at severity info and never reach a paging sink; with
    `poisoning_alerts = "off"` they are recorded without any alert."""
    await book(store)
    chain = node.chain
    start = chain.tip + 1
    zero_fake = mine(chain, trc20(CUSTOMER, REVOKED, FAKE, 0))
    zero_out = mine(chain, trc20(REVOKED, CUSTOMER, ODD, 0))  # a fake "sweep" of nothing
    dust_usdt = mine(chain, trc20(CUSTOMER, REVOKED, USDT, 999))
    dust_trx = mine(chain, trx(CUSTOMER, REVOKED, 999))
    real_usdt = mine(chain, trc20(CUSTOMER, REVOKED, USDT, 1000))
    await follow_to_tip(store, config(node.url), start)

    await assert_poisoning_flagged(store, [zero_fake, zero_out, dust_usdt, dust_trx], zero_out, real_usdt)


async def test_tron_poisoning_alerts_off_records_without_alerting(node: TronNodeServer, store: SqlStore) -> None:
    """With `poisoning_alerts = "off"` a zero transfer of an unlisted token is a match row, no alert."""
    await book(store)
    start = node.chain.tip + 1
    zero = mine(node.chain, trc20(CUSTOMER, REVOKED, FAKE, 0))
    real = mine(node.chain, trc20(CUSTOMER, REVOKED, FAKE, 10**9))
    await follow_to_tip(store, config(node.url, poisoning_alerts="off"), start)
    assert {r["txid"]: r["poisoning"] for r in await store.matches(Scope.live())} == {zero: 1, real: 0}
    assert {loads(m.payload)["txid"] for m in await store.outbox.messages()} == {real}


async def test_replay_finds_the_same_unlisted_transfers(node: TronNodeServer, store: SqlStore) -> None:
    """`replay` over the range: the unlisted transfers with their contract's names, `token_listed` false,
    the placeholder for the reverting contract, and USDT as configured."""
    await book(store)
    chain = node.chain
    start = chain.tip + 1
    fake_in = mine(chain, trc20(CUSTOMER, REVOKED, FAKE, 5 * 10**9))
    odd_out = mine(chain, trc20(REVOKED, ATTACKER, ODD, 12))
    usdt_in = mine(chain, trc20(CUSTOMER, REVOKED, USDT, 2 * 10**6))
    zero = mine(chain, trc20(CUSTOMER, REVOKED, FAKE, 0))
    out = io.StringIO()
    await replay(chain=config(node.url), store=store, start=start, stop=chain.tip, output=out)
    lines = {x["txid"]: x for x in (json.loads(line) for line in out.getvalue().splitlines())}
    assert set(lines) == {fake_in, odd_out, usdt_in, zero}
    fake = lines[fake_in]
    assert (fake["asset"], fake["asset_contract"], fake["asset_decimals"]) == ("FAKE", addr(FAKE), 9)
    assert (fake["token_listed"], fake["amount_decimal"]) == (False, "5")
    odd = lines[odd_out]
    assert (odd["kind"], odd["asset"], odd["asset_decimals"], odd["token_listed"]) == (
        "revoked_outgoing",
        "UNKNOWN",
        0,
        False,
    )
    usdt = lines[usdt_in]
    assert (usdt["asset"], usdt["token_listed"], usdt["amount_decimal"]) == ("USDT", True, "2")
    assert (lines[zero]["amount"], lines[zero]["token_listed"]) == ("0", False)


def _log(emitter: bytes, topics: list[str], data: str) -> dict[str, Any]:
    return {"address": emitter.hex(), "topics": topics, "data": data}


def test_unlisted_logs_decode_alike_on_both_readings_and_never_fail_a_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """With revoked keys, a block's unlisted Transfer logs give the same transfers whether transactions
    are read by the compiled or the pure-Python path; a log of an unlisted contract that is not an
    ERC-20-shaped Transfer (dirty address words, a long data field) is skipped, never a block failure,
    while the configured token's logs are checked as before."""
    word = REVOKED.hex().rjust(64, "0")
    dirty = "ff" * 12 + REVOKED.hex()
    call = trc20(CUSTOMER, REVOKED, FAKE, 5)
    call.logs += [
        _log(FAKE, [TRANSFER_TOPIC, CUSTOMER.hex().rjust(64, "0"), dirty], f"{5:064x}"),
        _log(FAKE, [TRANSFER_TOPIC, CUSTOMER.hex().rjust(64, "0"), word], f"{5:064x}" * 2),
        _log(FAKE, [TRANSFER_TOPIC, word, word, word], f"{5:064x}"),  # ERC-721 shape
    ]
    txs = [call, trc20(REVOKED, ATTACKER, USDT, 9), trc20(CUSTOMER, ACTIVE, FAKE, 6)]
    for n, tx in enumerate(txs):
        tx.nonce = n + 1
    block, infos = block_json(7, "00" * 32, txs), infos_json(7, txs)
    tokens = TronTokens(trc20={USDT: Asset("USDT", 6, addr(USDT))})
    readings = [tron_wire._usual_transaction_py] + ([tron_wire._tronscan.transaction] if tron_wire._BUILT else [])
    results = []
    original = tron_txs._usual_transaction
    for read in readings:
        monkeypatch.setattr(tron_txs, "_usual_transaction", functools.partial(original, read=read))
        decoded = decode_block(block, infos, 7, tokens, revoked={REVOKED})
        results.append([(t.txid, t.index, t.asset, t.amount, t.from_key, t.to_key) for t in decoded.transfers])
    assert all(r == results[0] for r in results)
    unlisted = [r for r in results[0] if not r[2].listed]
    assert [(index, asset.symbol, asset.contract, amount) for _, index, asset, amount, _, _ in unlisted] == [
        (0, "UNKNOWN", addr(FAKE), 5)
    ]
    assert len(results[0]) == 2  # and USDT's sweep; FAKE to the active address touches no revoked key
    without = decode_block(block, infos, 7, tokens)
    assert [t.asset.symbol for t in without.transfers] == ["USDT"]

    bad = [trc20(REVOKED, ATTACKER, USDT, 9)]
    bad[0].logs[0]["topics"][2] = dirty
    with pytest.raises(BadNodeAnswer, match="upper 12 bytes"):
        decode_block(block_json(8, "00" * 32, bad), infos_json(8, bad), 8, tokens, revoked={REVOKED})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"result": {"result": True}, "energy_used": 5, "constant_result": ["00ff"], "transaction": {}}, b"\x00\xff"),
        (
            {"result": {"result": True, "message": "5245564552"}, "constant_result": ["08c379a0"], "transaction": {}},
            None,
        ),
        ({"result": {"result": True}, "constant_result": ["00"], "transaction": {"ret": [{"ret": "FAILED"}]}}, None),
        ({"result": {"code": "CONTRACT_VALIDATE_ERROR", "message": "4e6f"}}, None),
        ({"result": {"code": "OTHER_ERROR", "message": b"REVERT opcode executed".hex()}}, None),
        (
            {
                "result": {
                    "code": "OTHER_ERROR",
                    "message": b"class org.tron.core.vm.program.Program$OutOfEnergyException : Not enough energy".hex(),
                }
            },
            None,
        ),
    ],
)
def test_constant_call_answers(answer: Any, expected: bytes | None) -> None:
    """Return data of a served call; None (the placeholder) where the contract failed or is no contract."""
    assert constant_result(answer, "symbol() of T") == expected


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        {},
        {"result": {"code": "SERVER_BUSY"}},
        {"result": {"code": "OTHER_ERROR", "message": b"java.net.SocketTimeoutException".hex()}},
        {"result": {"result": True}},
        {"result": {"result": True}, "constant_result": "00"},
        {"result": {"result": True}, "constant_result": ["zz"]},
        {"result": {"result": True}, "constant_result": ["00" * 5000]},
        {"result": {"result": "yes"}, "constant_result": ["00"]},
    ],
)
def test_constant_call_node_trouble_is_an_error(answer: Any) -> None:
    """Anything that is not a served call or a contract's failure raises, so nothing is cached for good."""
    with pytest.raises(BadNodeAnswer, match="symbol\\(\\) of T"):
        constant_result(answer, "symbol() of T")
