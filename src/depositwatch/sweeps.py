"""Bitcoin sweeps: remember outputs that paid revoked scripts; an input spending one is a sweep.

`sweeps` finds them among spends and builds their transfers, for blocks (`OutputTracker`, the
follower's hook) and for the mempool (`depositwatch.mempool`) alike."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from depositwatch.addresses import bitcoin_script_to_address
from depositwatch.matcher import match_transfers
from depositwatch.models import Asset, Block, Match, Spend, Transfer, WatchedOutput
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, Scope, SqlStore

ADDRESS_CACHE = 4096  # revoked scripts whose addresses are kept


@functools.lru_cache(maxsize=ADDRESS_CACHE)
def _address(script: bytes, network: str) -> str | None:
    """The script's address, kept: a revoked script is swept again and again, and encoding its address
    (bech32 or base58, in Python) at every sweep cost about a millisecond a block of ten sweeps."""
    return bitcoin_script_to_address(script, network)


def sweep_transfer(asset: Asset, network: str, paid: WatchedOutput, txid: str, vin: int) -> Transfer:
    """Input `vin` of transaction `txid` spends `paid`, an output that paid a revoked script: the sweep's
    transfer (its amount is the output's, from the revoked script's address)."""
    return Transfer(
        asset,
        paid.amount,
        txid,
        vin,
        to_key=None,
        from_key=paid.script,
        from_address=_address(paid.script, network),
    )


def sweeps(
    asset: Asset, network: str, spends: Iterable[Spend], outputs: Mapping[tuple[str, int], WatchedOutput]
) -> list[tuple[WatchedOutput, Transfer]]:
    """The spends of `outputs` among `spends`: each with the output it spends and its sweep transfer."""
    found = []
    for spend in spends:
        paid = outputs.get((spend.prev_txid, spend.prev_vout))
        if paid is not None:
            found.append((paid, sweep_transfer(asset, network, paid, spend.txid, spend.index)))
    return found


class OutputTracker:
    """The Follower's Bitcoin hook. Its outputs live in the store too, so a restart or rewind reloads them."""

    def __init__(self, chain: str, symbol: str, network: str) -> None:
        self.chain = chain
        self.network = network
        self.asset = Asset(symbol, 8)
        self.outputs: dict[tuple[str, int], WatchedOutput] = {}

    async def load(self, store: SqlStore, scope: Scope) -> None:
        """Reload the unspent watched outputs (at start and after a rewind)."""
        self.outputs = {(o.txid, o.vout): o for o in await store.watched_outputs(self.chain, scope)}

    def effects(self, block: Block, matches: list[Match], registry: AddressRegistry) -> BlockEffects:
        """New outputs to revoked scripts are kept; spends of kept outputs become `revoked_outgoing` matches."""
        revoked = registry.book(self.chain).revoked
        new_outputs = []
        if revoked:
            for transfer in block.transfers:
                key = transfer.to_key
                if key is not None and key in revoked and transfer.index is not None:
                    out = WatchedOutput(transfer.txid, transfer.index, key, transfer.amount, block.height)
                    self.outputs[(out.txid, out.vout)] = out
                    new_outputs.append(out)
        found = sweeps(self.asset, self.network, block.spends, self.outputs) if self.outputs else []
        spent: list[tuple[str, int, str]] = []
        swept: list[Transfer] = []
        for paid, transfer in found:
            if self.outputs.pop((paid.txid, paid.vout), None) is None:
                continue  # spent twice in one block (a hostile node's): counted once
            spent.append((paid.txid, paid.vout, transfer.txid))
            swept.append(transfer)
        if swept:
            matches = matches + match_transfers(self.chain, swept, registry.book(self.chain), block.time, block.ref)
        return BlockEffects(block, matches, new_outputs, spent)
