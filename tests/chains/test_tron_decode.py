"""TRON answers to transfers: real mainnet infos decode exactly; integrity failures are typed errors, never matches."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depositwatch.addresses.tron import parse_tron_address, tron_address
from depositwatch.chains import tron_decode, tron_txs, tron_wire
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.tron_decode import TRX, TronTokens, decode_block, info_transfers
from depositwatch.models import Asset
from tests.realdata import realdata
from tests.replay.benches import run_bench
from tests.tronnode.chain import account, block_json, infos_json, transaction_json, trc10, trc20, trx

NOT_BUILT = "the compiled TRON reading is not built: `pip install -e .` builds it where gcc and libssl-dev are"

USDT_KEY = parse_tron_address("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t").key
USDT = Asset(symbol="USDT", decimals=6, contract="TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t")
TOKENS = TronTokens(trc20={USDT_KEY: USDT}, trc10={"1002000": Asset(symbol="BTT", decimals=6)})
PARENT = "00" * 32


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(realdata("tron", name).read_text())
    return data


def test_real_usdt_transfer_info_decodes_to_its_transfer() -> None:
    """Mainnet tx ec7c9584: one USDT Transfer log, 51.474803 USDT, accounts from the 20-byte topics."""
    info = _load("mainnet_72822854.gettransactioninfobyid_ec7c9584.json")
    (transfer,) = info_transfers(info, 72822854, TOKENS)
    assert transfer.asset == USDT
    assert transfer.amount == 51_474_803  # 0x3117173 in the log
    assert transfer.from_key == bytes.fromhex("f1553144fce31a96b9b575de3a3a0f853d072b64")
    assert transfer.to_key == bytes.fromhex("ad7e79abd49d4196b3bc7c16ad200b8d96e6c08c")
    assert transfer.index == 0
    assert transfer.txid == info["id"]
    assert transfer.to_address is not None and transfer.to_address.startswith("T")


def test_real_usdt_log_is_ignored_when_usdt_is_not_configured() -> None:
    """The same log with no TRC-20 configured: nothing (only configured contracts count)."""
    info = _load("mainnet_72822854.gettransactioninfobyid_ec7c9584.json")
    assert info_transfers(info, 72822854, TronTokens()) == []


def test_real_internal_trx_decodes() -> None:
    """Mainnet tx c3dcf82d: one internal call moving 300,000 sun from the contract to 419173...; its other
    log is not a Transfer."""
    info = _load("mainnet_84276720.gettransactioninfobyid_c3dcf82d_internal_trx.json")
    (transfer,) = info_transfers(info, 84276720, TOKENS)
    assert transfer.asset == TRX
    assert transfer.amount == 300_000
    assert transfer.from_key == bytes.fromhex("52a5f2a94125ef11673f86104e2ce3f86ece2c25")
    assert transfer.to_key == bytes.fromhex("9173b4004d81e3f1ae68d925dd9e874aa37edb2f")
    assert transfer.index == -1
    assert info_transfers(info, 84276720, TOKENS, internal=False) == []


def test_real_testnet_block_decodes_with_no_transfers() -> None:
    """The testnet block passes every integrity check; its calls move no TRX and have no infos here."""
    block = _load("testnet_55088560.getblockbynum.json")
    decoded = decode_block(block, [], 55088560, TOKENS)
    assert decoded.hash == block["blockID"]
    assert decoded.parent_hash == block["block_header"]["raw_data"]["parentHash"]
    assert decoded.tx_count == 3
    assert decoded.transfers == ()
    assert decoded.time == 1749121581


def _chain() -> tuple[list[Any], dict[str, Any], list[dict[str, Any]]]:
    a, b, c = account(1), account(2), account(3)
    txs = [
        trx(a, b, 1_500_000),
        trc10(a, c, "1002000", 42, nonce=1),
        trc10(a, c, "1000001", 7, nonce=2),
        trc20(b, c, USDT_KEY, 250_000_000, nonce=3),
        trc20(b, c, account(77), 999, nonce=4),  # another token: not configured
        trc20(b, c, USDT_KEY, 5, emitter=account(66), nonce=5),  # a fake contract emitting a Transfer
        trc20(b, c, USDT_KEY, 6, result="REVERT", receipt_result="REVERT", nonce=6),
        trc20(b, c, USDT_KEY, 7, result="OUT_OF_ENERGY", receipt_result="OUT_OF_ENERGY", nonce=7),
    ]
    return txs, block_json(100, PARENT, txs), infos_json(100, txs)


def test_a_block_of_every_kind() -> None:
    """TRX, a configured and an unconfigured TRC-10, USDT; a fake emitter, another token and failed calls ignored."""
    _, block, infos = _chain()
    decoded = decode_block(block, infos, 100, TOKENS)
    found = [(t.asset.symbol, t.amount, t.index) for t in decoded.transfers]
    assert found == [("TRX", 1_500_000, None), ("BTT", 42, None), ("1000001", 7, None), ("USDT", 250_000_000, 0)]
    assert decoded.transfers[0].from_key == account(1) and decoded.transfers[0].to_key == account(2)


def _mutated(change: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    _, block, infos = _chain()
    block, infos = copy.deepcopy(block), copy.deepcopy(infos)
    change(block, infos)
    return block, infos


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b, i: b["transactions"][0]["raw_data"]["contract"][0]["parameter"]["value"].update(amount=9), "amount"),
        (
            lambda b, i: b["transactions"][0]["raw_data"]["contract"][0]["parameter"]["value"].update(
                to_address="41" + account(9).hex()
            ),
            "to_address",
        ),
        (lambda b, i: b["transactions"][0].update(txID="00" * 32), "txID"),
        (lambda b, i: b["transactions"][6]["ret"][0].update(contractRet="SUCCESS"), "txTrieRoot"),
        (lambda b, i: b.update(blockID="00" * 32), "blockID"),
        (lambda b, i: b["block_header"]["raw_data"].update(number=101), "answered block 101"),
        (lambda b, i: i[0].update(id="ab" * 32), "not in this block"),
        (lambda b, i: i[0].update(blockNumber=99), "another block"),
        (lambda b, i: i[3]["log"][0]["topics"].__setitem__(2, "ff" * 12 + account(3).hex()), "upper 12 bytes"),
        (lambda b, i: b["block_header"]["raw_data"].update(timestamp=2**256), "timestamp"),
        (lambda b, i: b["transactions"][1]["ret"][0].update(contractRet="MAYBE"), "unknown contractRet"),
    ],
)
def test_integrity_failures_are_typed_errors(change: Any, message: str) -> None:
    """Each lie about the signed bytes, the ids, the block or the topics is a BadNodeAnswer naming it."""
    block, infos = _mutated(change)
    with pytest.raises(BadNodeAnswer, match=message):
        decode_block(block, infos, 100, TOKENS)


def test_hostile_shapes_are_typed_errors() -> None:
    """Wrong types anywhere raise BadNodeAnswer, not KeyError or TypeError."""
    for block in (None, [], {"block_header": []}, {"block_header": {"raw_data": {"txTrieRoot": 5}}}):
        with pytest.raises(BadNodeAnswer):
            decode_block(block, [], 100, TOKENS)
    _, good, _ = _chain()
    with pytest.raises(BadNodeAnswer):
        decode_block(good, {"id": 1}, 100, TOKENS)


# ---------------------------------------------------------------------------------------------------
# the usual shapes read in one step against the field-by-field checks

_ACCOUNTS = st.integers(min_value=0, max_value=10**6).map(account)
_RESULTS = st.sampled_from(["SUCCESS", "SUCCESS", "REVERT", "OUT_OF_ENERGY", "DEFAULT"])


@st.composite
def _tx_json(draw: st.DrawFn) -> dict[str, Any]:
    """A transaction of a watched type as the node shows it, with random parties, amounts and result."""
    sender, recipient, contract = draw(_ACCOUNTS), draw(_ACCOUNTS), draw(_ACCOUNTS)
    amount, nonce, result = draw(st.integers(0, 2**63 - 1)), draw(st.integers(0, 2**32)), draw(_RESULTS)
    kind = draw(st.sampled_from(["trx", "trc10", "trc20"]))
    if kind == "trx":
        tx = trx(sender, recipient, amount, nonce=nonce, result=result)
    elif kind == "trc10":
        tx = trc10(sender, recipient, str(draw(st.integers(1_000_000, 1_999_999))), amount, nonce=nonce, result=result)
    else:
        tx = trc20(sender, recipient, contract, amount % 2**256, nonce=nonce, result=result)
    return transaction_json(tx)


def _value(tx: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = tx["raw_data"]["contract"][0]["parameter"]["value"]
    return value


def _spaced(text: str) -> str:
    return text[:2] + " " + text[2:]


_CHANGES: dict[str, Any] = {
    "raw_data_hex in capitals": lambda t: t.update(raw_data_hex=t["raw_data_hex"].upper()),
    "raw_data_hex with a space": lambda t: t.update(raw_data_hex=_spaced(t["raw_data_hex"])),
    "raw_data_hex cut": lambda t: t.update(raw_data_hex=t["raw_data_hex"][:-2]),
    "txID in capitals": lambda t: t.update(txID=t["txID"].upper()),
    "owner in capitals": lambda t: _value(t).update(owner_address=_value(t)["owner_address"].upper()),
    "owner in base58": lambda t: _value(t).update(
        owner_address=tron_address(bytes.fromhex(_value(t)["owner_address"])[1:])
    ),
    "another owner": lambda t: _value(t).update(owner_address="41" + account(7).hex()),
    "an unknown field": lambda t: _value(t).update(permission_id=2),
    "amount as true": lambda t: _value(t).update(amount=True),
    "amount as a float": lambda t: _value(t).update(amount=float(_value(t).get("amount", 0))),
    "no amount": lambda t: _value(t).pop("amount", None),
    "a null recipient": lambda t: _value(t).update(to_address=None),
    "a token id on any transfer": lambda t: _value(t).update(asset_name="31303032303030"),
    "a contract on any transfer": lambda t: _value(t).update(contract_address="41" + account(8).hex()),
    "other call data": lambda t: _value(t).update(data="a9059cbb"),
    "a call value": lambda t: _value(t).update(call_value=5),
    "a zero call value": lambda t: _value(t).update(call_value=0),
    "no parameter value": lambda t: t["raw_data"]["contract"][0]["parameter"].pop("value"),
    "two contracts": lambda t: t["raw_data"]["contract"].append(t["raw_data"]["contract"][0]),
    "no raw_data": lambda t: t.pop("raw_data"),
    "two signatures": lambda t: t["signature"].append(t["signature"][0]),
    "a short signature": lambda t: t.update(signature=[t["signature"][0][:-2]]),
    "a spaced signature": lambda t: t.update(signature=[_spaced(t["signature"][0])]),
    "no signature": lambda t: t.update(signature=[]),
    "a fee": lambda t: t["ret"][0].update(fee=5),
    "no result": lambda t: t.update(ret=[]),
    "two results": lambda t: t["ret"].append({"contractRet": "SUCCESS"}),
    "an unknown result": lambda t: t["ret"][0].update(contractRet="MAYBE"),
    "a result as a list": lambda t: t["ret"][0].update(contractRet=["SUCCESS"]),
    "a transaction as a list": lambda t: t.update(raw_data_hex=[t["raw_data_hex"]]),
    "an amount beyond 64 bits": lambda t: _value(t).update(amount=2**70 + _value(t).get("amount", 0)),
    "an amount beyond 64 bits, as a call value": lambda t: _value(t).update(call_value=2**64),
    "a negative amount": lambda t: _value(t).update(amount=-1),
    "an amount as text": lambda t: _value(t).update(amount=str(_value(t).get("amount", 0))),
    "an amount as an int subclass": lambda t: _value(t).update(amount=_Int(_value(t).get("amount", 0))),
    "a call value as an int subclass": lambda t: _value(t).update(call_value=_Int(0)),
    "an owner as a str subclass": lambda t: _value(t).update(owner_address=_Str(_value(t)["owner_address"])),
    "a txID as a str subclass": lambda t: t.update(txID=_Str(t["txID"])),
    "a txID as bytes": lambda t: t.update(txID=t["txID"].encode()),
    "no txID": lambda t: t.pop("txID"),
    "call data in capitals": lambda t: _value(t).update(data=_value(t).get("data", "").upper()),
    "call data cut": lambda t: _value(t).update(data=_value(t).get("data", "")[:-2]),
    "an empty owner": lambda t: _value(t).update(owner_address=""),
    "an owner with a character beyond ASCII": lambda t: _value(t).update(owner_address="é" * 42),
    "the value as a dict subclass": lambda t: t["raw_data"]["contract"][0]["parameter"].update(value=_Dict(_value(t))),
    "the value as a list": lambda t: t["raw_data"]["contract"][0]["parameter"].update(value=[_value(t)]),
    "the contract list as a dict": lambda t: t["raw_data"].update(contract=t["raw_data"]["contract"][0]),
    "the transaction as a dict subclass": lambda t: t.update(raw_data=_Dict(t["raw_data"])),
    "the result as a dict subclass": lambda t: t.update(ret=[_Dict(t["ret"][0])]),
    "the result name as a str subclass": lambda t: t["ret"][0].update(contractRet=_Str(t["ret"][0]["contractRet"])),
    "the signature as a list subclass": lambda t: t.update(signature=_List(t["signature"])),
    "a signature as an int": lambda t: t.update(signature=[2**200]),
    "a signature beyond ASCII": lambda t: t.update(signature=["é" * 130]),
    "a deeply nested value": lambda t: t["raw_data"]["contract"][0]["parameter"].update(value=_nested(10_000)),
    "deeply nested call data": lambda t: _value(t).update(data=_nested(10_000)),
    "a null raw data": lambda t: t.update(raw_data=None),
    "raw_data_hex of a megabyte": lambda t: t.update(raw_data_hex=t["raw_data_hex"] + "00" * 500_000),
}


class _Int(int):
    """An int that is not a plain int: the compiled reading declines it, the checks decide."""


class _Str(str):
    """A str that is not a plain str."""

    __slots__ = ()


class _Dict(dict[str, Any]):
    """A dict that is not a plain dict."""


class _List(list[Any]):
    """A list that is not a plain list."""


def _nested(depth: int) -> Any:
    nested: Any = []
    for _ in range(depth):
        nested = [nested]
    return nested


# The one-step readings: in Python, and compiled where built (tests/chains/test_tron_wire.py fails without it):
# the Python walk of the JSON over either reading of the hex, and the whole step compiled (`_tronscan.usual`).
_READINGS = [tron_wire._usual_transaction_py] + ([tron_wire._tronscan.transaction] if tron_wire._BUILT else [])
_ONE_STEP: list[Callable[[Any], Any]] = [
    functools.partial(tron_txs._usual_transaction, read=read) for read in _READINGS
]
if tron_wire._BUILT:
    _ONE_STEP.append(functools.partial(tron_wire._tronscan.usual, tron_txs._RESULT_TAILS))


def _same_or_declined(tx: Any) -> None:
    """The one-step reading declines, or gives exactly what the field-by-field checks give; where those
    refuse the transaction it always declines."""
    readings = [read(tx) for read in _ONE_STEP]
    try:
        checked = tron_txs._transaction(tx, 100, 0)
    except BadNodeAnswer:
        assert not any(readings)
        return
    for usual in readings:
        assert usual is None or usual == checked


@given(_tx_json())
def test_usual_transactions_are_read_in_one_step_with_the_same_result(tx: dict[str, Any]) -> None:
    """Random TRX, TRC-10 and TRC-20 transactions as the node writes them: read in one step (compiled and
    in Python), same result."""
    for read in _ONE_STEP:
        assert read(tx) is not None
    _same_or_declined(tx)


@pytest.mark.parametrize("change", sorted(_CHANGES))
@settings(max_examples=30)
@given(tx=_tx_json())
def test_the_one_step_reading_never_disagrees(change: str, tx: dict[str, Any]) -> None:
    """Each change to the JSON (case, spacing, extra or missing fields, lies, other results): the
    one-step reading declines or agrees, and accepts nothing the field-by-field checks refuse."""
    _CHANGES[change](tx)
    _same_or_declined(tx)


class _Meddler(str):
    """A key that, the first time it is compared, empties every list and dict of the transaction: a
    lookup can run a key's `__eq__`, and the compiled reading must hold what it reads (no crash, no
    reading of freed objects) and then decline or agree. Not a JSON shape (a parser builds plain str
    keys), so only the compiled reading is held to it: the Python ones may raise."""

    __slots__ = ("tx",)
    tx: dict[str, Any] | None

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        tx, self.tx = self.tx, None
        if tx is not None:
            _empty(tx)
        return str.__eq__(self, other)


def _empty(item: Any) -> None:
    children = list(item.values()) if isinstance(item, dict) else list(item) if isinstance(item, list) else []
    for child in children:
        _empty(child)
    if isinstance(item, (dict, list)):
        item.clear()


def _meddle(tx: dict[str, Any], holder: dict[str, Any], name: str) -> None:
    meddler = _Meddler(name)
    meddler.tx = tx
    value = holder.pop(name)
    holder[meddler] = value


@pytest.mark.parametrize(
    "where",
    [
        lambda t: t,
        lambda t: t["ret"][0],
        lambda t: t["raw_data"],
        lambda t: t["raw_data"]["contract"][0],
        lambda t: t["raw_data"]["contract"][0]["parameter"],
        lambda t: t["raw_data"]["contract"][0]["parameter"]["value"],
    ],
)
def test_keys_that_change_the_json_while_it_is_read(where: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Each key of each object of a transaction, in turn, a meddling key: the compiled reading declines or agrees."""
    assert tron_wire._BUILT, NOT_BUILT
    for tx in (
        transaction_json(trc20(account(1), account(2), account(3), 5)),
        transaction_json(trx(account(1), account(2), 7)),
    ):
        for name in list(where(tx)):
            changed = copy.deepcopy(tx)
            _meddle(changed, where(changed), name)
            reading = tron_wire._tronscan.usual(tron_txs._RESULT_TAILS, changed)
            assert reading is None or reading == tron_txs._transaction(tx, 100, 0)


def test_the_compiled_one_step_reading_is_used_and_refuses_odd_arguments() -> None:
    """`_tronscan.usual` is the one-step reading where built (not with DEPOSITWATCH_PURE_PYTHON=1); odd
    arguments: TypeError, not a crash."""
    assert tron_wire._BUILT, NOT_BUILT
    usual = tron_wire._tronscan.usual
    if tron_wire._USE_EXTENSION:
        assert isinstance(tron_txs._one_step, functools.partial) and tron_txs._one_step.func is usual
    else:
        assert tron_txs._one_step is tron_txs._usual_transaction
    tx = transaction_json(trx(account(1), account(2), 7))
    assert usual(tron_txs._RESULT_TAILS, tx) == tron_txs._transaction(tx, 100, 0)
    assert usual({}, tx) is None  # no such result name
    for odd in ([tron_txs._RESULT_TAILS, tx, tx], [tron_txs._RESULT_TAILS], [[], tx], [{"SUCCESS": (b"", True)}, tx]):
        with pytest.raises(TypeError):
            usual(*odd)
    assert usual(tron_txs._RESULT_TAILS, None) is None
    assert usual(tron_txs._RESULT_TAILS, {}) is None


# ---------------------------------------------------------------------------------------------------
# the usual logs read in one compiled step against the log-by-log reading

_LOG_ACCOUNTS = st.integers(min_value=0, max_value=5).map(account)  # few, so that watched and revoked keys meet
_KEYS = st.one_of(st.none(), st.frozensets(_LOG_ACCOUNTS, max_size=4))


@st.composite
def _info_json(draw: st.DrawFn) -> dict[str, Any]:
    """A transaction info with a few Transfer logs of USDT (configured) and of other contracts."""
    logs = []
    for nonce in range(draw(st.integers(0, 3))):
        contract = draw(st.sampled_from([USDT_KEY, account(77), account(78)]))
        amount = draw(st.integers(0, 2**256 - 1))
        logs.extend(trc20(draw(_LOG_ACCOUNTS), draw(_LOG_ACCOUNTS), contract, amount, nonce=nonce).logs)
    info: dict[str, Any] = {"id": "ab" * 32, "blockNumber": 100, "receipt": {"result": "SUCCESS"}}
    if logs or draw(st.booleans()):
        info["log"] = logs
    return info


def _log(info: dict[str, Any]) -> dict[str, Any]:
    logs: list[dict[str, Any]] = info.setdefault("log", [])
    if not logs:
        logs.append(trc20(account(1), account(2), USDT_KEY, 5).logs[0])
    return logs[-1]


def _topics(info: dict[str, Any]) -> list[Any]:
    topics: list[Any] = _log(info)["topics"]
    return topics


_LOG_CHANGES: dict[str, Any] = {
    "no log": lambda i: i.pop("log", None),
    "a null log": lambda i: i.update(log=None),
    "log as an object": lambda i: i.update(log={}),
    "log as a list subclass": lambda i: i.update(log=_List(i.get("log") or [])),
    "an entry as a list": lambda i: _log(i) and i["log"].append([]),
    "an entry as a dict subclass": lambda i: (entry := _Dict(_log(i))) and i["log"].append(entry),
    "no topics": lambda i: _log(i).pop("topics"),
    "null topics": lambda i: _log(i).update(topics=None),
    "topics as text": lambda i: _log(i).update(topics="ddf252ad"),
    "four topics": lambda i: _topics(i).append("00" * 32),
    "two topics": lambda i: _topics(i).pop(),
    "another event": lambda i: _topics(i).__setitem__(0, "ab" * 32),
    "the event topic in capitals": lambda i: _topics(i).__setitem__(0, _topics(i)[0].upper()),
    "the event topic as an int": lambda i: _topics(i).__setitem__(0, 2**255),
    "the event topic as a str subclass": lambda i: _topics(i).__setitem__(0, _Str(_topics(i)[0])),
    "a sender in capitals": lambda i: _topics(i).__setitem__(1, _topics(i)[1].upper()),
    "a sender with upper bytes": lambda i: _topics(i).__setitem__(1, "11" + _topics(i)[1][2:]),
    "a sender cut": lambda i: _topics(i).__setitem__(1, _topics(i)[1][:-2]),
    "a sender spaced": lambda i: _topics(i).__setitem__(1, _spaced(_topics(i)[1][:-2])),
    "a sender as null": lambda i: _topics(i).__setitem__(1, None),
    "a sender as a str subclass": lambda i: _topics(i).__setitem__(1, _Str(_topics(i)[1])),
    "a recipient beyond ASCII": lambda i: _topics(i).__setitem__(2, "é" * 64),
    "a recipient as a huge int": lambda i: _topics(i).__setitem__(2, 2**300),
    "a recipient nested deeply": lambda i: _topics(i).__setitem__(2, _nested(10_000)),
    "an address in capitals": lambda i: _log(i).update(address=_log(i)["address"].upper()),
    "an address with 41": lambda i: _log(i).update(address="41" + _log(i)["address"]),
    "an address cut": lambda i: _log(i).update(address=_log(i)["address"][:-2]),
    "no address": lambda i: _log(i).pop("address"),
    "an address of USDT": lambda i: _log(i).update(address=USDT_KEY.hex()),
    "an address of another token": lambda i: _log(i).update(address=account(77).hex()),
    "data in capitals": lambda i: _log(i).update(data=_log(i)["data"].upper()),
    "data cut": lambda i: _log(i).update(data=_log(i)["data"][:-2]),
    "data of two words": lambda i: _log(i).update(data=_log(i)["data"] * 2),
    "no data": lambda i: _log(i).pop("data"),
    "data as an int": lambda i: _log(i).update(data=5),
    "data as a str subclass": lambda i: _log(i).update(data=_Str(_log(i)["data"])),
    "data spaced": lambda i: _log(i).update(data=_spaced(_log(i)["data"])),
    "the info as a list": lambda i: i.update(log=[i.copy()]),
}


def _logs_agree(info: Any, watch: frozenset[bytes] | None, revoked: frozenset[bytes] | None) -> Any:
    """The compiled reading declines, or picks exactly the logs the log-by-log reading builds transfers
    for; where that refuses the info it always declines. Returns the compiled answer."""
    hits = tron_wire._tronscan.logs(info, TOKENS.trc20, watch, revoked)
    try:
        checked = tron_decode._token_logs(info, "ab" * 32, 100, TOKENS, watch, revoked)
    except BadNodeAnswer:
        assert hits is None
        return hits
    assert hits is None or tron_decode._log_transfers(hits, "ab" * 32, TOKENS.trc20) == checked
    return hits


@given(_info_json(), _KEYS, _KEYS)
def test_usual_logs_are_read_in_one_step_with_the_same_transfers(
    info: dict[str, Any], watch: frozenset[bytes] | None, revoked: frozenset[bytes] | None
) -> None:
    """Infos as the node writes them, any watched and revoked keys: read in one compiled step, the same
    transfers as log by log."""
    assert tron_wire._BUILT, NOT_BUILT
    assert _logs_agree(info, watch, revoked) is not None


@pytest.mark.parametrize("change", sorted(_LOG_CHANGES))
@settings(max_examples=30)
@given(info=_info_json(), watch=_KEYS, revoked=_KEYS)
def test_the_one_step_log_reading_never_disagrees(
    change: str, info: dict[str, Any], watch: frozenset[bytes] | None, revoked: frozenset[bytes] | None
) -> None:
    """Each change to the logs (case, lengths, types, missing fields, other events and contracts): the
    compiled reading declines or agrees, and accepts nothing the log-by-log reading refuses."""
    assert tron_wire._BUILT, NOT_BUILT
    _LOG_CHANGES[change](info)
    _logs_agree(info, watch, revoked)


class _Meddling:
    """A watched-key container whose `in` empties the info's logs: the compiled reading holds what it reads."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    def __contains__(self, key: object) -> bool:
        _empty(self.info)
        return True


def test_a_watch_that_changes_the_info_while_it_is_read() -> None:
    """No crash, no read of a freed object; the answer is for the logs as they were when read."""
    assert tron_wire._BUILT, NOT_BUILT
    info = infos_json(100, [trc20(account(1), account(2), USDT_KEY, 5), trc20(account(1), account(2), USDT_KEY, 6)])[0]
    info["log"] = info["log"] * 3
    hits = tron_wire._tronscan.logs(info, TOKENS.trc20, _Meddling(info), None)
    assert hits is not None and [hit[0] for hit in hits] == [0]
    assert info == {}


def test_the_compiled_log_reading_refuses_odd_arguments_and_passes_on_errors() -> None:
    """trc20 not a dict: TypeError; a watched-key container that raises: its error."""
    assert tron_wire._BUILT, NOT_BUILT
    info = infos_json(100, [trc20(account(1), account(2), USDT_KEY, 5)])[0]
    with pytest.raises(TypeError):
        tron_wire._tronscan.logs(info, list(TOKENS.trc20), None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tron_wire._tronscan.logs(info, TOKENS.trc20, None)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        tron_wire._tronscan.logs(info, TOKENS.trc20, 5, None)  # type: ignore[arg-type]
    assert tron_wire._tronscan.logs(None, TOKENS.trc20, None, None) is None
    assert tron_wire._tronscan.logs({}, TOKENS.trc20, None, None) == []


# ---------------------------------------------------------------------------------------------------
# a block's infos and transfers read in one compiled step against the info-by-info reading


def _internal_call(sender: bytes, recipient: bytes, sun: int) -> dict[str, Any]:
    return {
        "caller_address": "41" + sender.hex(),
        "transferTo_address": "41" + recipient.hex(),
        "callValueInfo": [{"callValue": sun}],
    }


@st.composite
def _block_parts(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A block's checked transactions and its infos: TRX, TRC-10 and TRC-20 (USDT and other tokens),
    some failed, some with internal TRX transfers, parties among a few accounts."""
    txs = []
    for nonce in range(draw(st.integers(0, 8))):
        sender, recipient = draw(_LOG_ACCOUNTS), draw(_LOG_ACCOUNTS)
        amount, result = draw(st.integers(0, 2**40)), draw(_RESULTS)
        kind = draw(st.sampled_from(["trx", "trc10", "usdt", "other", "internal"]))
        if kind == "trx":
            txs.append(trx(sender, recipient, amount, nonce=nonce, result=result))
        elif kind == "trc10":
            txs.append(trc10(sender, recipient, "1002000", amount, nonce=nonce, result=result))
        else:
            contract = account(77) if kind == "other" else USDT_KEY
            receipt = draw(st.sampled_from([result, "SUCCESS", None]))
            internal = [_internal_call(recipient, sender, amount)] if kind == "internal" else []
            txs.append(
                trc20(
                    sender,
                    recipient,
                    contract,
                    amount,
                    nonce=nonce,
                    result=result,
                    receipt_result=receipt,
                    internal=internal,
                )
            )
    block = block_json(100, PARENT, txs)
    checked, _ = tron_txs._transactions(block.get("transactions", []), 100)
    return checked, infos_json(100, txs)


def _info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    if not infos:
        infos.append({"id": "cd" * 32, "blockNumber": 100})  # names no transaction of the block
    return infos[-1]


_INFO_CHANGES: dict[str, Any] = {
    "no infos": lambda i: i.clear(),
    "an info as a list": lambda i: i.append([]),
    "an info as a dict subclass": lambda i: (info := _Dict(_info(i))) and i.append(info),
    "a repeated info": lambda i: i.append(_info(i)),
    "an info of another transaction": lambda i: _info(i).update(id="cd" * 32),
    "an id in capitals": lambda i: _info(i).update(id=_info(i)["id"].upper()),
    "an id as a str subclass": lambda i: _info(i).update(id=_Str(_info(i)["id"])),
    "an id as an int": lambda i: _info(i).update(id=2**256),
    "no id": lambda i: _info(i).pop("id"),
    "no block number": lambda i: _info(i).pop("blockNumber", None),
    "another block number": lambda i: _info(i).update(blockNumber=101),
    "a block number as true": lambda i: _info(i).update(blockNumber=True),
    "a block number as text": lambda i: _info(i).update(blockNumber="100"),
    "a block number as a float": lambda i: _info(i).update(blockNumber=100.0),
    "a block number as an int subclass": lambda i: _info(i).update(blockNumber=_Int(100)),
    "a huge block number": lambda i: _info(i).update(blockNumber=2**100),
    "a negative block number": lambda i: _info(i).update(blockNumber=-100),
    "no receipt": lambda i: _info(i).pop("receipt", None),
    "a null receipt": lambda i: _info(i).update(receipt=None),
    "a receipt as a list": lambda i: _info(i).update(receipt=[]),
    "a receipt as a dict subclass": lambda i: _info(i).update(receipt=_Dict(_info(i).get("receipt") or {})),
    "a reverted receipt": lambda i: _info(i).update(receipt={"result": "REVERT"}),
    "a null receipt result": lambda i: _info(i).update(receipt={"result": None}),
    "a receipt result as an int": lambda i: _info(i).update(receipt={"result": 1}),
    "a receipt result as a str subclass": lambda i: _info(i).update(receipt={"result": _Str("SUCCESS")}),
    "internal transactions": lambda i: _info(i).update(
        internal_transactions=[_internal_call(account(1), account(2), 5)]
    ),
    "null internal transactions": lambda i: _info(i).update(internal_transactions=None),
    "internal transactions as an object": lambda i: _info(i).update(internal_transactions={}),
    "logs as an object": lambda i: _info(i).update(log={}),
    "a log with capital data": lambda i: _log(_info(i)).update(data=_log(_info(i))["data"].upper()),
    "a log without data": lambda i: _log(_info(i)).pop("data"),
    "a log of USDT": lambda i: _log(_info(i)).update(address=USDT_KEY.hex()),
    "infos as an object": lambda i: i.append({"infos": i.copy()}),
}


def _transfers_agree(
    txs: dict[str, Any], infos: Any, watch: frozenset[bytes] | None, revoked: frozenset[bytes] | None, internal: bool
) -> Any:
    """The compiled step declines, or gives exactly the transfers `_infos` and `_transfers` give; where
    those refuse the block, it declines or (internal transactions, which it leaves to `_internal`) its
    transfers are refused with the same error. Returns the compiled answer."""
    hits = tron_wire._tronscan.transfers(txs, infos, 100, TOKENS.trc20, watch, revoked, internal)
    try:
        checked: Any = tron_decode._transfers(
            txs, tron_decode._infos(infos, 100, txs), 100, TOKENS, internal=internal, watch=watch, revoked=revoked
        )
    except BadNodeAnswer as exc:
        checked = str(exc)
    if hits is not None:
        try:
            built: Any = tron_decode._hit_transfers(hits, 100, TOKENS, watch)
        except BadNodeAnswer as exc:
            built = str(exc)
        assert built == checked
        assert not isinstance(built, str) or "internal" in built
    return hits


@given(_block_parts(), _KEYS, _KEYS, st.booleans())
def test_usual_blocks_have_their_transfers_read_in_one_step(
    parts: tuple[dict[str, Any], list[dict[str, Any]]],
    watch: frozenset[bytes] | None,
    revoked: frozenset[bytes] | None,
    internal: bool,
) -> None:
    """Blocks as the node writes them, any watched and revoked keys: infos checked and transfers picked in
    one compiled step, the same transfers as info by info."""
    assert tron_wire._BUILT, NOT_BUILT
    txs, infos = parts
    assert _transfers_agree(txs, infos, watch, revoked, internal) is not None


@pytest.mark.parametrize("change", sorted(_INFO_CHANGES))
@settings(max_examples=25)
@given(parts=_block_parts(), watch=_KEYS, revoked=_KEYS, internal=st.booleans())
def test_the_one_step_block_reading_never_disagrees(
    change: str,
    parts: tuple[dict[str, Any], list[dict[str, Any]]],
    watch: frozenset[bytes] | None,
    revoked: frozenset[bytes] | None,
    internal: bool,
) -> None:
    """Each change to the infos (types, ids, block numbers, receipts, internal transactions, logs): the
    compiled step declines or agrees, and accepts nothing the info-by-info reading refuses."""
    assert tron_wire._BUILT, NOT_BUILT
    txs, infos = parts
    _INFO_CHANGES[change](infos)
    _transfers_agree(txs, infos, watch, revoked, internal)


@pytest.mark.parametrize(
    "fields",
    [
        (1, b"\x42" + account(1), b"\x41" + account(2), None, 5, None, b""),  # an owner of another version
        (1, b"\x41" + account(1), b"\x41" + account(2)[:19], None, 5, None, b""),  # a short recipient
        (2, b"\x41" + account(1), None, None, 5, b"1002000", b""),  # no recipient
        (1, b"\x41" + account(1), b"\x41" + account(2), None, _Int(5), None, b""),  # an amount of another type
        (2**70, b"\x41" + account(1), b"\x41" + account(2), None, 5, None, b""),  # a huge contract type
    ],
)
def test_unusual_signed_fields_take_the_checked_way(fields: tuple[Any, ...]) -> None:
    """Signed accounts of other lengths or versions (which the general grammar lets through): the compiled
    step declines, and reading transfer by transfer raises or agrees."""
    assert tron_wire._BUILT, NOT_BUILT
    txs = {"ab" * 32: (fields, True)}
    for watch in (None, frozenset({account(1)})):
        assert tron_wire._tronscan.transfers(txs, [], 100, TOKENS.trc20, watch, None, True) in (None, [])
        _transfers_agree(txs, [], watch, None, True)


class _Emptying:
    """A watched-key container whose `in` empties the block's transactions and infos."""

    def __init__(self, *items: Any) -> None:
        self.items = items

    def __contains__(self, key: object) -> bool:
        for item in self.items:
            _empty(item)
        return False


def test_a_watch_that_changes_the_block_while_it_is_read() -> None:
    """No crash, no read of a freed object: the compiled step reads its own copy of the transactions and
    holds the infos it checked."""
    assert tron_wire._BUILT, NOT_BUILT
    txs_list = [trx(account(1), account(2), 5), trc20(account(1), account(2), USDT_KEY, 6, nonce=1)]
    txs, _ = tron_txs._transactions(block_json(100, PARENT, txs_list)["transactions"], 100)
    infos = infos_json(100, txs_list)
    hits = tron_wire._tronscan.transfers(txs, infos, 100, TOKENS.trc20, _Emptying(txs, infos), None, True)
    assert hits == []
    assert txs == {}
    assert infos == []


@pytest.mark.parametrize("name", ["receipt", "result", "log", "topics", "address", "data", "blockNumber"])
def test_info_keys_that_change_the_infos_while_they_are_read(name: str) -> None:
    """A meddling key beside each key of an info, its receipt and its log that empties the infos when
    compared: the compiled step does not crash or read a freed object, and declines or agrees."""
    assert tron_wire._BUILT, NOT_BUILT
    txs_list = [trc20(account(1), account(2), USDT_KEY, 6, receipt_result="SUCCESS")]
    txs, _ = tron_txs._transactions(block_json(100, PARENT, txs_list)["transactions"], 100)
    infos = infos_json(100, txs_list)
    holder = infos[0]["receipt"] if name == "result" else infos[0]
    if name in ("topics", "address", "data"):
        holder = infos[0]["log"][0]
    meddler = _Meddler(name)
    meddler.tx = infos  # type: ignore[assignment]
    holder[meddler] = holder.pop(name)
    hits = tron_wire._tronscan.transfers(txs, infos, 100, TOKENS.trc20, None, None, True)
    assert hits is None or isinstance(hits, list)


def test_the_compiled_block_reading_refuses_odd_arguments() -> None:
    """Arguments of other types: TypeError, not a crash; the decode uses the compiled step where built."""
    assert tron_wire._BUILT, NOT_BUILT
    transfers = tron_wire._tronscan.transfers
    assert (tron_decode._usual_transfers is transfers) is tron_wire._USE_EXTENSION
    txs, infos = {}, []  # type: ignore[var-annotated]
    for odd in (
        ([], infos, 100, TOKENS.trc20, None, None, True),
        (txs, infos, "100", TOKENS.trc20, None, None, True),
        (txs, infos, 100, [], None, None, True),
        (txs, infos, 2**80, TOKENS.trc20, None, None, True),
        ({"ab": "not a checked transaction"}, infos, 100, TOKENS.trc20, None, None, True),
    ):
        with pytest.raises((TypeError, OverflowError)):
            transfers(*odd)
    with pytest.raises(TypeError):
        transfers(txs, infos, 100, TOKENS.trc20, None, None)  # type: ignore[call-arg]
    assert transfers(txs, None, 100, TOKENS.trc20, None, None, True) == []
    assert transfers(txs, infos, -1, TOKENS.trc20, None, None, True) is None


def _outcome(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except BadNodeAnswer as exc:
        return str(exc)


@pytest.mark.parametrize("change", sorted(_CHANGES))
@settings(max_examples=10)
@given(txs=st.lists(_tx_json(), min_size=1, max_size=4), at=st.integers(0, 3))
def test_a_blocks_transactions_are_read_in_one_call_as_one_by_one(
    change: str, txs: list[dict[str, Any]], at: int
) -> None:
    """A block's transactions, one of them changed, one repeated: read in one compiled call (each declined
    one by the field-by-field checks), the same transactions, leaves and errors as one by one in Python."""
    assert tron_wire._BUILT, NOT_BUILT
    _CHANGES[change](txs[at % len(txs)])
    items = [*txs, txs[0]]
    compiled = _outcome(
        lambda: tron_wire._tronscan.transactions(tron_txs._RESULT_TAILS, items, tron_txs._transaction, 100)
    )
    assert compiled == _outcome(lambda: tron_txs._transactions_py(items, 100))
    assert compiled == _outcome(lambda: tron_txs._transactions(items, 100))


def test_the_compiled_transactions_reading_refuses_odd_arguments() -> None:
    """Not a plain list: None (the Python loop reads it); odd arguments or a checker's odd answer: TypeError."""
    assert tron_wire._BUILT, NOT_BUILT
    transactions = tron_wire._tronscan.transactions
    assert (tron_txs._compiled_transactions is transactions) is tron_wire._USE_EXTENSION
    tails, check = tron_txs._RESULT_TAILS, tron_txs._transaction
    items = [transaction_json(trx(account(1), account(2), 7)), {"an unusual": "transaction"}]
    assert transactions(tails, _List(items), check, 100) is None
    assert transactions(tails, [], check, 100) == ({}, [])
    with pytest.raises(BadNodeAnswer, match=r"transaction 1\.raw_data_hex is not"):
        transactions(tails, items, check, 100)
    with pytest.raises(TypeError):
        transactions(tails, items, lambda *_: "not a checked transaction", 100)
    with pytest.raises(TypeError):
        transactions(tails, items, None, 100)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        transactions([], items, check, 100)  # type: ignore[arg-type]


def test_real_transactions_are_read_in_one_step() -> None:
    """The real testnet transactions take the one-step reading, with the field-by-field result."""
    for position, tx in enumerate(_load("testnet_55088560.getblockbynum.json")["transactions"]):
        checked = tron_txs._transaction(tx, 55088560, position)
        for read in _ONE_STEP:
            assert read(tx) == checked


@given(
    st.one_of(st.binary(max_size=40), st.binary(min_size=20, max_size=20).map(lambda b: bytes(12) + b)), st.booleans()
)
def test_topic_accounts_read_either_way_agree(word: bytes, capitals: bool) -> None:
    """An address topic read the short way declines or agrees with the checked reading, never accepts
    what it refuses."""
    text = word.hex().upper() if capitals else word.hex()
    usual = tron_decode._usual_account(text)
    try:
        checked = tron_decode._topic_account(text, 100, "topic")
    except BadNodeAnswer:
        assert usual is None
        return
    assert usual in (None, checked)
    assert usual is not None or capitals or len(word) != 32


def test_logs_in_capital_hex_decode_the_same() -> None:
    """The node's lowercase hex and the same log in capitals give the same transfer."""
    _, block, infos = _chain()
    shouted = copy.deepcopy(infos)
    log = shouted[3]["log"][0]
    log.update(address=log["address"].upper(), data=log["data"].upper(), topics=[t.upper() for t in log["topics"]])
    shouted[3]["log"][0]["topics"][0] = infos[3]["log"][0]["topics"][0]
    assert decode_block(block, shouted, 100, TOKENS) == decode_block(block, infos, 100, TOKENS)


def test_tron_bench_runs_and_reports_decode_against_the_floor() -> None:
    """bench/tron_bench.py, the command docs/performance.md records, in a small form: every figure printed."""
    stdout = run_bench("tron_bench.py", "--blocks", "2", "--rounds", "1", timeout=300)
    starts = [line.split(":")[0] for line in stdout.splitlines()]
    for figure in ("hashing floor", "decode, 20 watched keys", "decode, every transfer built", "fetch"):
        assert figure in starts
    assert "decode, 20 watched keys, 10 revoked (any TRC-20 to or from them)" in starts
    assert stdout.count("x the floor") == 3
