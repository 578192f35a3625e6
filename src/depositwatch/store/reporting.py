"""Store reads for `depositwatch report`: every scope's revoked-address matches, which of them were
recorded as deposits first (retro), the watched Bitcoin outputs with their spends, and the revoked book."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from depositwatch.models import MatchKind, match_id

if TYPE_CHECKING:
    from depositwatch.store.drivers import Driver


@dataclass(frozen=True, slots=True)
class ReportRows:
    """What the incident report is computed from, as plain rows (dicts)."""

    matches: list[dict[str, Any]]
    """`revoked_incoming` and `revoked_outgoing` matches of every scope (live and each replay run) that
    are in a block and not retracted."""
    retro: set[tuple[str, str, int | None]]
    """(chain, lower-case txid, index) of the live `revoked_incoming` transfers the live scope also holds
    as deposits: recorded as deposits first, made alerts by a revocation dated at or before their block."""
    outputs: list[dict[str, Any]]
    """Watched Bitcoin outputs of every scope: chain, txid, vout, spent_txid, spent_height."""
    book: dict[tuple[str, bytes], dict[str, Any]]
    """The revoked addresses: (chain, key) -> address, label, owner, revoked_at."""


_MATCHES = (
    "SELECT scope, chain, kind, asset_symbol, asset_contract, asset_decimals, amount, key, address, label, owner,"
    " txid, idx, block_height, block_time FROM matches"
    " WHERE kind IN ('revoked_incoming', 'revoked_outgoing') AND status IN ('seen', 'confirmed')"
)
_DEPOSITS = "SELECT id FROM matches WHERE scope = 'live' AND kind = 'deposit' AND status IN ('seen', 'confirmed')"
_CHUNK = 500  # ids per `IN (...)` list: well under both databases' parameter limits
_OUTPUTS = "SELECT chain, txid, vout, spent_txid, spent_height FROM watched_outputs"
_BOOK = "SELECT chain, key, address, label, owner, revoked_at FROM addresses WHERE status = 'revoked'"


class Reports:
    """The report's reads (`SqlStore.reports`)."""

    def __init__(self, db: Driver) -> None:
        self.db = db

    async def rows(self, chain: str | None = None) -> ReportRows:
        """Everything the report needs, of one chain or of all."""
        suffix, args = ("", []) if chain is None else (" AND chain = $1", [chain])
        async with self.db.read() as conn:
            matches = [dict(row) for row in await conn.fetch(_MATCHES + suffix, *args)]
            # A retro landing is a live one whose transfer the live scope also holds as a deposit: looked
            # up by the deposit's match id (the primary key), so the cost follows the landings, not the deposits.
            twins = {
                match_id(row["chain"], MatchKind.DEPOSIT, row["txid"], row["idx"]): (
                    row["chain"],
                    str(row["txid"]).lower(),
                    row["idx"],
                )
                for row in matches
                if row["scope"] == "live" and row["kind"] == MatchKind.REVOKED_INCOMING
            }
            ids = list(twins)
            found: list[Any] = []
            for i in range(0, len(ids), _CHUNK):
                batch = ids[i : i + _CHUNK]
                marks = ", ".join(f"${n + 1}" for n in range(len(batch)))
                found += await conn.fetch(f"{_DEPOSITS} AND id IN ({marks})", *batch)
            outputs = await conn.fetch(_OUTPUTS + suffix.replace(" AND", " WHERE"), *args)
            book = await conn.fetch(_BOOK + suffix, *args)
        return ReportRows(
            matches=matches,
            retro={twins[row["id"]] for row in found},
            outputs=[dict(row) for row in outputs],
            book={(row["chain"], bytes(row["key"])): dict(row) for row in book},
        )
