"""The alert as a domain record: the payload schema (stable field names, documented in the README) and
the outbox records. The store writes them in the block's commit and the dispatcher reads and sends them;
both depend on this module, neither on the other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from depositwatch.models import AlertEvent, Asset
from depositwatch.timeutil import iso

FORMAT_VERSION = 1


def row_flag(row: Mapping[str, Any], name: str, *, default: bool) -> bool:
    """A 0/1 column of a `matches` row (SQLite rows, asyncpg records and dicts alike), `default` when absent."""
    # `in row` would search a sqlite3.Row's values, not its column names
    return bool(row[name]) if name in row.keys() else default  # noqa: SIM118


def build_payload(
    row: Mapping[str, Any],
    *,
    alert_id: str,
    rev: int,
    event: AlertEvent,
    severity: str,
    chain_id: int | None,
    confirmations: int,
    mode: str,
    detected_at: int,
) -> dict[str, Any]:
    """The JSON body of one message about a match (`row` is a `matches` row)."""
    asset = Asset(row["asset_symbol"], row["asset_decimals"], row["asset_contract"])
    amount = int(row["amount"])
    in_block = row["block_height"] is not None and event is not AlertEvent.RETRACTED
    kind = "retracted" if event is AlertEvent.RETRACTED else row["kind"]
    return {
        "version": FORMAT_VERSION,
        "id": alert_id,
        "idempotency_key": f"{alert_id}:{rev}",
        "event": str(event),
        "kind": kind,
        "match_kind": row["kind"],
        "severity": severity,
        "chain": row["chain"],
        "chain_id": chain_id,
        "asset": {"symbol": asset.symbol, "contract": asset.contract, "decimals": asset.decimals},
        # False: a token outside the chain's configured list, named by what its contract says
        "token_listed": row_flag(row, "asset_listed", default=True),
        # True: a zero or dust transfer to or from a revoked address (address poisoning)
        "poisoning": row_flag(row, "poisoning", default=False),
        "amount": str(amount),
        "amount_decimal": asset.to_decimal(amount),
        "from": row["from_address"],
        "to": row["to_address"],
        "address": {
            "address": row["address"],
            "label": row["label"],
            "owner": row["owner"],
            "revoked_at": iso(row["revoked_at"]),
        },
        "txid": row["txid"],
        "index": row["idx"],
        "block": (
            {"height": row["block_height"], "hash": row["block_hash"], "time": iso(row["block_time"])}
            if row["block_height"] is not None
            else None
        ),
        "mempool": not in_block and event is not AlertEvent.RETRACTED,
        "confirmations": confirmations,
        "revoked_at": iso(row["revoked_at"]),
        "detected_at": iso(detected_at),
        "mode": mode,
        "test": False,
        "tree": _tree(row),
    }


def _field(row: Mapping[str, Any], name: str) -> Any:
    try:
        return row[name]
    except (KeyError, IndexError):  # a row without the column (a store before key trees, a test row)
        return None


def _tree(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The key tree and index a match hit, or None for a plain address."""
    tree_id = _field(row, "tree_id")
    if tree_id is None:
        return None
    return {"id": tree_id, "descriptor": _field(row, "tree_descriptor"), "index": _field(row, "tree_index")}


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One message of the outbox, as the dispatcher and the CLI see it."""

    seq: int
    alert_id: str
    rev: int
    event: str
    kind: str
    severity: str
    chain: str
    order_key: str
    block_height: int | None
    status: str
    payload: str
    created_at: int

    @property
    def idempotency_key(self) -> str:
        """The key a receiver deduplicates on: the same message always carries the same key."""
        return f"{self.alert_id}:{self.rev}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message's delivery state for one sink."""

    outbox_seq: int
    sink: str
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    delivered_at: int | None
