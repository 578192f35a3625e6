"""The raw Bitcoin decoder: a real mainnet block, a known segwit vector, and properties of random data."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depositwatch.chains.btc_decode import decode_block, decode_tx
from depositwatch.chains.btc_scan import outpoint_key, scan_block
from depositwatch.chains.btc_serialize import make_tx, serialize_block, serialize_header, serialize_tx, write_varint
from depositwatch.chains.btc_wire import (
    COINBASE_VOUT,
    MAX_SIZE,
    NULL_TXID,
    WITNESS_COMMITMENT_HEADER,
    BlockDecodeError,
    RawBlock,
    Tx,
    TxIn,
    TxOut,
    block_hash,
    decode_header,
    merkle_root,
    read_varint,
    sha256d,
    witness_commitment,
)
from tests.realdata import realdata

BLOCK_413567 = "0000000000000000025aff8be8a55df8f89c77296db6198f272d6577325d4069"

# BIP143's P2SH-P2WPKH example, signed, with its txid and wtxid.
SEGWIT_TX = bytes.fromhex(
    "01000000000101db6b1b20aa0fd7b23880be2ecbd4a98130974cf4748fb66092ac4d3ceb1a5477010000001716001479091972"
    "186c449eb1ded22b78e40d009bdf0089feffffff02b8b4eb0b000000001976a914a457b684d7f0d539a46a45bbc043f35b59d0"
    "d96388ac0008af2f000000001976a914fd270b1ee6abcaea97fea7ad0402e8bd8ad6d77c88ac02473044022047ac8e878352d3"
    "ebbde1c94ce3a10d057c24175747116f8288e5d794d12d482f0220217f36a485cae903c713331d877c1f64677e3622ad401072"
    "6870540656fe9dcb012103ad1d8e89212f0b92c74d23bb710c00662ad1470198ac48c43f7d6f93a2a2687392040000"
)
SEGWIT_TXID = "ef48d9d0f595052e0f8cdcf825f7a5e50b6a388a81f206f3f4846e5ecd7a0c23"
SEGWIT_WTXID = "680f483b2bf6c5dcbf111e69e885ba248a41a5e92070cfb0afec3cfc49a9fabb"


@pytest.fixture(scope="module")
def block_raw() -> bytes:
    return realdata("btc", "block413567.raw").read_bytes()


@pytest.fixture(scope="module")
def block(block_raw: bytes) -> RawBlock:
    return decode_block(block_raw)


def script_kind(script: bytes) -> str:
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return "p2pkh"
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22:] == b"\x87":
        return "p2sh"
    if script[:1] == b"\x6a":
        return "op_return"
    return "other"


def internal(txid: str) -> bytes:
    return bytes.fromhex(txid)[::-1]


# ---------------------------------------------------------------------------------------------
# Block 413,567


def test_real_block_decodes_to_the_known_figures(block_raw: bytes, block: RawBlock) -> None:
    assert len(block_raw) == 999_887
    assert hashlib.sha256(block_raw).hexdigest() == ("71964cee18c58675784846d498944b35daa41e36b6f65a7e8feb291def924cce")
    assert block.header.hash == BLOCK_413567 == block_hash(block_raw[:80])
    assert len(block.txs) == 1557
    outputs = [out for tx in block.txs for out in tx.outputs]
    assert len(outputs) == 3581
    assert Counter(script_kind(out.script) for out in outputs) == {"p2pkh": 2841, "p2sh": 737, "op_return": 3}
    assert [tx.is_coinbase for tx in block.txs] == [True] + [False] * 1556
    assert not any(tx.has_witness for tx in block.txs)
    assert all(tx.wtxid == tx.txid for tx in block.txs)


def test_real_block_header_merkle_root_and_work(block_raw: bytes, block: RawBlock) -> None:
    header = block.header
    assert merkle_root([internal(tx.txid) for tx in block.txs]) == internal(header.merkle_root)
    assert block_raw[36:68] == internal(header.merkle_root)
    assert block_raw[4:36] == internal(header.prev_hash)
    assert serialize_header(header) == block_raw[:80]
    assert decode_header(block_raw[:80]) == header
    exponent, mantissa = header.bits >> 24, header.bits & 0xFFFFFF
    assert int(header.hash, 16) <= mantissa << (8 * (exponent - 3))  # it carries its proof of work
    assert 1_464_000_000 < header.time < 1_466_000_000  # May 2016


def test_real_block_round_trips(block_raw: bytes, block: RawBlock) -> None:
    assert serialize_block(block.header, block.txs) == block_raw
    for tx in block.txs[:200]:
        assert decode_tx(serialize_tx(tx)) == tx
        assert tx.txid == sha256d(serialize_tx(tx, witness=False))[::-1].hex()


def test_decoded_objects_are_the_frozen_classes(block: RawBlock) -> None:
    tx = block.txs[1]
    assert type(tx) is Tx and type(tx.inputs[0]) is TxIn and type(tx.outputs[0]) is TxOut
    rebuilt = Tx(
        tx.txid,
        tx.wtxid,
        tx.version,
        tuple(TxIn(i.prev_txid, i.prev_vout, i.script_sig, i.sequence, i.witness) for i in tx.inputs),
        tuple(TxOut(o.value, o.script) for o in tx.outputs),
        tx.locktime,
    )
    assert rebuilt == tx and hash(rebuilt) == hash(tx) and repr(rebuilt) == repr(tx)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.outputs[0].value = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.inputs[0].sequence = 1  # type: ignore[misc]
    assert dataclasses.replace(tx.outputs[0], value=7).value == 7
    assert tx.inputs[0].prev_txid_hex == tx.inputs[0].prev_txid[::-1].hex()


def test_scan_finds_what_decode_finds_in_the_real_block(block_raw: bytes, block: RawBlock) -> None:
    outputs = [(i, tx, n, out) for i, tx in enumerate(block.txs) for n, out in enumerate(tx.outputs)]
    scripts = {out.script for _, _, _, out in outputs[::97]}
    inputs = [(i, tx, n, txin) for i, tx in enumerate(block.txs[1:], 1) for n, txin in enumerate(tx.inputs)]
    spent = {txin.prev_txid + struct.pack("<I", txin.prev_vout) for _, _, _, txin in inputs[::131]}
    expected_outputs = [(i, tx.txid, n, out.value, out.script) for i, tx, n, out in outputs if out.script in scripts]
    # a spend of an output that was a hit earlier in the block counts too
    paid = {outpoint_key(txid, n) for _, txid, n, _, _ in expected_outputs}
    expected_spends = [
        (i, tx.txid, n, txin.prev_txid_hex, txin.prev_vout)
        for i, tx, n, txin in inputs
        if outpoint_key(txin.prev_txid_hex, txin.prev_vout) in spent | paid
    ]
    assert len(expected_outputs) > 40 and len(expected_spends) > 30
    assert any(outpoint_key(h[3], h[4]) in paid - spent for h in expected_spends)
    for verify in (True, False):
        scan = scan_block(block_raw, scripts, spent, verify_merkle=verify)
        assert scan.header == block.header and scan.tx_count == 1557
        assert [(h.tx_index, h.txid, h.vout, h.value, h.script) for h in scan.outputs] == expected_outputs
        assert [(h.tx_index, h.txid, h.vin, h.prev_txid, h.prev_vout) for h in scan.spends] == expected_spends


def test_real_block_truncated_or_extended_is_refused(block_raw: bytes) -> None:
    for cut in (0, 79, 80, 81, 82, 83, 84, 500, len(block_raw) // 2, len(block_raw) - 4, len(block_raw) - 1):
        with pytest.raises(BlockDecodeError):
            decode_block(block_raw[:cut])
        with pytest.raises(BlockDecodeError):
            scan_block(block_raw[:cut], set())
    with pytest.raises(BlockDecodeError, match=r"1 trailing bytes .* at byte offset 999887"):
        decode_block(block_raw + b"\x00")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_real_block_every_sampled_change_is_caught(block_raw: bytes, data: st.DataObject) -> None:
    # a change in the transactions breaks the merkle root or the structure
    at = data.draw(st.integers(81, len(block_raw) - 1), label="offset")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != block_raw[at]), label="byte")
    garbled = block_raw[:at] + bytes((new,)) + block_raw[at + 1 :]
    with pytest.raises(BlockDecodeError):
        decode_block(garbled)
    with pytest.raises(BlockDecodeError):
        scan_block(garbled, set())


# ---------------------------------------------------------------------------------------------
# Known vector and specific errors


def test_bip143_segwit_vector() -> None:
    tx = decode_tx(SEGWIT_TX)
    assert (tx.txid, tx.wtxid) == (SEGWIT_TXID, SEGWIT_WTXID)
    assert tx.has_witness and [len(item) for item in tx.inputs[0].witness] == [71, 33]
    assert tx.inputs[0].script_sig.hex() == "16001479091972186c449eb1ded22b78e40d009bdf0089"
    assert [out.value for out in tx.outputs] == [199996600, 800000000]
    assert (tx.version, tx.locktime, tx.inputs[0].sequence) == (1, 1170, 0xFFFFFFFE)
    assert serialize_tx(tx) == SEGWIT_TX
    stripped = serialize_tx(tx, witness=False)
    assert sha256d(stripped)[::-1].hex() == SEGWIT_TXID
    legacy = decode_tx(stripped)
    assert legacy.txid == legacy.wtxid == SEGWIT_TXID and not legacy.has_witness
    assert make_tx(tx.inputs, tx.outputs, version=1, locktime=1170) == tx


def test_varints() -> None:
    for n in (0, 1, 0xFC, 0xFD, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000):
        encoded = write_varint(n)
        assert len(encoded) == (1 if n < 0xFD else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9)
        if n <= MAX_SIZE:
            assert read_varint(b"\xaa" + encoded + b"\xbb", 1) == (n, 1 + len(encoded))
        else:
            with pytest.raises(BlockDecodeError, match="is over"):
                read_varint(encoded)
    for non_canonical in ("fdfc00", "fe ffff0000", "ff ffffffff00000000"):
        with pytest.raises(BlockDecodeError, match="non-canonical CompactSize at byte offset 0"):
            read_varint(bytes.fromhex(non_canonical))
    for short in ("", "fd", "fdff", "feffffff"):
        with pytest.raises(BlockDecodeError, match="truncated"):
            read_varint(bytes.fromhex(short))
    with pytest.raises(ValueError):
        write_varint(-1)
    with pytest.raises(ValueError):
        write_varint(1 << 64)


def simple_tx(n: int = 0, *, witness: tuple[bytes, ...] = ()) -> Tx:
    return make_tx(
        [TxIn(hashlib.sha256(b"prev%d" % n).digest(), n, b"\x51", 0xFFFFFFFF, witness)],
        [TxOut(1000 + n, b"\x00\x14" + bytes(20)), TxOut(0, b"\x6a\x01\x02")],
    )


def coinbase(outputs: list[TxOut], *, reserved: bytes | None = None, height: int = 1) -> Tx:
    script_sig = (b"\x51" if height == 1 else bytes((1, height))) + b"\x00"
    witness = () if reserved is None else (reserved,)
    return make_tx([TxIn(NULL_TXID, COINBASE_VOUT, script_sig, 0xFFFFFFFF, witness)], outputs)


def block_of(txs: list[Tx], *, nonce: int = 0) -> bytes:
    root = merkle_root([internal(tx.txid) for tx in txs])
    header = struct.pack("<i32s32sIII", 0x20000000, b"\x11" * 32, root, 1_700_000_000, 0x207FFFFF, nonce)
    return header + write_varint(len(txs)) + b"".join(serialize_tx(tx) for tx in txs)


def segwit_block(others: list[Tx]) -> bytes:
    """A block whose coinbase commits to the others' witness data, as BIP141 requires."""
    pay = [TxOut(50 * 10**8, b"\x51")]
    draft = coinbase(pay, reserved=bytes(32))
    commitment = witness_commitment([draft, *others])
    return block_of([coinbase([*pay, TxOut(0, WITNESS_COMMITMENT_HEADER + commitment)], reserved=bytes(32)), *others])


def test_transaction_errors_say_what_and_where() -> None:
    raw = serialize_tx(simple_tx())
    with pytest.raises(BlockDecodeError, match=rf"^2 trailing bytes after the transaction, at byte offset {len(raw)}$"):
        decode_tx(raw + b"\x00\x00")
    with pytest.raises(
        BlockDecodeError, match=rf"truncated transaction at byte offset 0 \(the data ends at byte {len(raw) - 1}\)"
    ):
        decode_tx(raw[:-1])
    with pytest.raises(BlockDecodeError, match="unknown transaction flag 0x02 at byte offset 5"):
        decode_tx(raw[:4] + b"\x00\x02" + raw[4:])
    empty_witness = raw[:4] + b"\x00\x01" + raw[4:-4] + b"\x00" + raw[-4:]
    with pytest.raises(BlockDecodeError, match="superfluous witness record in the transaction at byte offset 0"):
        decode_tx(empty_witness)
    with pytest.raises(BlockDecodeError, match="non-canonical CompactSize at byte offset 4"):
        decode_tx(raw[:4] + b"\xfd\x01\x00" + raw[5:])
    with pytest.raises(BlockDecodeError, match="count 33554432 at byte offset 4 does not fit"):
        decode_tx(raw[:4] + b"\xfe\x00\x00\x00\x02" + raw[5:])


def test_block_errors_say_what_and_where() -> None:
    txs = [coinbase([TxOut(50 * 10**8, b"\x51")]), simple_tx(1), simple_tx(2)]
    raw = block_of(txs)
    assert [tx.txid for tx in decode_block(raw).txs] == [tx.txid for tx in txs]
    with pytest.raises(BlockDecodeError, match="truncated block: 80 bytes"):
        decode_block(raw[:80])
    with pytest.raises(BlockDecodeError, match="no transactions"):
        decode_block(raw[:80] + b"\x00")
    with pytest.raises(BlockDecodeError, match=r"^merkle root mismatch: the header has "):
        decode_block(raw[:-5] + bytes((raw[-5] ^ 1,)) + raw[-4:])
    # CVE-2012-2459: repeating the last transaction of an odd list keeps the root
    mutated = raw[:80] + b"\x04" + raw[81:] + serialize_tx(txs[2])
    assert merkle_root([internal(tx.txid) for tx in [*txs, txs[2]]]) == raw[36:68]
    with pytest.raises(BlockDecodeError, match="mutated merkle tree"):
        decode_block(mutated)
    with pytest.raises(BlockDecodeError, match="mutated merkle tree"):
        scan_block(mutated, set())
    with pytest.raises(BlockDecodeError, match="a block header is 80 bytes, not 79"):
        decode_header(raw[:79])
    assert merkle_root([]) == NULL_TXID


def test_witness_commitment_is_checked() -> None:
    others = [simple_tx(1, witness=(b"\x01" * 72, b"\x02" * 33)), simple_tx(2)]
    raw = segwit_block(others)
    decoded = decode_block(raw)
    assert decoded.txs[1:] == tuple(others) and decoded.txs[0].has_witness
    assert decoded.txs[0].wtxid != "00" * 32  # the coinbase's real hash, not the commitment's zero
    at = raw.index(b"\x01" * 72)
    garbled = raw[:at] + b"\x03" + raw[at + 1 :]
    with pytest.raises(BlockDecodeError, match="witness commitment mismatch"):
        decode_block(garbled)
    assert scan_block(garbled, set()).tx_count == 3  # the scan skips witness data, which it never returns
    no_commitment = block_of([coinbase([TxOut(1, b"\x51")]), *others])
    with pytest.raises(BlockDecodeError, match="no witness commitment"):
        decode_block(no_commitment)


def test_scan_sees_a_spend_of_an_output_hit_earlier_in_the_block() -> None:
    watched = b"\x00\x14" + b"\x77" * 20
    pay = make_tx([TxIn(b"\x01" * 32, 0, b"", 0xFFFFFFFD, ())], [TxOut(5, b"\x51"), TxOut(7_000, watched)])
    sweep = make_tx([TxIn(internal(pay.txid), 1, b"\x00", 0xFFFFFFFF, ())], [TxOut(6_000, b"\x51")])
    unrelated = make_tx([TxIn(internal(pay.txid), 0, b"", 0xFFFFFFFF, ())], [TxOut(4, b"\x51")])
    raw = block_of([coinbase([TxOut(50, b"\x51")]), pay, unrelated, sweep])
    scan = scan_block(raw, {watched})
    assert [(h.tx_index, h.txid, h.vout, h.value, h.script) for h in scan.outputs] == [(1, pay.txid, 1, 7000, watched)]
    assert [(h.tx_index, h.txid, h.vin, h.prev_txid, h.prev_vout) for h in scan.spends] == [
        (3, sweep.txid, 0, pay.txid, 1)
    ]
    known = outpoint_key(pay.txid, 0)
    assert [h.tx_index for h in scan_block(raw, set(), {known}).spends] == [2]


# ---------------------------------------------------------------------------------------------
# Properties over random transactions and blocks

u32 = st.integers(0, 2**32 - 1)
scripts = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=300))  # both varint forms
witness_stacks = st.lists(st.one_of(st.binary(max_size=80), st.binary(min_size=253, max_size=260)), max_size=3)
tx_inputs = st.builds(
    TxIn,
    prev_txid=st.binary(min_size=32, max_size=32),
    prev_vout=u32,
    script_sig=scripts,
    sequence=u32,
    witness=witness_stacks.map(tuple),
)
tx_outputs = st.builds(TxOut, value=st.integers(-(2**63), 2**63 - 1), script=scripts)


@st.composite
def transactions(draw: st.DrawFn) -> Tx:
    return make_tx(
        draw(st.lists(tx_inputs, min_size=1, max_size=4)),
        draw(st.lists(tx_outputs, max_size=4)),
        version=draw(u32),
        locktime=draw(u32),
    )


@st.composite
def blocks(draw: st.DrawFn) -> tuple[bytes, list[Tx]]:
    others = draw(st.lists(transactions(), max_size=5, unique_by=lambda tx: tx.txid))
    raw = (
        segwit_block(others)
        if any(tx.has_witness for tx in others)
        else block_of([coinbase([TxOut(1, b"\x51")]), *others])
    )
    return raw, others


@settings(max_examples=300)
@given(tx=transactions())
def test_transactions_round_trip(tx: Tx) -> None:
    raw = serialize_tx(tx)
    assert decode_tx(raw) == tx
    assert tx.txid == sha256d(serialize_tx(tx, witness=False))[::-1].hex()
    assert tx.wtxid == sha256d(raw)[::-1].hex()
    assert (raw[4:6] == b"\x00\x01") == tx.has_witness
    stripped = decode_tx(serialize_tx(tx, witness=False))
    assert stripped.txid == tx.txid and not stripped.has_witness


@settings(max_examples=100)
@given(tx=transactions(), data=st.data())
def test_every_truncated_transaction_is_refused(tx: Tx, data: st.DataObject) -> None:
    raw = serialize_tx(tx)
    cuts = range(len(raw)) if len(raw) < 400 else data.draw(st.lists(st.integers(0, len(raw) - 1), max_size=40))
    for cut in cuts:
        with pytest.raises(BlockDecodeError):
            decode_tx(raw[:cut])


def garble(data: st.DataObject, raw: bytes) -> bytes:
    edits = data.draw(
        st.lists(
            st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, len(raw)), st.integers(0, 255)),
            min_size=1,
            max_size=4,
        ),
        label="edits",
    )
    out = bytearray(raw)
    for op, where, byte in edits:
        at = min(where, len(out))
        if op == "set" and at < len(out):
            out[at] = byte
        elif op == "insert":
            out.insert(at, byte)
        elif op == "delete" and at < len(out):
            del out[at]
    return bytes(out)


def only_error_is_block_decode_error(decode: Callable[[bytes], object], raw: bytes) -> object | None:
    try:
        return decode(raw)
    except BlockDecodeError:
        return None


@settings(max_examples=400)
@given(tx=transactions(), data=st.data())
def test_garbled_transactions_raise_only_block_decode_error(tx: Tx, data: st.DataObject) -> None:
    garbled = garble(data, serialize_tx(tx))
    decoded = only_error_is_block_decode_error(decode_tx, garbled)
    if decoded is not None:  # it is another valid transaction, and its encoding is unique
        assert isinstance(decoded, Tx)
        assert serialize_tx(decoded) == garbled


@settings(max_examples=150, deadline=None)
@given(block=blocks(), data=st.data())
def test_blocks_round_trip_and_scan_agrees(block: tuple[bytes, list[Tx]], data: st.DataObject) -> None:
    raw, others = block
    decoded = decode_block(raw)
    assert decoded.txs[1:] == tuple(others)
    assert serialize_block(decoded.header, decoded.txs) == raw
    outputs = [(i, tx, n, out) for i, tx in enumerate(decoded.txs) for n, out in enumerate(tx.outputs)]
    watched = set(data.draw(st.lists(st.sampled_from([out.script for *_, out in outputs]), max_size=3)))
    scan = scan_block(raw, watched)
    expected = [(i, tx.txid, n, out.value, out.script) for i, tx, n, out in outputs if out.script in watched]
    assert [(h.tx_index, h.txid, h.vout, h.value, h.script) for h in scan.outputs] == expected


@settings(max_examples=100, deadline=None)
@given(block=blocks(), data=st.data())
def test_every_truncated_block_is_refused(block: tuple[bytes, list[Tx]], data: st.DataObject) -> None:
    raw, _ = block
    for cut in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=30)):
        with pytest.raises(BlockDecodeError):
            decode_block(raw[:cut])
        with pytest.raises(BlockDecodeError):
            scan_block(raw[:cut], set())


@settings(max_examples=400, deadline=None)
@given(block=blocks(), data=st.data())
def test_garbled_blocks_are_refused_unless_only_the_header_changed(
    block: tuple[bytes, list[Tx]], data: st.DataObject
) -> None:
    raw, _ = block
    garbled = garble(data, raw)
    decoded = only_error_is_block_decode_error(decode_block, garbled)
    scanned = only_error_is_block_decode_error(lambda b: scan_block(b, set()), garbled)
    if decoded is None:
        if scanned is not None:  # the scan skips witness data, so only the witness check can tell
            with pytest.raises(BlockDecodeError, match="witness"):
                decode_block(garbled)
        return
    assert isinstance(decoded, RawBlock) and scanned is not None
    assert serialize_block(decoded.header, decoded.txs) == garbled
    # the merkle root and the witness commitment pin every transaction byte: only the header's own
    # fields (version, previous hash, time, bits, nonce) may differ
    assert garbled[80:] == raw[80:] and garbled[36:68] == raw[36:68]
