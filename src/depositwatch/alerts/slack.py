"""Slack incoming webhooks: a message a person can act on, and one summary per burst."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from depositwatch.alerts.format import (
    address_text,
    amount_text,
    block_text,
    explorer_name,
    explorer_url,
    is_test,
    title,
)
from depositwatch.alerts.sinks import Burst, HttpSink
from depositwatch.config import SinkConfig
from depositwatch.jsonutil import dumps_bytes, loads
from depositwatch.messages import OutboxMessage

HEADER_LIMIT = 150  # Slack's limit for a header block's text
FIELD_LIMIT = 2000


def escape(text: object) -> str:
    """Slack mrkdwn control characters in data (labels, owners) shown as they are."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _clip(f"*{label}*\n{value}", FIELD_LIMIT)}


def _tx_text(body: Mapping[str, Any], explorers: Mapping[str, str] | None) -> str:
    txid = body.get("txid")
    if not txid:
        return "-"
    index = body.get("index")
    suffix = f" (index {index})" if index is not None else ""
    url = explorer_url(body, explorers)
    if url:
        return f"<{url}|{escape(txid)}>{suffix} on {explorer_name(url)}"
    return f"`{escape(txid)}`{suffix}"


def slack_message(
    message: OutboxMessage, body: Mapping[str, Any], explorers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The incoming-webhook JSON for one message: `text` (notifications, fallback) and `blocks`."""
    head = title(body, message.kind, message.event)
    address = body.get("address") or {}
    fields = [
        _field("Amount", f"{escape(amount_text(body))}" + _contract(body)),
        _field("Chain", escape(body.get("chain", message.chain)) + _chain_id(body)),
        _field("Address", _address_mrkdwn(address)),
        _field("Revoked at", escape(address.get("revoked_at") or body.get("revoked_at") or "-")),
        _field("Transaction", _tx_text(body, explorers)),
        _field("Block", escape(block_text(body, message.event))),
    ]
    if body.get("from") or body.get("to"):
        fields.append(_field("From → To", f"`{escape(body.get('from') or '?')}` → `{escape(body.get('to') or '?')}`"))
    context = (
        f"alert `{escape(message.alert_id)}` rev {message.rev} · idempotency key `{escape(message.idempotency_key)}`"
        f" · {escape(body.get('mode', 'live'))} · detected {escape(body.get('detected_at') or '-')}"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(head, HEADER_LIMIT), "emoji": False}},
    ]
    if is_test(body):
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*This is a test alert* sent by `depositwatch alerts test`."},
            }
        )
    blocks += [
        {"type": "section", "fields": fields[:10]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
    ]
    text = f"{head} on {body.get('chain', message.chain)}: {address_text(body)}"
    return {"text": _clip(text, 3000), "blocks": blocks}


def _contract(body: Mapping[str, Any]) -> str:
    contract = (body.get("asset") or {}).get("contract")
    return f"\ntoken `{escape(contract)}`" if contract else ""


def _chain_id(body: Mapping[str, Any]) -> str:
    return f" (chain id {body['chain_id']})" if body.get("chain_id") is not None else ""


def _address_mrkdwn(address: Mapping[str, Any]) -> str:
    text = f"`{escape(address.get('address') or '?')}`"
    if address.get("label"):
        text += f"\nlabel: {escape(address['label'])}"
    if address.get("owner"):
        text += f"\nowner: {escape(address['owner'])}"
    return text


def slack_burst(burst: Burst) -> dict[str, Any]:
    """One message standing for a whole burst: count, totals, the first addresses, how to list them."""
    severity = burst.severity.upper()
    head = f"[{severity}] Burst: {burst.count} × {burst.kind} {burst.event} on {burst.chain} {burst.height_text}"
    lines = [
        f"*{burst.count}* `{escape(burst.kind)}` alerts ({escape(burst.event)}) in one block, likely dusting: "
        "this one summary stands for all of them.",
        "*Total:* " + escape(", ".join(burst.totals()) or "-"),
    ]
    first = [
        f"• `{escape(a['address'])}`"
        + (f" {escape(a['label'])}" if a.get("label") else "")
        + (f" (owner {escape(a['owner'])})" if a.get("owner") else "")
        + f": {escape(a['amount'])}"
        for a in burst.first_addresses()
    ]
    more = burst.count - len(first)
    listing = "\n".join(first) + (f"\n…and {more} more" if more > 0 else "")
    context = (
        f"list them: `{escape(burst.list_command)}` · outbox seq {burst.seqs[0]}–{burst.seqs[-1]}"
        f" · key `{escape(burst.dedup_key)}`"
    )
    return {
        "text": _clip(f"{head}; total {', '.join(burst.totals())}", 3000),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(head, HEADER_LIMIT), "emoji": False}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip("\n".join(lines), 3000)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip("*First addresses:*\n" + listing, 3000)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


class SlackSink(HttpSink):
    """A Slack incoming webhook (its URL is the secret)."""

    summarizes_bursts = True

    def __init__(self, config: SinkConfig, url: SecretStr, explorers: Mapping[str, str] | None = None) -> None:
        super().__init__(config)
        self._url = url
        self._explorers = explorers

    async def send(self, message: OutboxMessage) -> None:
        """POST the formatted message."""
        await self._send(slack_message(message, loads(message.payload), self._explorers))

    async def send_burst(self, burst: Burst) -> None:
        """POST the burst summary."""
        await self._send(slack_burst(burst))

    async def _send(self, document: Mapping[str, Any]) -> None:
        # An incoming webhook answers 200 "ok"; its refusals (invalid_blocks, no_service, ...) are 4xx.
        await self.post(self._url.get_secret_value(), dumps_bytes(document), {"Content-Type": "application/json"})
