"""The token metadata cache (`chains.base.TokenMetadataCache`): what unlisted token contracts said."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from depositwatch.models import TokenInfo
from depositwatch.timeutil import now

if TYPE_CHECKING:
    from depositwatch.store.drivers import Driver

_IN_CHUNK = 500


class TokenCache:
    """Token metadata per chain and contract (`SqlStore.tokens`)."""

    def __init__(self, db: Driver) -> None:
        self.db = db

    async def lookup(self, chain: str, contracts: Collection[str]) -> dict[str, TokenInfo]:
        """The cached entries among `contracts` (each in its chain's text form)."""
        ordered = list(contracts)
        found: dict[str, TokenInfo] = {}
        async with self.db.read() as conn:
            for i in range(0, len(ordered), _IN_CHUNK):
                batch = ordered[i : i + _IN_CHUNK]
                marks = ", ".join(f"${j + 2}" for j in range(len(batch)))
                rows = await conn.fetch(
                    "SELECT contract, symbol, decimals, known FROM token_metadata"
                    f" WHERE chain = $1 AND contract IN ({marks})",
                    chain,
                    *batch,
                )
                for row in rows:
                    found[row["contract"]] = TokenInfo(
                        row["contract"], row["symbol"], int(row["decimals"]), bool(row["known"])
                    )
        return found

    async def save(self, chain: str, infos: Sequence[TokenInfo]) -> None:
        """Keep these entries; an entry already there stays (the first answer is the cached one)."""
        if not infos:
            return
        stamp = now()
        async with self.db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO token_metadata (chain, contract, symbol, decimals, known, fetched_at)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (chain, contract) DO NOTHING",
                [(chain, i.contract, i.symbol, i.decimals, int(i.known), stamp) for i in infos],
            )
