"""A live history recorded the way the daemon records it: the real registry, matcher and store commit,
with blocks at realistic times. For the commands that read what the store holds."""

from __future__ import annotations

from collections.abc import Sequence

from depositwatch.matcher import match_block
from depositwatch.models import AddressEntry, AddressStatus, Asset, Block, Transfer
from depositwatch.registry import AddressRegistry
from depositwatch.store import BlockEffects, ChainPolicy, Cursor, Scope, SqlStore

ETH = Asset("ETH", 18)
T0 = 1_700_000_000  # block times start here (2023-11-14)
SENDER = "0x" + "99" * 20


def key(i: int) -> bytes:
    """The i-th test address's 20 bytes."""
    return (0x3300000000000000000000000000000000000000 + i).to_bytes(20, "big")


def text(i: int) -> str:
    """The i-th test address as the book writes it."""
    return "0x" + key(i).hex()


class Ledger:
    """One EVM chain's live history: an address book, then blocks paying its addresses."""

    def __init__(self, store: SqlStore, chain: str = "eth", confirmations: int = 2) -> None:
        self.store = store
        self.chain = chain
        self.policy = ChainPolicy(chain, confirmations=confirmations, chain_id=1)
        self.cursor = Cursor(f"live:{chain}", chain, 0, "h0")
        self.txs = 0

    async def book(self, active: Sequence[int] = (), revoked: Sequence[tuple[int, int]] = ()) -> None:
        """Import addresses: active ones by index, revoked ones as (index, revoked_at)."""
        entries = [
            AddressEntry(self.chain, text(i), key(i), AddressStatus.ACTIVE, label=f"hot-{i}", owner=f"cust-{i % 2}")
            for i in active
        ]
        entries += [
            AddressEntry(self.chain, text(i), key(i), AddressStatus.REVOKED, f"hot-{i}", f"cust-{i % 2}", at, "breach")
            for i, at in revoked
        ]
        await self.store.import_addresses(list(enumerate(entries, start=2)))

    async def block(
        self,
        payments: Sequence[tuple[int, int]],
        time: int | None = None,
        *,
        sends: Sequence[tuple[int, int]] = (),
        asset: Asset = ETH,
    ) -> Block:
        """Commit the next block, at `time` (default T0 + 600 * height), paying (index, amount) each and
        sending (index, amount) from each of `sends` to SENDER, in `asset` (a token's transfers are logs)."""
        height = self.cursor.height + 1
        transfers = []
        for n, (i, amount) in enumerate([*payments, *sends]):
            self.txs += 1
            log = None if asset.contract is None else n
            if n < len(payments):
                transfers.append(Transfer(asset, amount, f"0x{self.txs:064x}", log, key(i), None, SENDER, text(i)))
            else:
                transfers.append(
                    Transfer(
                        asset, amount, f"0x{self.txs:064x}", log, bytes.fromhex(SENDER[2:]), key(i), text(i), SENDER
                    )
                )
        block = Block(height, f"h{height}", self.cursor.hash, time or T0 + 600 * height, tuple(transfers))
        registry = await AddressRegistry.load(self.store, [self.chain])
        matches = match_block(self.chain, block, registry.book(self.chain))
        self.cursor = await self.store.commit_blocks(
            Scope.live(), self.cursor, self.policy, [BlockEffects(block, matches)], tip_height=height
        )
        return block
