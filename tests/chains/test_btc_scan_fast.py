"""The compiled fast path of `scan_block` (`depositwatch.chains._btcscan`) against the pure-Python scan.

Valid blocks must give the identical `BlockScan` on both paths: the real block 413,567, the real
old-format mainnet blocks, segwit blocks from the regtest builder, and random blocks (hypothesis)
with random watched scripts, outpoints and follow sets. Every malformed block must raise, through
`scan_block` with the extension on, exactly the error the pure path raises (the extension gives up and
the pure path reads the block again), and an exception from a container's lookup must propagate.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Collection, Container, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depositwatch.chains import btc_scan
from depositwatch.chains.btc_decode import decode_block
from depositwatch.chains.btc_scan import BlockScan, _scan_block_ext, _scan_block_py, outpoint_key, scan_block
from depositwatch.chains.btc_serialize import make_tx, serialize_tx, write_varint
from depositwatch.chains.btc_wire import BlockDecodeError, Tx, TxIn, TxOut
from tests.btcnode import RegtestChain, op_return, p2pkh, p2sh, p2tr, p2wpkh, p2wsh
from tests.chains.test_btc_realdata import old_recordings
from tests.chains.test_btc_wire import (
    block_of,
    blocks,
    coinbase,
    garble,
    segwit_block,
    simple_tx,
    transactions,
    tx_inputs,
)
from tests.realdata import realdata

Watch = dict[str, Any]


@pytest.fixture(scope="module")
def block_raw() -> bytes:
    return realdata("btc", "block413567.raw").read_bytes()


def pure(raw: bytes, scripts: Container[bytes], outpoints: Collection[bytes] = frozenset(), **kw: Any) -> BlockScan:
    return _scan_block_py(raw, scripts, outpoints, **kw)


def fast(raw: bytes, scripts: Container[bytes], outpoints: Collection[bytes] = frozenset(), **kw: Any) -> BlockScan:
    """The extension's reading; fails the test if it gave up on a block the pure path takes."""
    found = _scan_block_ext(
        raw, scripts, outpoints, kw.get("verify_merkle", True), kw.get("more_scripts"), kw.get("follow")
    )
    assert found is not None, "the extension gave up on a valid block"
    return found


def assert_same(
    raw: bytes, scripts: Container[bytes], outpoints: Collection[bytes] = frozenset(), **kw: Any
) -> BlockScan:
    expected = pure(raw, scripts, outpoints, **kw)
    assert fast(raw, scripts, outpoints, **kw) == expected
    assert scan_block(raw, scripts, outpoints, **kw) == expected
    return expected


def outcome(scan: Callable[..., BlockScan], raw: bytes, *args: Any, **kw: Any) -> object:
    """The scan, or the type and message of the BlockDecodeError it raised."""
    try:
        return scan(raw, *args, **kw)
    except BlockDecodeError as exc:
        return (type(exc), str(exc))


def assert_same_outcome(raw: bytes, *args: Any, **kw: Any) -> object:
    expected = outcome(_scan_block_py, raw, *args, **kw)
    assert outcome(scan_block, raw, *args, **kw) == expected
    if not isinstance(expected, BlockScan):  # the extension gave up: it has no messages of its own
        outpoints = args[1] if len(args) > 1 else frozenset()
        more, follow = kw.get("more_scripts"), kw.get("follow")
        assert _scan_block_ext(raw, args[0], outpoints, kw.get("verify_merkle", True), more, follow) is None
    return expected


def watch_of(raw: bytes, rng: random.Random) -> Watch:
    """Watched scripts, outpoints (spent in the block or not) and a follow set drawn from a valid block."""
    txs = decode_block(raw).txs
    scripts = [out.script for tx in txs for out in tx.outputs]
    spent = [txin.prev_txid + struct.pack("<I", txin.prev_vout) for tx in txs for txin in tx.inputs]
    own = [outpoint_key(tx.txid, n) for tx in txs for n in range(len(tx.outputs))]
    watched = set(rng.sample(scripts, min(len(scripts), rng.randrange(0, 6))))
    return {
        "scripts": watched,
        "outpoints": set(rng.sample(spent, min(len(spent), rng.randrange(0, 4))) + rng.sample(own, min(len(own), 1))),
        "more": dict.fromkeys(rng.sample(scripts, min(len(scripts), rng.randrange(0, 3))), 0),
        "follow": set(rng.sample(sorted(watched), min(len(watched), rng.randrange(0, 3)))),
    }


def assert_same_for_every_form(raw: bytes, w: Watch) -> None:
    """Both paths agree with the outpoints given or not, with and without more_scripts and follow, and
    with and without the merkle check."""
    for outpoints in (frozenset(), w["outpoints"]):
        for more in (None, w["more"]):
            for follow in (None, w["follow"], w["more"]):
                for verify in (True, False):
                    assert_same(raw, w["scripts"], outpoints, verify_merkle=verify, more_scripts=more, follow=follow)


# ---------------------------------------------------------------------------------------------
# The extension is there


def test_the_extension_is_built_and_used() -> None:
    """The project's setup builds it (gcc, the Python headers, libcrypto's headers): not having it is a failure."""
    try:
        import depositwatch.chains._btcscan as ext
    except ImportError as exc:
        pytest.fail(
            f"the compiled Bitcoin scan is not built ({exc}): `pip install -e .` builds it where gcc and "
            "libssl-dev are installed (scripts/install-system-tools.sh installs them)",
            pytrace=False,
        )
    assert btc_scan._BUILT and btc_scan._btcscan is ext
    pure_python = os.environ.get("DEPOSITWATCH_PURE_PYTHON", "") not in ("", "0")
    assert btc_scan._USE_EXTENSION is not pure_python


@pytest.mark.parametrize(("value", "used"), [("1", False), ("yes", False), ("0", True), ("", True)])
def test_the_environment_variable_turns_the_extension_off(value: str, used: bool) -> None:
    env = {**os.environ, "DEPOSITWATCH_PURE_PYTHON": value}
    code = "from depositwatch.chains import btc_scan; print(btc_scan._BUILT, btc_scan._USE_EXTENSION)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", str(used)]


# ---------------------------------------------------------------------------------------------
# Real blocks


def test_block_413567_gives_the_same_scan(block_raw: bytes) -> None:
    txs = decode_block(block_raw).txs
    scripts = [out.script for tx in txs for out in tx.outputs]
    spent = [txin.prev_txid + struct.pack("<I", txin.prev_vout) for tx in txs[1:] for txin in tx.inputs]
    watched = set(scripts[::97])
    paying = sum(script in watched for script in scripts)
    # every hit followed: the spends of the hit outputs that the block spends again are found too
    scan = assert_same(block_raw, watched, set(spent[::131]))
    assert len(scan.outputs) == paying > 100 and len(scan.spends) > len(spent[::131])
    rng = random.Random(413567)
    for _ in range(4):
        assert_same_for_every_form(block_raw, watch_of(block_raw, rng))
    # the containers as the watcher passes them (a set and a dict), and others: frozenset, list, a
    # Container with its own __contains__, a set subclass
    revoked = dict.fromkeys(scripts[5::300], 1)

    class Wrapped:
        def __init__(self, keys: set[bytes]) -> None:
            self.keys = keys

        def __contains__(self, key: object) -> bool:
            return key in self.keys

    class Upside(set[bytes]):
        def __contains__(self, key: object) -> bool:  # a subclass's own __contains__ is honoured
            return not super().__contains__(key)

    for scripts_given in (watched, frozenset(watched), Wrapped(watched), Upside(watched)):
        for outpoints in (set(spent[::500]), frozenset(spent[::500]), list(spent[::500]), dict.fromkeys(spent[::500])):
            assert_same(block_raw, scripts_given, outpoints, more_scripts=revoked, follow=revoked)
    assert len(assert_same(block_raw, Upside(watched)).outputs) == len(scripts) - paying


def test_block_413567_as_the_benchmark_scans_it(block_raw: bytes) -> None:
    """A large active set plus revoked scripts, followed to their sweeps, as `BitcoinSource` calls it."""
    txs = decode_block(block_raw).txs
    real = sorted({out.script for tx in txs for out in tx.outputs if out.script[:1] != b"\x6a"})
    picked = random.Random(413567).sample(real, 40)
    active = {hashlib.sha256(i.to_bytes(4, "big")).digest()[:25] for i in range(100_000)} | set(picked[:20])
    revoked = dict.fromkeys(picked[20:], 0)
    scan = assert_same(block_raw, active, set(), more_scripts=revoked, follow=revoked)
    assert len(scan.outputs) >= 40


def test_old_format_mainnet_blocks_give_the_same_scan() -> None:
    data = old_recordings()
    assert sorted(data.raw) == [0, 1, 50_000, 50_001, 50_002]
    rng = random.Random(50_000)
    for raw in data.raw.values():
        scripts = {out.script for tx in decode_block(raw).txs for out in tx.outputs}
        scan = assert_same(raw, scripts)
        assert len(scan.outputs) == sum(len(tx.outputs) for tx in decode_block(raw).txs)
        for _ in range(3):
            assert_same_for_every_form(raw, watch_of(raw, rng))


def test_the_real_block_truncated_or_garbled_raises_the_same(block_raw: bytes) -> None:
    rng = random.Random(7)
    watched = {out.script for tx in decode_block(block_raw).txs[:50] for out in tx.outputs}
    cuts = [0, 79, 80, 81, 82, 83, 84, 85, 500, len(block_raw) - 5, len(block_raw) - 4, len(block_raw) - 1]
    for cut in cuts + [rng.randrange(len(block_raw)) for _ in range(40)]:
        assert_same_outcome(block_raw[:cut], watched)
    assert_same_outcome(block_raw + b"\x00", watched)
    for _ in range(120):
        at = rng.randrange(81, len(block_raw))
        garbled = block_raw[:at] + bytes((block_raw[at] ^ rng.randrange(1, 256),)) + block_raw[at + 1 :]
        assert not isinstance(assert_same_outcome(garbled, watched), BlockScan)
        assert_same_outcome(garbled, watched, verify_merkle=False, follow=watched)  # a changed script can pass


# ---------------------------------------------------------------------------------------------
# Segwit blocks from the regtest builder


def regtest_blocks() -> list[bytes]:
    """Blocks of the regtest stand-in: segwit spends (P2WPKH, P2WSH, P2TR witness stacks) mixed with
    legacy ones, payments to every script type, and spends of outputs of the same block."""
    chain = RegtestChain()
    chain.mine(140)  # 40 mature coinbases: one for each payment
    first = chain.height + 1
    rng = random.Random(5)
    makers = [p2pkh, p2sh, p2wpkh]
    for _ in range(3):
        paid = []
        for k in range(12):
            script = [*(m(rng.randbytes(20)) for m in makers), p2wsh(rng.randbytes(32)), p2tr(rng.randbytes(32))][k % 5]
            tx = chain.send([(script, 20_000 + k), (op_return(b"dw%d" % k), 0)], fee=500)
            paid.append((tx, script))
        for tx, script in paid[:6]:  # spent again in the same block
            chain.spend([(tx.txid, 0)], [(p2wpkh(rng.randbytes(20)), 19_000)], witness=script[:1] != b"\x76")
        chain.mine()
    return [chain.block_at(h).raw for h in range(1, chain.height + 1) if h >= first or h <= 2]


def test_regtest_segwit_blocks_give_the_same_scan() -> None:
    raws = regtest_blocks()
    busy = [raw for raw in raws if len(decode_block(raw).txs) > 1]
    assert len(busy) == 3
    assert all(any(tx.has_witness for tx in decode_block(raw).txs[1:]) for raw in busy)
    rng = random.Random(11)
    for raw in raws:
        scripts = {out.script for tx in decode_block(raw).txs for out in tx.outputs}
        scan = assert_same(raw, scripts)  # every output a hit, every spend of one of them seen
        assert scan.tx_count == len(decode_block(raw).txs)
        for _ in range(3):
            assert_same_for_every_form(raw, watch_of(raw, rng))
    assert any(assert_same(raw, {o.script for tx in decode_block(raw).txs for o in tx.outputs}).spends for raw in busy)


# ---------------------------------------------------------------------------------------------
# Random blocks


@st.composite
def chained_blocks(draw: st.DrawFn) -> bytes:
    """A valid block whose transactions also spend outputs of earlier ones in it (what `follow` is for)."""
    txs: list[Tx] = []
    paid: list[tuple[bytes, int]] = []  # outpoints of the block so far
    for _ in range(draw(st.integers(1, 6))):
        inputs = []
        for drawn in draw(st.lists(tx_inputs, min_size=1, max_size=3)):
            txin = drawn
            if paid and draw(st.booleans()):
                prev, vout = paid.pop(draw(st.integers(0, len(paid) - 1)))
                txin = TxIn(prev, vout, drawn.script_sig, drawn.sequence, drawn.witness)
            inputs.append(txin)
        outputs = draw(
            st.lists(st.builds(TxOut, st.integers(-(2**63), 2**63 - 1), st.sampled_from(SCRIPTS)), max_size=4)
        )
        tx = make_tx(inputs, outputs, version=draw(st.integers(0, 2**32 - 1)))
        if any(tx.txid == other.txid for other in txs):
            continue
        txs.append(tx)
        paid += [(bytes.fromhex(tx.txid)[::-1], n) for n in range(len(outputs))]
    if any(tx.has_witness for tx in txs):
        return segwit_block(txs)
    return block_of([coinbase([TxOut(1, b"\x51")]), *txs])


# few distinct scripts, so that several outputs pay the same one; both CompactSize forms
SCRIPTS = [b"", b"\x51", b"\x00\x14" + b"\x11" * 20, b"\x6a\x01\x02", b"\xaa" * 300, b"\xbb" * 253]


def random_watch(data: st.DataObject, raw: bytes) -> Watch:
    txs = decode_block(raw).txs
    scripts = sorted({out.script for tx in txs for out in tx.outputs} | {b"\x99"})
    spent = [txin.prev_txid + struct.pack("<I", txin.prev_vout) for tx in txs for txin in tx.inputs]
    own = [outpoint_key(tx.txid, n) for tx in txs for n in range(len(tx.outputs))]
    keys = st.sampled_from([*spent, *own, bytes(36), b"", b"\x01"])
    return {
        "scripts": data.draw(st.sets(st.sampled_from(scripts)), label="scripts"),
        "outpoints": data.draw(st.sets(keys), label="outpoints"),
        "more": data.draw(st.one_of(st.none(), st.sets(st.sampled_from(scripts))), label="more"),
        "follow": data.draw(st.one_of(st.none(), st.sets(st.sampled_from(scripts))), label="follow"),
        "verify": data.draw(st.booleans(), label="verify"),
    }


def same_for(raw: bytes, w: Watch) -> BlockScan:
    return assert_same(
        raw, w["scripts"], w["outpoints"], verify_merkle=w["verify"], more_scripts=w["more"], follow=w["follow"]
    )


@settings(max_examples=200, deadline=None)
@given(block=blocks(), data=st.data())
def test_random_blocks_give_the_same_scan(block: tuple[bytes, list[Tx]], data: st.DataObject) -> None:
    raw, _ = block
    same_for(raw, random_watch(data, raw))


@settings(max_examples=300, deadline=None)
@given(raw=chained_blocks(), data=st.data())
def test_random_chained_blocks_give_the_same_scan(raw: bytes, data: st.DataObject) -> None:
    same_for(raw, random_watch(data, raw))


def test_long_counts_give_the_same_scan() -> None:
    """More than 252 transactions, inputs, outputs and witness items: every count in its long form."""
    many_ins = [TxIn(hashlib.sha256(b"in%d" % i).digest(), i, b"", 0, (b"\x01",) * (i % 3)) for i in range(300)]
    wide = make_tx(many_ins, [TxOut(i, SCRIPTS[i % len(SCRIPTS)]) for i in range(260)])
    stack = (b"\x02" * 70_000, *(b"\x03",) * 299)  # a length in 5 bytes, a count in 3
    deep = make_tx([TxIn(b"\x05" * 32, 0, b"\x51" * 70_000, 1, stack)], [TxOut(5, b"\x51")])
    others = [simple_tx(n) for n in range(300)] + [wide, deep]
    raw = segwit_block(others)
    assert raw[80] == 0xFD and serialize_tx(wide, witness=False)[4] == 0xFD
    scripts = set(SCRIPTS[1::2])
    spent = {txin.prev_txid + struct.pack("<I", txin.prev_vout) for txin in many_ins[::7]}
    scan = assert_same(raw, scripts, spent, follow=None)
    assert len(scan.outputs) > 100 and len(scan.spends) == len(spent)
    assert_same(raw, scripts, spent, more_scripts={b""}, follow={b"\x51"}, verify_merkle=False)


# ---------------------------------------------------------------------------------------------
# Malformed blocks: the pure path's errors, byte for byte


def small_blocks() -> list[bytes]:
    legacy = block_of([coinbase([TxOut(50, b"\x51")]), simple_tx(1), simple_tx(2)])
    segwit = segwit_block([simple_tx(1, witness=(b"\x01" * 72, b"\x02" * 33)), simple_tx(2)])
    long_script = block_of([coinbase([TxOut(50, b"\x51" * 300)]), simple_tx(3)])
    return [legacy, segwit, long_script]


def test_every_truncation_of_small_blocks_raises_the_same() -> None:
    for raw in small_blocks():
        watched = {out.script for tx in decode_block(raw).txs for out in tx.outputs}
        for cut in range(len(raw)):
            assert not isinstance(assert_same_outcome(raw[:cut], watched), BlockScan)
            assert not isinstance(assert_same_outcome(raw[:cut], watched, verify_merkle=False), BlockScan)


def test_each_kind_of_error_raises_the_same() -> None:
    txs = [coinbase([TxOut(50 * 10**8, b"\x51")]), simple_tx(1), simple_tx(2)]
    raw = block_of(txs)
    one = serialize_tx(txs[1])
    at = raw.index(one)  # the second transaction
    cases = {  # the block, and how the message starts
        "no transactions": (raw[:80] + b"\x00", "the block has no transactions"),
        "trailing bytes": (raw + b"\x00\x00", "2 trailing bytes after the last transaction"),
        "merkle mismatch": (raw[:-5] + bytes((raw[-5] ^ 1,)) + raw[-4:], "merkle root mismatch: the header has"),
        "mutated tree": (raw[:80] + b"\x04" + raw[81:] + serialize_tx(txs[2]), "mutated merkle tree"),
        "bad flag": (raw[: at + 4] + b"\x00\x02" + raw[at + 4 :], "unknown transaction flag 0x02"),
        "superfluous witness": (
            raw[: at + 4] + b"\x00\x01" + one[4:-4] + b"\x00" + one[-4:] + raw[at + len(one) :],
            "superfluous witness record",
        ),
        "non-canonical count": (raw[:80] + b"\xfd\x03\x00" + raw[81:], "non-canonical CompactSize at byte offset 80"),
        "count too large": (raw[:80] + b"\xfe\x00\x00\x00\x02" + raw[81:], "count 33554432 at byte offset 80 does"),
        "count over MAX_SIZE": (raw[:80] + b"\xfe\x01\x00\x00\x02" + raw[81:], "CompactSize 33554433 at byte"),
        "non-canonical input count": (raw[: at + 4] + b"\xfd\x01\x00" + raw[at + 5 :], "non-canonical CompactSize"),
        "input count too large": (raw[: at + 4] + b"\xfe\x00\x00\x00\x02" + raw[at + 5 :], "count 33554432"),
        "truncated": (raw[:-1], "truncated transaction at byte offset"),
        "short header": (raw[:80], "truncated block: 80 bytes"),
        "nothing": (b"", "truncated block: 0 bytes"),
    }
    for name, (bad, message) in cases.items():
        for verify in (True, False):
            expected = assert_same_outcome(bad, {b"\x51"}, verify_merkle=verify)
            if name in ("merkle mismatch", "mutated tree") and not verify:
                assert isinstance(expected, BlockScan), name
            else:
                assert isinstance(expected, tuple) and expected[1].startswith(message), (name, expected)
    # a non-canonical script length, and one over MAX_SIZE, in an output
    out_at = raw.index(b"\x00\x14" + bytes(20)) - 1
    for length in (b"\xfd\x16\x00", b"\xfe\x01\x00\x00\x02", b"\xff" + bytes(8)):
        assert not isinstance(assert_same_outcome(raw[:out_at] + length + raw[out_at + 1 :], {b"\x51"}), BlockScan)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(block=blocks(), data=st.data())
def test_garbled_blocks_raise_the_same(block: tuple[bytes, list[Tx]], data: st.DataObject) -> None:
    raw, _ = block
    garbled = garble(data, raw)
    w = random_watch(data, raw)
    assert_same_outcome(
        garbled, w["scripts"], w["outpoints"], verify_merkle=w["verify"], more_scripts=w["more"], follow=w["follow"]
    )


@settings(max_examples=100, deadline=None)
@given(tx=transactions(), data=st.data())
def test_truncated_random_blocks_raise_the_same(tx: Tx, data: st.DataObject) -> None:
    raw = segwit_block([tx]) if tx.has_witness else block_of([coinbase([TxOut(1, b"\x51")]), tx])
    for cut in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=20)):
        assert not isinstance(
            assert_same_outcome(raw[:cut], {b"\x51"}, verify_merkle=data.draw(st.booleans())), BlockScan
        )


# ---------------------------------------------------------------------------------------------
# Containers


class Boom(Exception):
    pass


class Raising:
    """A container whose lookups raise after `after` of them."""

    def __init__(self, keys: Collection[bytes] = (), after: int = 0) -> None:
        self.keys = set(keys)
        self.after = after

    def __contains__(self, key: object) -> bool:
        if self.after <= 0:
            raise Boom(key)
        self.after -= 1
        return key in self.keys

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def test_an_exception_from_a_lookup_propagates(block_raw: bytes) -> None:
    txs = decode_block(block_raw).txs
    watched = {txs[3].outputs[0].script}
    spent = {txs[9].inputs[0].prev_txid + struct.pack("<I", txs[9].inputs[0].prev_vout)}
    calls: list[Callable[[], object]] = [
        lambda: _scan_block_ext(block_raw, Raising(), frozenset(), True, None, None),
        lambda: _scan_block_ext(block_raw, Raising(after=100), frozenset(), True, None, None),
        lambda: _scan_block_ext(block_raw, set(), frozenset(), True, Raising(after=5), None),
        lambda: _scan_block_ext(block_raw, watched, frozenset(), True, None, Raising()),
        lambda: _scan_block_ext(block_raw, set(), Raising(spent), True, None, None),
    ]
    for call in calls:
        with pytest.raises(Boom):
            call()
    for scan in (scan_block, _scan_block_py):
        with pytest.raises(Boom):
            scan(block_raw, Raising(after=100))
        with pytest.raises(Boom):
            scan(block_raw, set(), more_scripts=Raising(after=5))
        with pytest.raises(Boom):
            scan(block_raw, watched, follow=Raising())
        with pytest.raises(Boom):
            scan(block_raw, set(), Raising(spent))
        # a watched output followed into a set made from unhashable outpoints
        with pytest.raises(TypeError, match="unhashable"):
            scan(block_raw, watched, [bytes(36), bytearray(36)])

    class BadIter(Raising):
        def __iter__(self) -> Iterator[bytes]:
            raise Boom("iter")

    with pytest.raises(Boom, match="iter"):
        scan_block(block_raw, set(), BadIter(spent))


def test_outpoints_that_are_not_bytes_are_left_to_the_pure_path(block_raw: bytes) -> None:
    txin = decode_block(block_raw).txs[9].inputs[0]
    key = txin.prev_txid + struct.pack("<I", txin.prev_vout)
    assert _scan_block_ext(block_raw, set(), [bytearray(key)], True, None, None) is None
    scan = assert_same_outcome(block_raw, set(), [bytearray(key)])
    assert isinstance(scan, BlockScan) and [(s.tx_index, s.vin) for s in scan.spends] == [(9, 0)]


def test_a_hit_output_followed_keeps_the_callers_outpoints_untouched(block_raw: bytes) -> None:
    txs = decode_block(block_raw).txs
    watched = {out.script for tx in txs for out in tx.outputs}
    outpoints = frozenset({txs[9].inputs[0].prev_txid + struct.pack("<I", txs[9].inputs[0].prev_vout)})
    scan = assert_same(block_raw, watched, outpoints)
    assert outpoints == frozenset({txs[9].inputs[0].prev_txid + struct.pack("<I", txs[9].inputs[0].prev_vout)})
    assert len(scan.spends) > 100


def test_varint_long_script_lengths_in_inputs_are_read(block_raw: bytes) -> None:
    """Multisig spends have scriptSigs over 252 bytes: block 413,567 has some, read on the fast path."""
    long_sigs = [txin for tx in decode_block(block_raw).txs for txin in tx.inputs if len(txin.script_sig) >= 0xFD]
    assert long_sigs
    spent = {txin.prev_txid + struct.pack("<I", txin.prev_vout) for txin in long_sigs}
    assert len(assert_same(block_raw, set(), spent).spends) == len(long_sigs)
    assert write_varint(len(long_sigs[0].script_sig))[0] == 0xFD
