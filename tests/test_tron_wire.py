"""TRON signed bytes: the real testnet block's txIDs, txTrieRoot and block id recompute; the reader is strict."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from depositwatch.chains import tron_wire as wire
from tests.realdata import realdata

BLOCK: dict[str, Any] = json.loads(realdata("tron", "testnet_55088560.getblockbynum.json").read_text())


def _leaf(tx: dict[str, Any]) -> bytes:
    raw = bytes.fromhex(tx["raw_data_hex"])
    results = [wire.encode_result(wire.ContractResult[r["contractRet"]]) for r in tx["ret"]]
    signatures = [bytes.fromhex(s) for s in tx["signature"]]
    return hashlib.sha256(wire.transaction_bytes(raw, signatures, results)).digest()


def _header(block: dict[str, Any]) -> wire.HeaderFields:
    raw = block["block_header"]["raw_data"]
    return wire.HeaderFields(
        timestamp=raw["timestamp"],
        tx_trie_root=bytes.fromhex(raw["txTrieRoot"]),
        parent_hash=bytes.fromhex(raw["parentHash"]),
        number=raw["number"],
        witness_id=raw.get("witness_id", 0),
        witness_address=bytes.fromhex(raw["witness_address"]),
        version=raw.get("version", 0),
        account_state_root=bytes.fromhex(raw.get("accountStateRoot", "")),
    )


def test_every_txid_is_the_sha256_of_its_raw_data() -> None:
    """The three real transactions: txID = sha256(raw_data_hex)."""
    for tx in BLOCK["transactions"]:
        assert wire.tx_id(bytes.fromhex(tx["raw_data_hex"])).hex() == tx["txID"]


def test_tx_trie_root_recomputes_over_whole_transactions() -> None:
    """The merkle root over sha256 of each whole Transaction (with its REVERT results) is the header's."""
    leaves = [_leaf(tx) for tx in BLOCK["transactions"]]
    assert wire.merkle_root(leaves).hex() == BLOCK["block_header"]["raw_data"]["txTrieRoot"]


def test_a_flipped_result_code_breaks_the_root() -> None:
    """Results are inside the hashed Transaction: claiming SUCCESS for a REVERT changes the root."""
    txs = [dict(tx) for tx in BLOCK["transactions"]]
    txs[1]["ret"] = [{"contractRet": "SUCCESS"}]
    assert wire.merkle_root([_leaf(tx) for tx in txs]).hex() != BLOCK["block_header"]["raw_data"]["txTrieRoot"]


def test_block_id_recomputes_from_the_header_fields() -> None:
    """blockID = height (8 bytes) + sha256(canonical header raw)[8:]."""
    header = _header(BLOCK)
    assert wire.block_id(header.number, wire.header_raw_bytes(header)).hex() == BLOCK["blockID"]


def test_signed_contract_fields_match_the_json() -> None:
    """The TriggerSmartContract fields decoded from the signed bytes are the ones the JSON shows."""
    for tx in BLOCK["transactions"]:
        contract = wire.decode_contract(bytes.fromhex(tx["raw_data_hex"]))
        value = tx["raw_data"]["contract"][0]["parameter"]["value"]
        assert contract.type == wire.ContractType.TRIGGER_SMART_CONTRACT
        assert contract.owner.hex() == value["owner_address"]
        assert contract.contract is not None and contract.contract.hex() == value["contract_address"]
        assert contract.data.hex() == value["data"]
        assert contract.amount == 0


def _raw_with(contract_type: int, parameter: bytes) -> bytes:
    any_message = wire.encode_bytes(1, b"type.googleapis.com/protocol.X") + wire.encode_bytes(2, parameter)
    contract = wire.encode_int(1, contract_type) + wire.encode_bytes(2, any_message)
    return wire.encode_bytes(1, b"\x95\x9c") + wire.encode_int(8, 1749121635000) + wire.encode_repeated(11, [contract])


def test_transfer_and_transfer_asset_decode() -> None:
    """TRX (TransferContract) and TRC-10 (TransferAssetContract) give owner, recipient, amount and token id."""
    owner, to = b"\x41" + bytes(range(20)), b"\x41" + bytes(range(20, 40))
    trx = wire.decode_contract(
        _raw_with(1, wire.encode_bytes(1, owner) + wire.encode_bytes(2, to) + wire.encode_int(3, 1_500_000))
    )
    assert (trx.type, trx.owner, trx.to, trx.amount, trx.asset) == (1, owner, to, 1_500_000, None)
    trc10 = wire.decode_contract(
        _raw_with(
            2,
            wire.encode_bytes(1, b"1002000")
            + wire.encode_bytes(2, owner)
            + wire.encode_bytes(3, to)
            + wire.encode_int(4, 7),
        )
    )
    assert (trc10.type, trc10.owner, trc10.to, trc10.amount, trc10.asset) == (2, owner, to, 7, b"1002000")


def test_two_contracts_are_refused() -> None:
    """TRON transactions carry exactly one contract; anything else is not what the watcher reads."""
    contract = wire.encode_int(1, 1)
    raw = wire.encode_repeated(11, [contract, contract])
    with pytest.raises(wire.WireError, match="2 contracts"):
        wire.decode_contract(raw)


def test_negative_amount_is_refused() -> None:
    """An int64 amount with the sign bit set is not a transfer amount."""
    raw = _raw_with(1, wire.encode_int(3, 2**64 - 5))
    with pytest.raises(wire.WireError, match="negative"):
        wire.decode_contract(raw)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    """Every 64-bit value encodes and reads back."""
    encoded = wire.encode_int(3, value)
    assert list(wire.fields(encoded)) == ([(3, 0, value)] if value else [])


def test_every_truncation_of_a_real_transaction_fails_only_as_wire_error() -> None:
    """Cutting the signed bytes anywhere never raises anything but WireError."""
    raw = bytes.fromhex(BLOCK["transactions"][0]["raw_data_hex"])
    for cut in range(len(raw)):
        try:
            wire.decode_contract(raw[:cut])
        except wire.WireError:
            continue


@given(st.binary(max_size=200))
def test_garbage_fails_only_as_wire_error(data: bytes) -> None:
    """Arbitrary bytes either decode or raise WireError: never another exception."""
    try:
        wire.decode_contract(data)
    except wire.WireError:
        pass


def test_merkle_root_shapes() -> None:
    """Empty: 32 zero bytes; one leaf: the leaf; three: the odd leaf carried up unchanged."""
    a, b, c = (hashlib.sha256(bytes([i])).digest() for i in range(3))
    assert wire.merkle_root([]) == bytes(32)
    assert wire.merkle_root([a]) == a
    ab = hashlib.sha256(a + b).digest()
    assert wire.merkle_root([a, b, c]) == hashlib.sha256(ab + c).digest()
