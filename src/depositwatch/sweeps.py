"""Bitcoin sweeps: remember outputs that paid revoked scripts; an input spending one is a sweep."""

from __future__ import annotations

from depositwatch.addresses import bitcoin_script_to_address
from depositwatch.matcher import match_transfers
from depositwatch.models import Asset, Block, Match, Transfer, WatchedOutput
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, Scope, SqlStore


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
        sweeps: list[Transfer] = []
        spent: list[tuple[str, int, str]] = []
        if self.outputs:
            for spend in block.spends:
                paid = self.outputs.pop((spend.prev_txid, spend.prev_vout), None)
                if paid is None:
                    continue
                spent.append((paid.txid, paid.vout, spend.txid))
                sweeps.append(
                    Transfer(
                        self.asset,
                        paid.amount,
                        spend.txid,
                        spend.index,
                        to_key=None,
                        from_key=paid.script,
                        from_address=bitcoin_script_to_address(paid.script, self.network),
                    )
                )
        if sweeps:
            matches = matches + match_transfers(self.chain, sweeps, registry.book(self.chain), block.time, block.ref)
        return BlockEffects(block, matches, new_outputs, spent)
