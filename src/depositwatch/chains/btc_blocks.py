"""A checked raw Bitcoin block as a `Block`: the watched path (the scan finds the outputs paying watched
scripts and the spends of tracked outputs) or, with no watched set, the full path (every output and input).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from depositwatch.chains.btc_decode import decode_block
from depositwatch.chains.btc_scan import outpoint_key, scan_block
from depositwatch.chains.btc_wire import Tx
from depositwatch.models import Asset, Block, Spend, Transfer


def full_block(height: int, hash_: str, raw: bytes, payments: Callable[[Tx], list[Transfer]]) -> Block:
    """Every output a `Transfer` with its address, every input a `Spend` (no watched set)."""
    block = decode_block(raw)
    transfers: list[Transfer] = []
    spends: list[Spend] = []
    add_transfers, add_spend = transfers.extend, spends.append
    for position, tx in enumerate(block.txs):
        txid = tx.txid
        add_transfers(payments(tx))
        if position:  # the first transaction is the coinbase: its input spends nothing
            for vin, txin in enumerate(tx.inputs):
                add_spend(Spend(txid, vin, txin.prev_txid[::-1].hex(), txin.prev_vout))
    header = block.header
    return Block(height, hash_, header.prev_hash, header.time, tuple(transfers), tuple(spends), len(block.txs))


def watched_block(
    height: int,
    hash_: str,
    raw: bytes,
    active: Collection[bytes],
    outpoints: set[bytes],
    revoked: Collection[bytes],
    asset: Asset,
    address: Callable[[bytes], str | None],
) -> Block:
    """The outputs paying watched scripts and the spends of `outpoints`, by the scan (`btc_scan`)."""
    # The active set and the revoked dict are looked up as they are (no merged set to build), and
    # only the outputs paying revoked scripts are followed to their spends: the tracker's sweeps.
    if revoked:
        found = scan_block(raw, active, outpoints, more_scripts=revoked, follow=revoked)
    else:
        found = scan_block(raw, active, outpoints, follow=revoked)
    transfers = []
    for hit in found.outputs:
        if hit.value <= 0:
            continue
        script = hit.script
        transfers.append(Transfer(asset, hit.value, hit.txid, hit.vout, script, to_address=address(script)))
        if script in revoked:  # a sweep of it later in this fetch must be seen
            outpoints.add(outpoint_key(hit.txid, hit.vout))
    spends = tuple(Spend(s.txid, s.vin, s.prev_txid, s.prev_vout) for s in found.spends)
    header = found.header
    return Block(height, hash_, header.prev_hash, header.time, tuple(transfers), spends, found.tx_count)
