"""Bitcoin wire format: decode and encode blocks, headers and transactions (legacy and segwit).

Pure Python, built for speed: one pass over the buffer with `struct` reads and slices, one double
SHA-256 per transaction for its txid (two for a segwit transaction, whose wtxid differs), and
nothing built that the caller did not ask for.

Conventions, as in Bitcoin Core:

- `txid` is the double SHA-256 of the serialization without witness data, `wtxid` of the full
  serialization (the same for a transaction without witness), both as display hex (byte order
  reversed). The coinbase's `wtxid` is its real hash: the zero hash BIP141 puts in place of the
  coinbase when it builds the witness commitment is a convention of that commitment only, so a
  caller building a witness merkle tree substitutes it itself.
- A transaction is written in the segwit form (marker 0x00, flag 0x01) only when some input has a
  non-empty witness stack. A segwit-form transaction whose stacks are all empty is rejected
  ("superfluous witness record"), and so is any other flag. CompactSize integers must be canonical
  and at most 0x02000000 (`ReadCompactSize`). So every buffer that decodes has exactly one
  encoding: `serialize(decode(x)) == x`.
- A block must hold at least one transaction, its txid merkle root must equal the header's, and the
  tree must not be mutated (CVE-2012-2459: repeating the last transactions keeps the root). The
  merkle root covers no witness data, so `decode_block` also checks the BIP141 witness commitment of
  a block that has any. A changed byte anywhere but in the header's own fields is therefore caught.
- A header's `version` is a signed 32-bit integer (Core's `nVersion`); a transaction's `version` is
  read unsigned, as Core prints it and BIP68 reads it. Output values are signed 64-bit.

The transaction grammar is written once, in `_read_txs`: it reads and checks the transactions of a
block (or the one of `decode_tx`) and records where each input and output is, and each output's
script. Two ways to read a block sit on it: `decode_block` builds the whole object tree;
`scan_block` checks exactly as much but only looks each output script and each spent outpoint up in
the caller's sets and builds objects for the hits: that is the hot path of a watcher.

`scan_block` has an optional compiled fast path, `depositwatch.chains._btcscan` (C, SHA-256 from
OpenSSL's libcrypto), built by `pip install` where a compiler and libcrypto's headers are found. It
reads the block exactly as the Python does and returns the same facts, but it never reports an error
of its own: on anything irregular it gives up and the pure-Python scan (`_scan_block_py`, the
reference) reads the block again and raises the exact error. Setting the environment variable
`DEPOSITWATCH_PURE_PYTHON=1` (read at import) turns the extension off.

Frozen dataclasses are slow to construct (every field goes through `object.__setattr__`), and a
block has thousands of inputs and outputs, so the decoder fills a plain slotted twin of each class
and then sets its `__class__` to the frozen one: same layout, same result, about four times
cheaper. `tests/test_btc_wire.py` checks the objects are exactly what the constructors give.
"""

from __future__ import annotations

import hashlib
import os
import struct
from bisect import bisect_right
from collections.abc import Collection, Container, Sequence
from dataclasses import dataclass
from itertools import accumulate
from operator import eq
from typing import Any

try:
    from depositwatch.chains import _btcscan
except ImportError:  # not built (no compiler or no libcrypto headers): the pure-Python scan does it all
    _btcscan = None  # type: ignore[assignment]
_BUILT: bool = _btcscan is not None
"""Whether the compiled fast path of `scan_block` was built and imported."""

__all__ = [
    "COINBASE_VOUT",
    "MAX_SIZE",
    "NULL_TXID",
    "WITNESS_COMMITMENT_HEADER",
    "BlockDecodeError",
    "BlockHeader",
    "BlockScan",
    "OutputHit",
    "RawBlock",
    "SpendHit",
    "Tx",
    "TxIn",
    "TxOut",
    "block_hash",
    "decode_block",
    "decode_header",
    "decode_tx",
    "make_tx",
    "merkle_root",
    "outpoint_key",
    "read_varint",
    "scan_block",
    "serialize_block",
    "serialize_header",
    "serialize_tx",
    "sha256d",
    "witness_commitment",
    "write_varint",
]

MAX_SIZE = 0x02000000
"""The largest CompactSize value Bitcoin Core reads."""

NULL_TXID = bytes(32)
COINBASE_VOUT = 0xFFFFFFFF
WITNESS_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")
"""OP_RETURN, push 36, then the BIP141 tag; the 32 committed bytes follow."""

_MIN_TX_SIZE = 51  # version, 1 input with an empty script, 0 outputs, locktime
_sha256 = hashlib.sha256
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from
_IN_TAIL = struct.Struct("<IB").unpack_from  # prev_vout and the first byte of the script length
_OUT_HEAD = struct.Struct("<qB").unpack_from  # value and the first byte of the script length
_HEADER = struct.Struct("<i32s32sIII")
_P32 = struct.Struct("<I").pack
_P64 = struct.Struct("<q").pack
_TRUNCATED = (IndexError, struct.error)


class BlockDecodeError(ValueError):
    """A malformed or truncated block or transaction; the message says what and at which byte offset."""


@dataclass(frozen=True, slots=True)
class TxOut:
    value: int
    """Satoshis."""
    script: bytes
    """The output script (scriptPubKey)."""


@dataclass(frozen=True, slots=True)
class TxIn:
    prev_txid: bytes
    """The spent transaction's id: 32 bytes in internal (wire) order."""
    prev_vout: int
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...]

    @property
    def prev_txid_hex(self) -> str:
        """The spent transaction's id as display hex."""
        return self.prev_txid[::-1].hex()


@dataclass(frozen=True, slots=True)
class Tx:
    txid: str
    """Display hex of the double SHA-256 of the serialization without witness."""
    wtxid: str
    """Display hex of the double SHA-256 of the full serialization (the real hash, coinbase too)."""
    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int

    @property
    def is_coinbase(self) -> bool:
        inputs = self.inputs
        return len(inputs) == 1 and inputs[0].prev_vout == COINBASE_VOUT and inputs[0].prev_txid == NULL_TXID

    @property
    def has_witness(self) -> bool:
        """Whether some input has a non-empty witness stack (then the tx is written in segwit form)."""
        return any(txin.witness for txin in self.inputs)


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int
    prev_hash: str
    """Display hex."""
    merkle_root: str
    """Display hex."""
    time: int
    bits: int
    nonce: int
    hash: str
    """Display hex of the double SHA-256 of the 80 header bytes."""


@dataclass(frozen=True, slots=True)
class RawBlock:
    header: BlockHeader
    txs: tuple[Tx, ...]


@dataclass(frozen=True, slots=True)
class OutputHit:
    """An output whose script is in the caller's set."""

    tx_index: int
    txid: str
    vout: int
    value: int
    script: bytes


@dataclass(frozen=True, slots=True)
class SpendHit:
    """An input spending an outpoint in the caller's set (or a hit output earlier in the block)."""

    tx_index: int
    txid: str
    vin: int
    prev_txid: str
    prev_vout: int


@dataclass(frozen=True, slots=True)
class BlockScan:
    header: BlockHeader
    tx_count: int
    outputs: tuple[OutputHit, ...]
    spends: tuple[SpendHit, ...]


# Plain slotted twins of the hot classes: filled with ordinary attribute stores, then given the
# frozen class (see the module docstring).
class _TxOutTwin:
    __slots__ = TxOut.__slots__


class _TxInTwin:
    __slots__ = TxIn.__slots__


class _TxTwin:
    __slots__ = Tx.__slots__


def sha256d(data: bytes | bytearray | memoryview) -> bytes:
    """Double SHA-256."""
    return _sha256(_sha256(data).digest()).digest()


def outpoint_key(txid: str, vout: int) -> bytes:
    """The 36 wire bytes of an outpoint (txid in internal order, vout little-endian): `scan_block`'s key."""
    return bytes.fromhex(txid)[::-1] + _P32(vout)


# ---------------------------------------------------------------------------------------------
# CompactSize


def write_varint(n: int) -> bytes:
    """Encode `n` as a CompactSize integer."""
    if 0 <= n < 0xFD:
        return bytes((n,))
    if 0xFD <= n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if 0xFFFF < n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    if 0xFFFFFFFF < n <= 0xFFFFFFFFFFFFFFFF:
        return b"\xff" + n.to_bytes(8, "little")
    raise ValueError(f"CompactSize cannot encode {n}")


def _read_long_varint(buf: bytes, off: int) -> tuple[int, int]:
    """The CompactSize at `off` whose first byte is 0xfd or more, checked as Core's reader does."""
    first = buf[off]
    width = 2 if first == 0xFD else 4 if first == 0xFE else 8
    end = off + 1 + width
    if end > len(buf):
        raise BlockDecodeError(f"truncated CompactSize at byte offset {off}")
    value = int.from_bytes(buf[off + 1 : end], "little")
    if value < (0xFD if width == 2 else 0x10000 if width == 4 else 0x100000000):
        raise BlockDecodeError(f"non-canonical CompactSize at byte offset {off}")
    if value > MAX_SIZE:
        raise BlockDecodeError(f"CompactSize {value} at byte offset {off} is over {MAX_SIZE}")
    return value, end


def _read_count(buf: bytes, off: int, min_item: int) -> tuple[int, int]:
    """A long-form count of items of at least `min_item` bytes each, which must fit in what is left."""
    count, end = _read_long_varint(buf, off)
    if count * min_item > len(buf) - end:
        raise BlockDecodeError(f"count {count} at byte offset {off} does not fit in the remaining data")
    return count, end


def read_varint(buf: bytes | bytearray | memoryview, off: int = 0) -> tuple[int, int]:
    """The CompactSize at `off`: `(value, offset after it)`. Raises BlockDecodeError."""
    data = bytes(buf)
    if not 0 <= off < len(data):
        raise BlockDecodeError(f"truncated CompactSize at byte offset {off}")
    if data[off] < 0xFD:
        return data[off], off + 1
    return _read_long_varint(data, off)


# ---------------------------------------------------------------------------------------------
# Transactions


def _truncated(start: int, buf: bytes) -> BlockDecodeError:
    return BlockDecodeError(f"truncated transaction at byte offset {start} (the data ends at byte {len(buf)})")


def _bad_flag(flag: int, off: int) -> BlockDecodeError:
    return BlockDecodeError(f"unknown transaction flag {flag:#04x} at byte offset {off}")


def _superfluous(start: int) -> BlockDecodeError:
    return BlockDecodeError(f"superfluous witness record in the transaction at byte offset {start}")


def _read_txs(
    buf: bytes,
    off: int,
    count: int,
    layout: list[int],
    ins: list[int],
    outs: list[int],
    scripts: list[bytes],
    stacks: list[int] | None,
) -> int:
    """The transaction grammar, the one reading of transactions that every decoder and scan builds on.

    Reads `count` transactions from `off` and checks them (flag, canonical counts that fit, a segwit
    form only with some witness, nothing read past the end); returns where the last one ends. Appends,
    for each transaction, to `layout` six ints (`_LAYOUT`): where it starts, where its input count is
    (after the segwit marker and flag), where its witness data starts (0 when it has none), where it
    ends, its number of inputs and of outputs; to `ins` the offset of each input (its 36-byte outpoint
    starts there); to `outs` the offset of each output (its 8-byte value starts there) and to `scripts`
    its script; and, when `stacks` is a list, for each input of a segwit transaction its number of
    witness items followed by the start and the end of each item.

    A read past the end surfaces as IndexError or struct.error, raised as a truncation: every slice
    taken here or by a caller from these offsets is followed by a bounded read here (the next length
    or value, or the locktime), so an overlong one is always caught.
    """
    add_in, add_out, add_script, extend = ins.append, outs.append, scripts.append, layout.extend
    start = off
    try:
        for _ in range(count):
            start = off
            body = off + 4
            nin = buf[body]
            if nin == 0:  # the segwit marker
                if buf[body + 1] != 1:
                    raise _bad_flag(buf[body + 1], body + 1)
                body += 2
                nin = buf[body]
            if nin < 0xFD:
                off = body + 1
            else:
                nin, off = _read_count(buf, body, 41)
            for _ in range(nin):
                add_in(off)
                ln = buf[off + 36]
                if ln < 0xFD:
                    off += 41 + ln
                else:
                    ln, s = _read_long_varint(buf, off + 36)
                    off = s + ln + 4
            nout = buf[off]
            if nout < 0xFD:
                off += 1
            else:
                nout, off = _read_count(buf, off, 9)
            for _ in range(nout):
                add_out(off)
                ln = buf[off + 8]
                if ln < 0xFD:
                    s = off + 9
                else:
                    ln, s = _read_long_varint(buf, off + 8)
                off = s + ln
                add_script(buf[s:off])
            witness = 0
            if body != start + 4:
                witness, off = off, _read_witness(buf, start, off, nin, stacks)
            buf[off + 3]  # the locktime is there
            off += 4
            extend((start, body, witness, off, nin, nout))
    except _TRUNCATED:
        raise _truncated(start, buf) from None
    return off


_LAYOUT = 6
"""Ints per transaction in `_read_txs`'s layout."""


def _read_witness(buf: bytes, start: int, off: int, nin: int, stacks: list[int] | None) -> int:
    """`_read_txs`'s reading of the witness stacks of `nin` inputs at `off`: where they end."""
    witness = off
    for _ in range(nin):
        nitems = buf[off]
        if nitems < 0xFD:
            off += 1
        else:
            nitems, off = _read_count(buf, off, 1)
        if stacks is not None:
            stacks.append(nitems)
        for _ in range(nitems):
            ln = buf[off]
            if ln < 0xFD:
                s = off + 1
            else:
                ln, s = _read_long_varint(buf, off)
            off = s + ln
            if stacks is not None:
                stacks.append(s)
                stacks.append(off)
    # each stack takes one byte when empty and at least two otherwise
    if off - witness == nin:
        raise _superfluous(start)
    return off


def _txid(data: bytes | memoryview, start: int, body: int, witness: int, end: int) -> bytes:
    """The txid (internal order) of a transaction `_read_txs` read: its serialization without witness."""
    if witness:
        h = _sha256(data[start : start + 4])
        h.update(data[body:witness])
        h.update(data[end - 4 : end])
        return _sha256(h.digest()).digest()
    return _sha256(_sha256(data[start:end]).digest()).digest()


def _build_txs(
    buf: bytes,
    mv: memoryview,
    layout: list[int],
    ins: list[int],
    outs: list[int],
    scripts: list[bytes],
    stacks: list[int],
) -> tuple[list[Tx], list[bytes]]:
    """The transactions `_read_txs` read, as `Tx` objects (see the module docstring on the twins), and
    their txids in internal order. Inputs and outputs are built in one pass each over the block."""
    inputs = _build_inputs(buf, ins)
    if stacks:
        _add_witness(buf, layout, inputs, stacks)
    in_cls = TxIn
    for txin in inputs:
        txin.__class__ = in_cls
    outputs: list[Any] = []
    add = outputs.append
    out_twin, out_cls, i64 = _TxOutTwin, TxOut, _I64
    obj: Any
    for pos, script in zip(outs, scripts, strict=True):
        obj = out_twin()
        obj.value = i64(buf, pos)[0]
        obj.script = script
        obj.__class__ = out_cls
        add(obj)
    txids = _txids(buf, layout)
    txs: list[Tx] = []
    sha, u32, tx_cls = _sha256, _U32, Tx
    first_in = first_out = 0
    for k, txid in enumerate(txids):
        start, _, witness, end, nin, nout = layout[k * _LAYOUT : k * _LAYOUT + _LAYOUT]
        obj = _TxTwin()
        obj.txid = txid[::-1].hex()
        obj.wtxid = sha(sha(mv[start:end]).digest()).digest()[::-1].hex() if witness else obj.txid
        obj.version = u32(buf, start)[0]
        obj.inputs = tuple(inputs[first_in : first_in + nin])
        obj.outputs = tuple(outputs[first_out : first_out + nout])
        obj.locktime = u32(buf, end - 4)[0]
        obj.__class__ = tx_cls
        txs.append(obj)
        first_in += nin
        first_out += nout
    return txs, txids


def _build_inputs(buf: bytes, ins: list[int]) -> list[Any]:
    """The inputs at these offsets, as twins still to be given their class, with no witness yet."""
    inputs: list[Any] = []
    add = inputs.append
    twin, u32, in_tail = _TxInTwin, _U32, _IN_TAIL
    obj: Any
    for pos in ins:
        vout, ln = in_tail(buf, pos + 32)
        if ln < 0xFD:
            s = pos + 37
        else:
            ln, s = _read_long_varint(buf, pos + 36)
        obj = twin()
        obj.prev_txid = buf[pos : pos + 32]
        obj.prev_vout = vout
        obj.script_sig = buf[s : s + ln]
        obj.sequence = u32(buf, s + ln)[0]
        obj.witness = ()
        add(obj)
    return inputs


def _add_witness(buf: bytes, layout: list[int], inputs: list[Any], stacks: list[int]) -> None:
    """Give the inputs of the transactions with witness data their stacks, from `_read_txs`'s `stacks`."""
    at = first = 0
    for k in range(0, len(layout), _LAYOUT):
        nin = layout[k + 4]
        if layout[k + 2]:
            for txin in inputs[first : first + nin]:
                nitems = stacks[at]
                txin.witness = tuple(buf[stacks[j] : stacks[j + 1]] for j in range(at + 1, at + 1 + 2 * nitems, 2))
                at += 1 + 2 * nitems
        first += nin


def _parse_txs(buf: bytes, mv: memoryview, off: int, count: int) -> tuple[list[Tx], list[bytes], int, bool]:
    """`count` transactions from `off`: the transactions, their txids (internal order), the end offset,
    and whether any of them has witness data."""
    layout: list[int] = []
    ins: list[int] = []
    outs: list[int] = []
    scripts: list[bytes] = []
    stacks: list[int] = []
    end = _read_txs(buf, off, count, layout, ins, outs, scripts, stacks)
    txs, txids = _build_txs(buf, mv, layout, ins, outs, scripts, stacks)
    return txs, txids, end, bool(stacks)


def decode_tx(raw: bytes | bytearray | memoryview) -> Tx:
    """Decode one transaction (legacy or segwit); the whole buffer must be consumed."""
    buf = bytes(raw)
    with memoryview(buf) as mv:
        txs, _, end, _ = _parse_txs(buf, mv, 0, 1)
    if end != len(buf):
        raise BlockDecodeError(f"{len(buf) - end} trailing bytes after the transaction, at byte offset {end}")
    return txs[0]


def serialize_tx(tx: Tx, *, witness: bool = True) -> bytes:
    """The wire form: the segwit form when `witness` is true and some input has a witness stack.

    A transaction with no inputs has no unambiguous wire form (Core cannot read it back either).
    """
    segwit = witness and tx.has_witness
    parts = [_P32(tx.version), b"\x00\x01" if segwit else b"", write_varint(len(tx.inputs))]
    add = parts.append
    for txin in tx.inputs:
        if len(txin.prev_txid) != 32:
            raise ValueError(f"prev_txid must be 32 bytes, not {len(txin.prev_txid)}")
        add(txin.prev_txid)
        add(_P32(txin.prev_vout))
        add(write_varint(len(txin.script_sig)))
        add(txin.script_sig)
        add(_P32(txin.sequence))
    add(write_varint(len(tx.outputs)))
    for txout in tx.outputs:
        add(_P64(txout.value))
        add(write_varint(len(txout.script)))
        add(txout.script)
    if segwit:
        for txin in tx.inputs:
            add(write_varint(len(txin.witness)))
            for item in txin.witness:
                add(write_varint(len(item)))
                add(item)
    add(_P32(tx.locktime))
    return b"".join(parts)


def make_tx(inputs: Sequence[TxIn], outputs: Sequence[TxOut], *, version: int = 2, locktime: int = 0) -> Tx:
    """A `Tx` with its txid and wtxid computed from its serializations."""
    draft = Tx("", "", version, tuple(inputs), tuple(outputs), locktime)
    txid = sha256d(serialize_tx(draft, witness=False))[::-1].hex()
    wtxid = sha256d(serialize_tx(draft))[::-1].hex() if draft.has_witness else txid
    return Tx(txid, wtxid, version, draft.inputs, draft.outputs, locktime)


# ---------------------------------------------------------------------------------------------
# Headers and blocks


def block_hash(header80: bytes | bytearray | memoryview) -> str:
    """The display-hex hash of an 80-byte header."""
    if len(header80) != 80:
        raise BlockDecodeError(f"a block header is 80 bytes, not {len(header80)}")
    return sha256d(header80)[::-1].hex()


def decode_header(raw: bytes | bytearray | memoryview) -> BlockHeader:
    """Decode an 80-byte block header."""
    if len(raw) != 80:
        raise BlockDecodeError(f"a block header is 80 bytes, not {len(raw)}")
    version, prev, root, time, bits, nonce = _HEADER.unpack(raw)
    return BlockHeader(version, prev[::-1].hex(), root[::-1].hex(), time, bits, nonce, sha256d(raw)[::-1].hex())


def serialize_header(header: BlockHeader) -> bytes:
    """The 80 header bytes (the `hash` field is not written: it is derived from them)."""
    return _HEADER.pack(
        header.version,
        bytes.fromhex(header.prev_hash)[::-1],
        bytes.fromhex(header.merkle_root)[::-1],
        header.time,
        header.bits,
        header.nonce,
    )


def serialize_block(header: BlockHeader, txs: Sequence[Tx]) -> bytes:
    """The wire form of a block: header, transaction count, transactions with their witnesses."""
    return b"".join([serialize_header(header), write_varint(len(txs)), *map(serialize_tx, txs)])


def _merkle(hashes: list[bytes]) -> tuple[bytes, bool]:
    """Core's ComputeMerkleRoot: the root, and whether the tree is mutated (a level repeats a pair)."""
    if not hashes:
        return NULL_TXID, False
    sha = _sha256
    mutated = False
    level = hashes
    while len(level) > 1:
        if not mutated:
            mutated = any(map(eq, level[0::2], level[1::2]))
        if len(level) & 1:
            level = [*level, level[-1]]
        pairs = iter(level)
        level = [sha(sha(a + b).digest()).digest() for a, b in zip(pairs, pairs, strict=True)]
    return level[0], mutated


def merkle_root(txids_internal: Sequence[bytes]) -> bytes:
    """The merkle root (internal order) of txids in internal order; 32 zero bytes for none, as in Core."""
    return _merkle(list(txids_internal))[0]


def _block_start(buf: bytes) -> tuple[BlockHeader, int, int]:
    """The header, the transaction count and the offset of the first transaction."""
    if len(buf) < 81:
        raise BlockDecodeError(f"truncated block: {len(buf)} bytes, and the header alone is 80")
    count = buf[80]
    if count < 0xFD:
        off = 81
    else:
        count, off = _read_count(buf, 80, _MIN_TX_SIZE)
    if count == 0:
        raise BlockDecodeError("the block has no transactions (count at byte offset 80)")
    return decode_header(buf[:80]), count, off


def _block_end(buf: bytes, off: int, txids: list[bytes], verify_merkle: bool = True) -> None:
    if off != len(buf):
        extra = len(buf) - off
        raise BlockDecodeError(f"{extra} trailing bytes after the last transaction, at byte offset {off}")
    if not verify_merkle:
        return
    root, mutated = _merkle(txids)
    if root != buf[36:68]:
        raise BlockDecodeError(
            f"merkle root mismatch: the header has {buf[36:68][::-1].hex()}, the transactions give {root[::-1].hex()}"
        )
    if mutated:
        raise BlockDecodeError("mutated merkle tree: the block repeats transactions")


def witness_commitment(txs: Sequence[Tx]) -> bytes:
    """BIP141: the 32 bytes a block's coinbase commits to, for these transactions (with the coinbase's
    witness reserved value, 32 zero bytes when it has none). The coinbase counts as a zero wtxid."""
    stack = txs[0].inputs[0].witness if txs and txs[0].inputs else ()
    reserved = stack[0] if len(stack) == 1 else NULL_TXID
    leaves = [NULL_TXID, *(bytes.fromhex(tx.wtxid)[::-1] for tx in txs[1:])]
    return sha256d(_merkle(leaves)[0] + reserved)


def _check_witness_commitment(txs: list[Tx]) -> None:
    """A block with witness data must commit to it (BIP141, Core's CheckWitnessMalleation)."""
    coinbase = txs[0]
    committed = None
    for txout in coinbase.outputs:  # the last matching output counts
        if len(txout.script) >= 38 and txout.script[:6] == WITNESS_COMMITMENT_HEADER:
            committed = txout.script[6:38]
    if committed is None:
        raise BlockDecodeError("witness data but no witness commitment in the coinbase (byte offset 81)")
    stack = coinbase.inputs[0].witness
    if len(stack) != 1 or len(stack[0]) != 32:
        raise BlockDecodeError("the coinbase witness must be one 32-byte reserved value (byte offset 81)")
    if witness_commitment(txs) != committed:
        raise BlockDecodeError("witness commitment mismatch: the coinbase does not commit to this witness data")


def decode_block(raw: bytes | bytearray | memoryview) -> RawBlock:
    """Decode and check a whole block: lengths, counts, no trailing bytes, the merkle root, and for a
    block with witness data its BIP141 witness commitment."""
    buf = bytes(raw)
    header, count, off = _block_start(buf)
    with memoryview(buf) as mv:
        txs, txids, off, witness_seen = _parse_txs(buf, mv, off, count)
    _block_end(buf, off, txids)
    if witness_seen:
        _check_witness_commitment(txs)
    return RawBlock(header, tuple(txs))


_USE_EXTENSION = _BUILT and os.environ.get("DEPOSITWATCH_PURE_PYTHON", "") in ("", "0")
"""Whether `scan_block` tries the extension: built, and `DEPOSITWATCH_PURE_PYTHON` not set."""


def scan_block(
    raw: bytes | bytearray | memoryview,
    scripts: Container[bytes],
    outpoints: Collection[bytes] = frozenset(),
    *,
    verify_merkle: bool = True,
    more_scripts: Container[bytes] | None = None,
    follow: Container[bytes] | None = None,
) -> BlockScan:
    """Decode + match in one pass: the outputs paying a script in `scripts` (or in `more_scripts`) and
    the inputs spending an outpoint in `outpoints` (keys from `outpoint_key`), or an output of this
    block that was a hit (with `follow`, only a hit paying a script in `follow`).

    The block is checked as by `decode_block`, except for the witness commitment: witness data is
    skipped, never returned, and the txids cover everything that is. `verify_merkle=False` also skips
    the merkle tree, for a caller that trusts where the bytes come from, for instance its own node,
    having checked that `block_hash(raw[:80])` is the hash it asked for.

    The compiled extension reads the block when it is there (see the module docstring); a block it
    does not take, and every block without it, goes through `_scan_block_py`. Both give the same
    `BlockScan`, and the errors are always the pure path's. An exception raised by a container's
    lookup propagates either way.
    """
    buf = bytes(raw)
    if _USE_EXTENSION:
        found = _scan_block_ext(buf, scripts, outpoints, verify_merkle, more_scripts, follow)
        if found is not None:
            return found
    return _scan_block_py(
        buf, scripts, outpoints, verify_merkle=verify_merkle, more_scripts=more_scripts, follow=follow
    )


def _scan_block_ext(
    buf: bytes,
    scripts: Container[bytes],
    outpoints: Collection[bytes],
    verify_merkle: bool,
    more_scripts: Container[bytes] | None,
    follow: Container[bytes] | None,
) -> BlockScan | None:
    """`scan_block` through the extension (whatever `DEPOSITWATCH_PURE_PYTHON` says): the same
    `BlockScan`, or None for a block it does not take, or when it is not built."""
    if not _BUILT:
        return None
    found = _btcscan.scan(buf, scripts, outpoints, more_scripts, follow, verify_merkle)
    if found is None:
        return None
    count, outs, spends = found
    return BlockScan(
        decode_header(buf[:80]),
        count,
        tuple(OutputHit(i, txid[::-1].hex(), vout, value, script) for i, txid, vout, value, script in outs),
        tuple(
            SpendHit(i, txid[::-1].hex(), vin, prev[::-1].hex(), prev_vout) for i, txid, vin, prev, prev_vout in spends
        ),
    )


def _scan_block_py(
    raw: bytes | bytearray | memoryview,
    scripts: Container[bytes],
    outpoints: Collection[bytes] = frozenset(),
    *,
    verify_merkle: bool = True,
    more_scripts: Container[bytes] | None = None,
    follow: Container[bytes] | None = None,
) -> BlockScan:
    """`scan_block` in pure Python: the reference, and the reader of every block the extension gives up on.

    The transactions are read with `_read_txs`, which gives the offsets of the inputs and the output
    scripts; the output scripts are then looked up in one sweep over the block, and the inputs, in
    transaction order, only when there is an outpoint to look for. So a malformed block raises exactly
    what `decode_block` raises, before any lookup.
    """
    buf = bytes(raw)
    header, count, off = _block_start(buf)
    layout: list[int] = []
    ins: list[int] = []
    outs: list[int] = []
    paid: list[bytes] = []
    off = _read_txs(buf, off, count, layout, ins, outs, paid, None)
    txids = _txids(buf, layout)
    out_hits = _output_hits(paid, layout, scripts, more_scripts)
    spend_hits = _spend_hits(buf, ins, layout, outpoints, _fresh_outpoints(paid, txids, out_hits, follow))
    _block_end(buf, off, txids, verify_merkle)
    return BlockScan(
        header,
        count,
        tuple(OutputHit(i, txids[i][::-1].hex(), vout, _I64(buf, outs[k])[0], paid[k]) for k, i, vout in out_hits),
        tuple(
            SpendHit(i, txids[i][::-1].hex(), vin, buf[at : at + 32][::-1].hex(), _U32(buf, at + 32)[0])
            for i, vin, at in spend_hits
        ),
    )


def _txids(buf: bytes, layout: list[int]) -> list[bytes]:
    """The txids (internal order) of the transactions in `_read_txs`'s layout."""
    sha = _sha256
    with memoryview(buf) as mv:
        if not any(layout[2::_LAYOUT]):  # no witness data: each txid covers the whole transaction
            return [
                sha(sha(mv[s:e]).digest()).digest() for s, e in zip(layout[0::_LAYOUT], layout[3::_LAYOUT], strict=True)
            ]
        return [
            _txid(mv, *layout[k : k + 4])
            if layout[k + 2]
            else sha(sha(mv[layout[k] : layout[k + 3]]).digest()).digest()
            for k in range(0, len(layout), _LAYOUT)
        ]


def _marks(counts: list[int]) -> list[int]:
    """How many inputs (or outputs) come before each transaction, from their counts in the layout."""
    return [0, *accumulate(counts)]


def _output_hits(
    paid: list[bytes], layout: list[int], scripts: Container[bytes], more_scripts: Container[bytes] | None
) -> list[tuple[int, int, int]]:
    """The outputs paying a script in `scripts` or `more_scripts`: (output, transaction, vout)."""
    if more_scripts is None:
        found = [k for k, script in enumerate(paid) if script in scripts]
    else:
        found = [k for k, script in enumerate(paid) if script in scripts or script in more_scripts]
    if not found:
        return []
    out_marks = _marks(layout[5::_LAYOUT])
    hits = []
    for k in found:
        i = bisect_right(out_marks, k) - 1
        hits.append((k, i, k - out_marks[i]))
    return hits


def _fresh_outpoints(
    paid: list[bytes], txids: list[bytes], out_hits: list[tuple[int, int, int]], follow: Container[bytes] | None
) -> dict[int, list[bytes]]:
    """The outpoints of the hit outputs to follow (all, or those paying a script in `follow`), by transaction."""
    fresh: dict[int, list[bytes]] = {}
    for k, i, vout in out_hits:
        if follow is None or paid[k] in follow:
            fresh.setdefault(i, []).append(txids[i] + _P32(vout))
    return fresh


def _spend_hits(
    buf: bytes, ins: list[int], layout: list[int], outpoints: Collection[bytes], fresh: dict[int, list[bytes]]
) -> list[tuple[int, int, int]]:
    """The inputs spending an outpoint in `outpoints`, or one in `fresh` of an earlier transaction:
    (transaction, vin, outpoint offset). The caller's collection is asked until this block adds its
    own outpoints; then a set of both is."""
    if not outpoints and not fresh:
        return []
    in_marks = _marks(layout[4::_LAYOUT])
    spent: Collection[bytes] | None = outpoints if outpoints else None
    own: set[bytes] | None = None
    heads = {key[0] for key in outpoints if key}  # their first bytes: a cheap test before the slice
    hits: list[tuple[int, int, int]] = []
    for i in range(min(fresh) if spent is None else 0, len(in_marks) - 1):
        if spent is not None:
            first = in_marks[i]
            for j in range(first, in_marks[i + 1]):
                at = ins[j]
                if buf[at] in heads and buf[at : at + 36] in spent:
                    hits.append((i, j - first, at))
        keys = fresh.get(i)
        if keys:
            if own is None:
                own = set(outpoints)
                spent = own
            own.update(keys)
            heads.update(key[0] for key in keys)
    return hits
