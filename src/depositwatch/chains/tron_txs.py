"""TRON transactions checked against their signed bytes: txID, trie leaf, contract and success.

Each transaction's `raw_data_hex` is hashed into its txID, the whole `Transaction` (raw data,
signatures, results) into its leaf of the block's trie, and its contract read from the signed bytes,
which the JSON beside them must agree with.

Each transaction is first read in one step (`_usual_transaction`: the node's usual JSON, java-tron's
layout, no names built for error messages); anything else, failures included, is read again field
by field (`_transaction`), which names what is wrong. Both check the same things and give the same
answer (the tests hold them to it); the first is what makes decoding cost a few times the hashing.
Where the extension is built, the first runs in C (`_tronscan.usual`), for a whole block in one call
(`_tronscan.transactions`, which hands what it declines to `_transaction`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from depositwatch.chains import tron_wire as wire
from depositwatch.chains.tron_json import _dict, _fail, _hex, _int, _list, _node_account

# The usual `ret` entry, `{"contractRet": NAME}` with no fee, encoded once per name.
_RESULT_BYTES = {name: wire.encode_result(code) for name, code in wire.ContractResult.__members__.items()}
_SUCCESSFUL = frozenset({wire.ContractResult.SUCCESS, wire.ContractResult.DEFAULT})
# ... and as the tail of a whole `Transaction` (field 5), with whether it succeeded: (calls, others)
_RESULT_TAILS = {
    name: (b"\x2a" + wire.encode_varint(len(encoded)) + encoded, name == "SUCCESS", name in ("SUCCESS", "DEFAULT"))
    for name, encoded in _RESULT_BYTES.items()
}
_TRIGGER = int(wire.ContractType.TRIGGER_SMART_CONTRACT)


_UsualReading = Callable[[str, str, bytes], tuple[str, bytes, wire.SignedFields] | None]
_Tx = tuple[wire.SignedFields, bool]  # a checked transaction: its signed contract, whether it succeeded


def _results(tx: dict[str, Any], height: int, where: str) -> tuple[list[bytes], str | None]:
    """The encoded `Transaction.Result` messages and the first result's name."""
    encoded: list[bytes] = []
    first: str | None = None
    for given in _list(tx.get("ret"), height, f"{where}.ret"):
        ret = _dict(given, height, f"{where}.ret")
        name = ret.get("contractRet", "DEFAULT")
        plain = _RESULT_BYTES.get(name) if isinstance(name, str) else None
        if plain is None:
            raise _fail(height, f"{where}: unknown contractRet {str(name)[:40]!r}")
        if first is None:
            first = name
        fee = ret.get("fee", 0)
        encoded.append(
            plain if not fee else wire.encode_result(wire.ContractResult[name], _int(fee, height, f"{where}.ret.fee"))
        )
    return encoded, first


def _transactions(items: list[Any], height: int) -> tuple[dict[str, _Tx], list[bytes]]:
    """Every transaction checked: `{txID: (contract, success)}` and the trie leaves in order."""
    if _compiled_transactions is not None:  # the loop below in one call, `_transaction` for what it declines
        both = _compiled_transactions(_RESULT_TAILS, items, _transaction, height)
        if both is not None:  # None: not a plain list
            return both
    return _transactions_py(items, height)


def _transactions_py(items: list[Any], height: int) -> tuple[dict[str, _Tx], list[bytes]]:
    """`_transactions` one by one in Python."""
    txs: dict[str, _Tx] = {}
    leaves: list[bytes] = []
    usual = _one_step
    for position, item in enumerate(items):
        checked = usual(item)
        if checked is None:
            checked = _transaction(item, height, position)
        txid, leaf, tx = checked
        txs[txid] = tx
        leaves.append(leaf)
    return txs, leaves


def _usual_transaction(tx: Any, read: _UsualReading = wire.usual_transaction) -> tuple[str, bytes, _Tx] | None:
    """`_transaction` for the usual shape, with no names for errors; None for anything else.

    The usual shape: one 65-byte signature, one `{"contractRet": NAME}` result, the contract in
    java-tron's layout, the JSON's fields equal to the signed ones as the node writes them (lowercase
    hex). Whatever else (including every failure) goes to `_transaction`, which checks the same
    things field by field and names what is wrong: both give the same answer (the tests check it).
    """
    if type(tx) is not dict:
        return None
    raw_hex, signatures, rets = tx.get("raw_data_hex"), tx.get("signature"), tx.get("ret")
    if type(raw_hex) is not str or type(signatures) is not list or type(rets) is not list:
        return None
    if len(signatures) != 1 or len(rets) != 1 or type(ret := rets[0]) is not dict or len(ret) != 1:
        return None
    name, signature = ret.get("contractRet"), signatures[0]
    if type(name) is not str or name not in _RESULT_TAILS or type(signature) is not str:
        return None
    tail, call_success, success = _RESULT_TAILS[name]
    usual = read(raw_hex, signature, tail)
    if usual is None or tx.get("txID") != usual[0] or not _json_agrees(tx, usual[2]):
        return None
    txid, leaf, fields = usual
    return txid, leaf, (fields, call_success if fields[0] == _TRIGGER else success)


# `_usual_transaction` in one compiled call where built (`_tronscan.usual`, the JSON walked in C), the
# Python one otherwise; both give the field-by-field answer or decline (the tests hold them to it).
_one_step: Callable[[Any], tuple[str, bytes, _Tx] | None] = (
    functools.partial(wire.compiled.usual, _RESULT_TAILS)
    if wire.compiled is not None and wire._USE_EXTENSION
    else _usual_transaction
)


_compiled_transactions: (
    Callable[
        [dict[str, tuple[bytes, bool, bool]], list[Any], Callable[[Any, int, int], tuple[str, bytes, _Tx]], int],
        tuple[dict[str, _Tx], list[bytes]] | None,
    ]
    | None
) = wire.compiled.transactions if wire.compiled is not None and wire._USE_EXTENSION else None


def _transaction(item: Any, height: int, position: int) -> tuple[str, bytes, _Tx]:
    """One transaction checked field by field: `(txID, its trie leaf, its contract and success)`."""
    where = f"transaction {position}"
    tx = _dict(item, height, where)
    raw = _hex(tx.get("raw_data_hex"), height, f"{where}.raw_data_hex")
    txid = hashlib.sha256(raw).hexdigest()
    if tx.get("txID") != txid:
        raise _fail(height, f"{where}: txID is not sha256(raw_data_hex)")
    signatures = [_hex(s, height, f"{where}.signature") for s in _list(tx.get("signature"), height, where)]
    results, first = _results(tx, height, where)
    leaf = hashlib.sha256(wire.transaction_bytes(raw, signatures, results)).digest()
    try:
        contract = wire.decode_contract(raw)
    except wire.WireError as exc:
        raise _fail(height, f"{where}: {exc}") from None
    _agrees(tx, contract, height, where)
    code = wire.ContractResult[first] if first is not None else None
    if contract.type == wire.ContractType.TRIGGER_SMART_CONTRACT:
        success = code is wire.ContractResult.SUCCESS
    else:
        success = code is None or code in _SUCCESSFUL
    c = contract
    return txid, leaf, ((c.type, c.owner, c.to, c.contract, c.amount, c.asset, c.data), success)


_JSON_FIELDS = {
    "owner_address": "owner",
    "to_address": "to",
    "contract_address": "contract",
    "amount": "amount",
    "call_value": "amount",
    "data": "data",
    "asset_name": "asset",
}


def _json_agrees(tx: dict[str, Any], fields: wire.SignedFields) -> bool:
    """`_agrees` for the node's usual JSON (lowercase hex, one contract, the usual fields of its type):
    True when it agrees, False when `_agrees` must look (it raises on any disagreement)."""
    raw_data = tx.get("raw_data")
    entries = raw_data.get("contract") if type(raw_data) is dict else None
    if type(entries) is not list or len(entries) != 1 or type(entry := entries[0]) is not dict:
        return False
    parameter = entry.get("parameter")
    value = parameter.get("value") if type(parameter) is dict else None
    if type(value) is not dict:
        return False
    kind, owner, to, contract, amount, asset, data = fields
    if value.get("owner_address") != owner.hex():
        return False
    if kind == _TRIGGER and contract is not None:  # call_value and data are left out when 0 or empty
        shown = 2 + ("call_value" in value) + ("data" in value)
        return (
            len(value) == shown
            and value.get("contract_address") == contract.hex()
            and value.get("call_value", 0) == amount
            and value.get("data", "") == data.hex()
        )
    if to is None:
        return False
    shown = 2 + ("amount" in value) + (asset is not None)  # TRC-10: asset_name too
    return (
        len(value) == shown
        and value.get("to_address") == to.hex()
        and value.get("amount", 0) == amount
        and (asset is None or value.get("asset_name") == asset.hex())
    )


def _agrees(tx: dict[str, Any], contract: wire.SignedContract, height: int, where: str) -> None:
    """The JSON's contract must say what the signed bytes say, for every field the watcher reads."""
    raw_data = _dict(tx.get("raw_data"), height, f"{where}.raw_data")
    entries = _list(raw_data.get("contract"), height, f"{where}.raw_data.contract")
    if len(entries) != 1:
        raise _fail(height, f"{where}: {len(entries)} contracts in the JSON, expected 1")
    parameter = _dict(_dict(entries[0], height, where).get("parameter"), height, f"{where}.parameter")
    value = _dict(parameter.get("value"), height, f"{where}.parameter.value")
    for name, shown in value.items():
        attribute = _JSON_FIELDS.get(name)
        if attribute is None:
            continue
        signed = getattr(contract, attribute)
        if isinstance(signed, int):
            same = shown == signed
        elif signed is None or not isinstance(shown, str):
            same = False
        elif shown == signed.hex():  # visible=false: the node's hex, lowercase
            same = True
        elif name.endswith("_address"):  # visible=true: base58
            same = _node_account(shown, height, f"{where}.{name}") == signed
        else:  # hex in another case, or a TRC-10 token id as text (visible=true)
            same = shown.lower() == signed.hex() or shown == signed.decode("latin-1")
        if not same:
            raise _fail(height, f"{where}: {name} in the JSON differs from the signed bytes")
