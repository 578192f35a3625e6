"""Bitcoin blocks and transactions decoded into the whole object tree (`decode_block`, `decode_tx`),
over `btc_wire`'s grammar: the block is read and checked there, and built here from the offsets the
grammar recorded; a block with witness data must also commit to it (BIP141).

Frozen dataclasses are slow to construct (every field goes through `object.__setattr__`), and a
block has thousands of inputs and outputs, so the decoder fills a plain slotted twin of each class
and then sets its `__class__` to the frozen one: same layout, same result, about four times
cheaper. `tests/chains/test_btc_wire.py` checks the objects are exactly what the constructors give.
"""

from __future__ import annotations

import struct
from typing import Any

from depositwatch.chains.btc_wire import (
    _I64,
    _LAYOUT,
    _U32,
    WITNESS_COMMITMENT_HEADER,
    BlockDecodeError,
    RawBlock,
    Tx,
    TxIn,
    TxOut,
    _block_end,
    _block_start,
    _read_long_varint,
    _read_txs,
    _sha256,
    _txids,
    witness_commitment,
)

__all__ = ["decode_block", "decode_tx"]

_IN_TAIL = struct.Struct("<IB").unpack_from  # prev_vout and the first byte of the script length


# Plain slotted twins of the hot classes: filled with ordinary attribute stores, then given the
# frozen class (see the module docstring).
class _TxOutTwin:
    __slots__ = TxOut.__slots__


class _TxInTwin:
    __slots__ = TxIn.__slots__


class _TxTwin:
    __slots__ = Tx.__slots__


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
