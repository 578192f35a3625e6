"""Bitcoin blocks scanned for the caller's scripts and outpoints (`scan_block`): the watcher's hot
path, over `btc_wire`'s grammar. The block is read and checked by the grammar just as `btc_decode`
reads it, but only each output script and each spent outpoint is looked up in the caller's sets, and
objects are built for the hits only.

`scan_block` has an optional compiled fast path, `depositwatch.chains._btcscan` (C, SHA-256 from
OpenSSL's libcrypto), built by `pip install` where a compiler and libcrypto's headers are found. It
reads the block exactly as the Python does and returns the same facts, but it never reports an error
of its own: on anything irregular it gives up and the pure-Python scan (`_scan_block_py`, the
reference) reads the block again and raises the exact error. Setting the environment variable
`DEPOSITWATCH_PURE_PYTHON=1` (read at import) turns the extension off.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Collection, Container
from dataclasses import dataclass
from itertools import accumulate

from depositwatch.chains.btc_wire import (
    _I64,
    _LAYOUT,
    _P32,
    _U32,
    BlockHeader,
    _block_end,
    _block_start,
    _read_txs,
    _txids,
    decode_header,
)

try:
    from depositwatch.chains import _btcscan
except ImportError:  # not built (no compiler or no libcrypto headers): the pure-Python scan does it all
    _btcscan = None  # type: ignore[assignment]
_BUILT: bool = _btcscan is not None
"""Whether the compiled fast path of `scan_block` was built and imported."""

__all__ = ["BlockScan", "OutputHit", "SpendHit", "outpoint_key", "scan_block"]


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


def outpoint_key(txid: str, vout: int) -> bytes:
    """The 36 wire bytes of an outpoint (txid in internal order, vout little-endian): `scan_block`'s key."""
    return bytes.fromhex(txid)[::-1] + _P32(vout)


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

    The block is checked as by `btc_decode.decode_block`, except for the witness commitment: witness
    data is skipped, never returned, and the txids cover everything that is. `verify_merkle=False` also
    skips the merkle tree, for a caller that trusts where the bytes come from, for instance its own
    node, having checked that `block_hash(raw[:80])` is the hash it asked for.

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
    what `btc_decode.decode_block` raises, before any lookup.
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
    spent: Collection[bytes] | None = outpoints or None
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
