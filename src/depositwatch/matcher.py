"""The matcher: pure classification of transfers against a chain's book. No I/O."""

from __future__ import annotations

from collections.abc import Iterable

from depositwatch.models import Block, BlockRef, Match, MatchKind, Transfer
from depositwatch.registry import ChainBook


def match_transfers(
    chain: str, transfers: Iterable[Transfer], book: ChainBook, time: int, block: BlockRef | None
) -> list[Match]:
    """Classify transfers seen at `time` (the block's time, or now for the mempool).

    - to an active address: `deposit`;
    - to a revoked address, at or after its revocation: `revoked_incoming` (before it: a `deposit`);
    - from a revoked address, at or after its revocation: `revoked_outgoing` (a sweep).
    """
    active, revoked = book.active, book.revoked
    if not active and not revoked:
        return []
    found: list[Match] = []
    for transfer in transfers:
        to = transfer.to_key
        if to is not None:
            revoked_at = revoked.get(to)
            if revoked_at is not None and time >= revoked_at:
                found.append(Match(chain, MatchKind.REVOKED_INCOMING, to, transfer, block, time))
            elif revoked_at is not None or to in active:
                found.append(Match(chain, MatchKind.DEPOSIT, to, transfer, block, time))
        sender = transfer.from_key
        if sender is not None:
            revoked_at = revoked.get(sender)
            if revoked_at is not None and time >= revoked_at:
                found.append(Match(chain, MatchKind.REVOKED_OUTGOING, sender, transfer, block, time))
    return found


def match_block(chain: str, block: Block, book: ChainBook) -> list[Match]:
    """Classify every transfer of a block at the block's time."""
    return match_transfers(chain, block.transfers, book, block.time, block.ref)
