"""Bitcoin's wire format, write side: transactions, headers and blocks serialized (and `make_tx`,
which computes a new transaction's ids), the inverse of `btc_wire`'s grammar: whatever
`btc_decode` reads, `serialize_*` writes back byte for byte. Used by the tests' node and the
benchmarks; the decoder and the scan never write.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from depositwatch.chains.btc_wire import _HEADER, _P32, BlockHeader, Tx, TxIn, TxOut, sha256d

__all__ = ["make_tx", "serialize_block", "serialize_header", "serialize_tx", "write_varint"]

_P64 = struct.Struct("<q").pack


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
