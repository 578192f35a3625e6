"""The alert message body: stable field names, documented in the README."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from depositwatch.models import AlertEvent, Asset
from depositwatch.timeutil import iso

FORMAT_VERSION = 1


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
    }
