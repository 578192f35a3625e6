"""The matcher: pure classification of transfers against a chain's book. No I/O."""

from __future__ import annotations

from collections.abc import Iterable

from depositwatch.keytable import ACTIVE
from depositwatch.models import Block, BlockRef, Match, MatchKind, Transfer
from depositwatch.registry import ChainBook


def match_transfers(
    chain: str, transfers: Iterable[Transfer], book: ChainBook, time: int, block: BlockRef | None
) -> list[Match]:
    """Classify transfers seen at `time` (the block's time, or now for the mempool).

    - to an active address: `deposit`;
    - to a revoked address, at or after its revocation: `revoked_incoming` (before it: a `deposit`);
    - from a revoked address, at or after its revocation: `revoked_outgoing` (a sweep).

    A transfer of an unlisted token (`asset.listed` False: it came only because it touches a revoked
    address) is never a deposit: only the configured tokens and the native coin are.
    """
    if not len(book):
        return []
    state_of = book.get  # one probe a key: None, ACTIVE, or the revocation time
    found: list[Match] = []
    for transfer in transfers:
        to = transfer.to_key
        if to is not None:
            state = state_of(to)
            if state is None:
                pass
            elif state is ACTIVE:
                if transfer.asset.listed:
                    found.append(Match(chain, MatchKind.DEPOSIT, to, transfer, block, time))
            elif time >= state:
                found.append(Match(chain, MatchKind.REVOKED_INCOMING, to, transfer, block, time))
            elif transfer.asset.listed:
                found.append(Match(chain, MatchKind.DEPOSIT, to, transfer, block, time))
        sender = transfer.from_key
        if sender is not None:
            state = state_of(sender)
            if state is not None and state is not ACTIVE and time >= state:
                found.append(Match(chain, MatchKind.REVOKED_OUTGOING, sender, transfer, block, time))
    return found


def match_block(chain: str, block: Block, book: ChainBook) -> list[Match]:
    """Classify every transfer of a block at the block's time."""
    return match_transfers(chain, block.transfers, book, block.time, block.ref)
