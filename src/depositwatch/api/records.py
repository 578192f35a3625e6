"""The JSON records the API answers with (their schemas are in openapi.json)."""

from __future__ import annotations

from typing import Any

from depositwatch.jsonutil import loads
from depositwatch.messages import Delivery, OutboxMessage
from depositwatch.models import AddressEntry, TreeEntry
from depositwatch.store.audit import AuditRecord
from depositwatch.timeutil import iso


def lifecycle_record(entry: AddressEntry | TreeEntry) -> dict[str, Any]:
    """What an address and a key tree of the book both carry: status, who owns it, when and why revoked."""
    return {
        "status": str(entry.status),
        "label": entry.label,
        "owner": entry.owner,
        "revoked_at": iso(entry.revoked_at),
        "reason": entry.reason,
        "created_at": iso(entry.created_at),
    }


def address_record(entry: AddressEntry) -> dict[str, Any]:
    """One book entry."""
    return {"chain": entry.chain, "address": entry.address, "type": entry.type, **lifecycle_record(entry)}


def audit_record(record: AuditRecord) -> dict[str, Any]:
    """One audit row."""
    return {
        "id": record.id,
        "at": iso(record.at),
        "actor": record.actor,
        "action": record.action,
        "chain": record.chain,
        "address": record.address,
        "owner": record.owner,
        "reason": record.reason,
        "detail": record.detail,
    }


def alert_record(message: OutboxMessage, deliveries: list[Delivery] | None = None) -> dict[str, Any]:
    """One outbox message, with its deliveries per sink when given."""
    record: dict[str, Any] = {
        "seq": message.seq,
        "alert_id": message.alert_id,
        "rev": message.rev,
        "idempotency_key": message.idempotency_key,
        "event": message.event,
        "kind": message.kind,
        "severity": message.severity,
        "chain": message.chain,
        "block_height": message.block_height,
        "status": message.status,
        "created_at": iso(message.created_at),
        "payload": loads(message.payload),
    }
    if deliveries is not None:
        record["deliveries"] = [
            {
                "sink": d.sink,
                "status": d.status,
                "attempts": d.attempts,
                "next_attempt_at": iso(d.next_attempt_at) if d.status == "pending" else None,
                "last_error": d.last_error,
                "delivered_at": iso(d.delivered_at),
            }
            for d in deliveries
        ]
    return record
