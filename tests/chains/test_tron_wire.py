"""TRON signed bytes: the real testnet block's txIDs, txTrieRoot and block id recompute; the reader is strict."""

from __future__ import annotations

import hashlib
import json
import os
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


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70))
def test_the_compiled_merkle_root_is_the_python_one(leaves: list[bytes]) -> None:
    """Any number of 32-byte leaves: the compiled root (used where built) is the Python one."""
    root = wire._merkle_root_py(leaves)
    assert wire.merkle_root(leaves) == root
    if wire._BUILT:
        assert wire._tronscan.merkle_root(leaves) == root


def test_the_compiled_merkle_root_declines_other_leaves() -> None:
    """Leaves of other sizes or types, or not a list: the compiled root declines, the Python one decides."""
    assert wire._BUILT, "the compiled TRON reading is not built (test_the_tron_extension_is_built_and_used says why)"
    a = hashlib.sha256(b"a").digest()
    for odd in ([a, a[:31]], [a, bytearray(a)], (a, a), [a, "00" * 32], [a, a + b"\0"]):
        assert wire._tronscan.merkle_root(odd) is None  # type: ignore[arg-type]
    assert wire.merkle_root([a, a[:31], a]) == wire._merkle_root_py([a, a[:31], a])


# ---------------------------------------------------------------------------------------------------
# the canonical layout read at fixed offsets against the general grammar

_TYPE_NAMES = {1: "TransferContract", 2: "TransferAssetContract", 31: "TriggerSmartContract"}
_INT64 = st.integers(min_value=0, max_value=2**63 - 1)


def _readers() -> list[Any]:
    """Both fixed-offset readings: the Python one and the compiled one (where it is built: not having it
    fails `test_the_tron_extension_is_built_and_used`)."""
    return [wire._canonical_fields_py] + ([wire._tronscan.fields] if wire._BUILT else [])


def _general(raw: bytes) -> wire.SignedFields:
    c = wire.general_contract(raw)
    return c.type, c.owner, c.to, c.contract, c.amount, c.asset, c.data


@st.composite
def _java_tron_raw(draw: st.DrawFn, amounts: st.SearchStrategy[int] = _INT64) -> bytes:
    """`Transaction.raw` of one contract of a watched type, fields in java-tron's order."""
    kind = draw(st.sampled_from(sorted(_TYPE_NAMES)))
    owner = b"\x41" + draw(st.binary(min_size=20, max_size=20))
    other = draw(st.binary(min_size=21, max_size=21))
    amount = draw(amounts)
    if kind == 1:
        inner = wire.encode_bytes(1, owner) + wire.encode_bytes(2, other) + wire.encode_int(3, amount)
    elif kind == 2:
        asset = draw(st.binary(min_size=1, max_size=40))
        inner = (
            wire.encode_bytes(1, asset)
            + wire.encode_bytes(2, owner)
            + wire.encode_bytes(3, other)
            + wire.encode_int(4, amount)
        )
    else:
        data = draw(st.binary(max_size=300))
        inner = (
            wire.encode_bytes(1, owner)
            + wire.encode_bytes(2, other)
            + wire.encode_int(3, amount)
            + wire.encode_bytes(4, data)
        )
    type_url = f"type.googleapis.com/protocol.{_TYPE_NAMES[kind]}".encode()
    parameter = wire.encode_bytes(1, type_url) + wire.encode_bytes(2, inner)
    contract = wire.encode_int(1, kind) + wire.encode_bytes(2, parameter)
    return (
        wire.encode_bytes(1, draw(st.binary(min_size=2, max_size=2)))
        + wire.encode_bytes(4, draw(st.binary(min_size=8, max_size=8)))
        + wire.encode_int(8, draw(st.integers(min_value=1, max_value=2**63 - 1)))
        + wire.encode_repeated(11, [contract])
        + wire.encode_int(14, draw(_INT64))
        + wire.encode_int(18, draw(_INT64))
    )


def test_canonical_reading_equals_the_grammar_on_real_transactions() -> None:
    """The real testnet transactions are in java-tron's layout: read at fixed offsets, same fields."""
    for tx in BLOCK["transactions"]:
        raw = bytes.fromhex(tx["raw_data_hex"])
        for read in _readers():
            assert read(raw) is not None
            assert read(raw) == wire.contract_fields(raw) == _general(raw)
        assert wire.decode_contract(raw) == wire.general_contract(raw)


@given(_java_tron_raw())
def test_canonical_reading_equals_the_grammar_on_java_tron_layouts(raw: bytes) -> None:
    """Random accounts, amounts, token ids, call data and header fields in java-tron's layout: the
    fixed-offset reading takes them all and gives what the grammar gives."""
    for read in _readers():
        assert read(raw) is not None
        assert read(raw) == _general(raw)
    assert wire.decode_contract(raw) == wire.general_contract(raw)


def _agree(raw: bytes) -> None:
    """The fixed-offset reading either declines or gives exactly what the grammar gives (or refuses)."""
    readings = [read(raw) for read in _readers()]
    try:
        general = _general(raw)
    except wire.WireError:
        assert not any(readings)
        with pytest.raises(wire.WireError):
            wire.decode_contract(raw)
        return
    for reading in readings:
        assert reading is None or reading == general
    assert wire.contract_fields(raw) == general


@given(
    _java_tron_raw(st.integers(min_value=0, max_value=2**64 - 1)),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
    st.sampled_from("sidt"),
)
def test_canonical_reading_never_disagrees_on_damaged_bytes(raw: bytes, at: int, byte: int, how: str) -> None:
    """A byte set, inserted or deleted anywhere, or a cut: never a different answer from the grammar."""
    at %= len(raw)
    damaged = {
        "s": raw[:at] + bytes([byte]) + raw[at + 1 :],
        "i": raw[:at] + bytes([byte]) + raw[at:],
        "d": raw[:at] + raw[at + 1 :],
        "t": raw[:at],
    }[how]
    _agree(damaged)


@given(_java_tron_raw(), st.binary(min_size=1, max_size=12))
def test_extra_fields_go_the_general_way(raw: bytes, memo: bytes) -> None:
    """A memo (field 10) or a second contract after the usual ones: declined, and the grammar decides."""
    memo_raw = raw + wire.encode_bytes(10, memo)
    assert not any(read(memo_raw) for read in _readers())
    assert wire.contract_fields(memo_raw) == _general(raw)
    _agree(raw + wire.encode_repeated(11, [memo]))


@given(st.binary(max_size=300))
def test_canonical_reading_never_disagrees_on_garbage(data: bytes) -> None:
    """Arbitrary bytes, and the same bytes behind a valid java-tron head: the same answer either way."""
    _agree(data)
    _agree(bytes.fromhex("0a020001220800000000000000014001") + data)


def _usual_raws() -> list[bytes]:
    """The real transactions and one of each watched type as the test node signs them."""
    from tests.tronnode.chain import account, trc10, trc20, trx

    a, b = account(1), account(2)
    made = [trx(a, b, 1_500_000), trc10(a, b, "1002000", 42), trc20(a, b, account(3), 10**12)]
    return [bytes.fromhex(tx["raw_data_hex"]) for tx in BLOCK["transactions"]] + [tx.raw() for tx in made]


def test_canonical_reading_never_disagrees_on_any_single_byte_change() -> None:
    """Every position of real and test-node transactions, set to bytes that shift lengths, keys and
    varints, and every cut: the fixed-offset reading declines or agrees with the grammar."""
    for raw in _usual_raws():
        for at in range(len(raw)):
            _agree(raw[:at])
            _agree(raw[:at] + raw[at + 1 :])
            for byte in {0x00, 0x01, 0x7F, 0x80, 0xFF, raw[at] ^ 0x01, raw[at] ^ 0x80, (raw[at] + 1) & 0xFF}:
                _agree(raw[:at] + bytes([byte]) + raw[at + 1 :])
                _agree(raw[:at] + bytes([byte]) + raw[at:])


def test_a_ten_byte_varint_goes_the_general_way() -> None:
    """An expiration written in 10 bytes beyond 64 bits: the grammar refuses it, the fast reading declines."""
    raw = _usual_raws()[0]
    head = wire._RAW_HEAD.match(raw)
    assert head is not None
    start = raw.index(b"\x40", 12)
    overlong = raw[:start] + b"\x40" + b"\xff" * 9 + b"\x7f" + raw[head.end() - 1 :]
    assert not any(read(overlong) for read in _readers())
    with pytest.raises(wire.WireError, match="beyond 64 bits"):
        wire.decode_contract(overlong)
    fits = raw[:start] + b"\x40" + b"\xff" * 8 + b"\x7f" + raw[head.end() - 1 :]
    assert wire._canonical_fields_py(fits) == _general(fits)


@pytest.mark.parametrize("amount", [2**63 - 1, 2**63, 2**64 - 1])
def test_amounts_beyond_int64_go_the_general_way(amount: int) -> None:
    """A TRX amount with the sign bit set is refused by the grammar; the fast reading declines it."""
    from tests.tronnode.chain import account, trx

    raw = trx(account(1), account(2), amount).raw()
    if amount < 2**63:
        assert all(read(raw) == _general(raw) for read in _readers())
        return
    assert not any(read(raw) for read in _readers())
    with pytest.raises(wire.WireError, match="negative"):
        wire.decode_contract(raw)


def test_the_tron_extension_is_built_and_used() -> None:
    """The project's setup builds it (gcc, the Python headers, libcrypto's headers): not having it is a failure."""
    try:
        from depositwatch.chains import _tronscan
    except ImportError as exc:
        pytest.fail(
            f"the compiled TRON reading is not built ({exc}): `pip install -e .` builds it where gcc and "
            "libssl-dev are installed (scripts/install-system-tools.sh installs them)",
            pytrace=False,
        )
    pure_python = os.environ.get("DEPOSITWATCH_PURE_PYTHON", "") not in ("", "0")
    assert wire._BUILT and wire._tronscan is _tronscan
    assert (wire.canonical_fields is _tronscan.fields) is not pure_python
    assert (wire.usual_transaction is _tronscan.transaction) is not pure_python


def test_the_compiled_transaction_reading_refuses_odd_arguments() -> None:
    """Not text, not ASCII, odd or spaced hex, a short signature: None; a tail that is not bytes: TypeError."""
    from depositwatch.chains import _tronscan

    tx = BLOCK["transactions"][0]
    raw_hex, signature = tx["raw_data_hex"], tx["signature"][0]
    tail = wire.encode_bytes(5, wire.encode_result(wire.ContractResult[tx["ret"][0]["contractRet"]]))
    usual = _tronscan.transaction(raw_hex, signature, tail)
    assert usual == wire._usual_transaction_py(raw_hex, signature, tail)
    assert usual is not None and usual[0] == tx["txID"] and usual[1] == _leaf(tx)
    for odd_raw, odd_signature in [
        (raw_hex.encode(), signature),
        (raw_hex, signature.encode()),
        (raw_hex + "é", signature),
        (raw_hex[:-1], signature),
        (raw_hex[:2] + " " + raw_hex[2:], signature),
        (raw_hex, signature[:-2]),
        (raw_hex, signature + "00"),
        ("", signature),
        ("zz" + raw_hex[2:], signature),
    ]:
        assert _tronscan.transaction(odd_raw, odd_signature, tail) is None  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _tronscan.transaction(raw_hex, signature, "tail")  # type: ignore[arg-type]
