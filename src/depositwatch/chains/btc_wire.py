"""Bitcoin's wire format, read side: the types, the one grammar of blocks and transactions, and the
identities computed from it (header hash, txids, merkle root, witness commitment).

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
  merkle root covers no witness data, so `btc_decode.decode_block` also checks the BIP141 witness commitment of
  a block that has any. A changed byte anywhere but in the header's own fields is therefore caught.
- A header's `version` is a signed 32-bit integer (Core's `nVersion`); a transaction's `version` is
  read unsigned, as Core prints it and BIP68 reads it. Output values are signed 64-bit.

The transaction grammar is written once, in `_read_txs`: it reads and checks the transactions of a
block (or the one of `btc_decode.decode_tx`) and records where each input and output is, and each output's
script; `_block_start` and `_block_end` read and check what is around them. The modules beside this
one sit on it and never read the wire themselves:

- `btc_decode`: `decode_block` and `decode_tx` build the whole object tree;
- `btc_scan`: `scan_block` checks exactly as much but only looks each output script and each spent
  outpoint up in the caller's sets and builds objects for the hits: that is the hot path of a
  watcher (with an optional compiled fast path that reads the block the same way);
- `btc_serialize`: the writer side (`serialize_tx`, `make_tx`, `serialize_header`,
  `serialize_block`, `write_varint`), for the tests' node and the benchmarks.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from operator import eq

__all__ = [
    "COINBASE_VOUT",
    "MAX_SIZE",
    "NULL_TXID",
    "WITNESS_COMMITMENT_HEADER",
    "BlockDecodeError",
    "BlockHeader",
    "RawBlock",
    "Tx",
    "TxIn",
    "TxOut",
    "block_hash",
    "decode_header",
    "merkle_root",
    "read_varint",
    "sha256d",
    "witness_commitment",
]

MAX_SIZE = 0x02000000
"""The largest CompactSize value Bitcoin Core reads."""

NULL_TXID = bytes(32)
COINBASE_VOUT = 0xFFFFFFFF
WITNESS_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")
"""OP_RETURN, push 36, then the BIP141 tag; the 32 committed bytes follow."""

_MIN_TX_SIZE = 51  # version, 1 input with an empty script, 0 outputs, locktime
_sha256 = hashlib.sha256
# fixed-width fields, for the readers on top of the grammar and the writer
_U32 = struct.Struct("<I").unpack_from
_I64 = struct.Struct("<q").unpack_from
_HEADER = struct.Struct("<i32s32sIII")
_P32 = struct.Struct("<I").pack
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


def sha256d(data: bytes | bytearray | memoryview) -> bytes:
    """Double SHA-256."""
    return _sha256(_sha256(data).digest()).digest()


# ---------------------------------------------------------------------------------------------
# CompactSize


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
