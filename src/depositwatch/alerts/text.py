"""What a person reads, for the channels without a format of their own (Opsgenie, Teams, Discord,
Telegram, email): a title and labelled facts for one alert, a title and lines for a burst.

Each channel renders these in its own markup; the wording lives here once, so every channel shows
the same amount, asset, address with label and owner, explorer link, confirmations and kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from depositwatch.alerts.format import (
    DESCRIPTIONS,
    address_text,
    amount_text,
    block_text,
    explorer_name,
    explorer_url,
    is_test,
    title,
)
from depositwatch.alerts.sinks import Burst
from depositwatch.jsonutil import loads
from depositwatch.messages import OutboxMessage

FACT_LIMIT = 1000  # a label or owner is data from a CSV: bounded before any channel sees it


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


@dataclass(frozen=True, slots=True)
class Fact:
    """One labelled value of an alert (`Amount: 5.25 USDT`)."""

    label: str
    value: str


@dataclass(frozen=True, slots=True)
class AlertText:
    """One alert as a person reads it."""

    title: str
    severity: str
    kind: str
    event: str
    chain: str
    facts: tuple[Fact, ...]
    explorer: str | None  # the transaction on a block explorer, when one is known
    alert_id: str
    idempotency_key: str
    address: str
    detected_at: str | None
    test: bool

    @property
    def retracted(self) -> bool:
        """The alert was withdrawn (reorg or dropped transaction)."""
        return self.event == "retracted"

    def plain(self) -> str:
        """Title, then one `Label: value` line per fact."""
        lines = [self.title, ""]
        if self.test:
            lines += ["This is a test alert sent by `depositwatch alerts test`; no funds moved.", ""]
        lines += [f"{fact.label}: {fact.value}" for fact in self.facts]
        return "\n".join(lines)

    def fact(self, label: str) -> str | None:
        """The value of the fact called `label`, if there is one."""
        return next((f.value for f in self.facts if f.label == label), None)


def alert_text(message: OutboxMessage, explorers: Mapping[str, str] | None = None) -> AlertText:
    """The title and facts of one outbox message."""
    body: Mapping[str, Any] = loads(message.payload)
    return alert_text_of(message, body, explorers)


def alert_text_of(
    message: OutboxMessage, body: Mapping[str, Any], explorers: Mapping[str, str] | None = None
) -> AlertText:
    """The title and facts of a message whose body is already parsed."""
    address = body.get("address") or {}
    asset = body.get("asset") or {}
    kind = message.kind
    url = explorer_url(body, explorers)
    confirmations = body.get("confirmations")
    facts = [
        Fact("Amount", amount_text(body)),
        Fact("Kind", f"{kind}: {DESCRIPTIONS.get(kind, kind.replace('_', ' '))}"),
        Fact("Event", message.event),
        Fact("Chain", str(body.get("chain", message.chain)) + _chain_id(body)),
        Fact("Address", address_text(body)),
        Fact("Label", str(address.get("label") or "-")),
        Fact("Owner", str(address.get("owner") or "-")),
    ]
    if asset.get("contract"):
        facts.append(Fact("Token contract", str(asset["contract"])))
    facts += [
        Fact("Transaction", _tx(body)),
        Fact("Explorer", f"{url} ({explorer_name(url)})" if url else "-"),
        Fact("Block", block_text(body, message.event)),
        Fact("Confirmations", str(confirmations if confirmations is not None else "-")),
    ]
    revoked_at = address.get("revoked_at") or body.get("revoked_at")
    if revoked_at:
        facts.append(Fact("Revoked at", str(revoked_at)))
    if body.get("from") or body.get("to"):
        facts.append(Fact("From → To", f"{body.get('from') or '?'} → {body.get('to') or '?'}"))
    facts += [
        Fact("Severity", message.severity),
        Fact("Mode", str(body.get("mode", "live"))),
        Fact("Detected at", str(body.get("detected_at") or "-")),
        Fact("Alert", f"{message.alert_id} rev {message.rev} (idempotency key {message.idempotency_key})"),
    ]
    return AlertText(
        title=title(body, kind, message.event),
        severity=message.severity,
        kind=kind,
        event=message.event,
        chain=message.chain,
        facts=tuple(Fact(f.label, clip(f.value, FACT_LIMIT)) for f in facts),
        explorer=url,
        alert_id=message.alert_id,
        idempotency_key=message.idempotency_key,
        address=clip(str(address.get("address") or "?"), FACT_LIMIT),
        detected_at=body.get("detected_at"),
        test=is_test(body),
    )


def _chain_id(body: Mapping[str, Any]) -> str:
    return f" (chain id {body['chain_id']})" if body.get("chain_id") is not None else ""


def _tx(body: Mapping[str, Any]) -> str:
    txid = body.get("txid")
    if not txid:
        return "-"
    index = body.get("index")
    return f"{txid} (index {index})" if index is not None else str(txid)


@dataclass(frozen=True, slots=True)
class BurstText:
    """A burst summary as a person reads it: a title, lines of what happened, the first addresses."""

    title: str
    lines: tuple[str, ...]
    addresses: tuple[str, ...]
    more: int  # addresses not listed
    list_command: str
    key: str

    def plain(self) -> str:
        """The whole summary as plain text."""
        shown = [f"- {a}" for a in self.addresses]
        if self.more > 0:
            shown.append(f"...and {self.more} more")
        return "\n".join([self.title, "", *self.lines, "", "First addresses:", *shown])


def burst_text(burst: Burst) -> BurstText:
    """The summary of a burst: count, kind, event, chain and block, totals per asset, the first addresses."""
    retracted = burst.event == "retracted"
    what = DESCRIPTIONS.get(burst.kind, burst.kind.replace("_", " "))
    head = (
        f"[{burst.severity.upper()}] Burst: {burst.count} × {burst.kind} {burst.event} on {burst.chain} "
        f"{burst.height_text}"
    )
    lines = [
        f"{burst.count} {burst.kind} alerts ({burst.event}) in one block, likely dusting: this one summary "
        "stands for all of them.",
        f"Kind: {burst.kind}: {what}",
        f"Total: {', '.join(burst.totals()) or '-'}",
    ]
    if retracted:
        lines.insert(0, "RETRACTED (reorg or dropped transactions): these alerts no longer hold.")
    lines += [
        f"List them: {burst.list_command}",
        f"Outbox seq {burst.seqs[0]}–{burst.seqs[-1]}, key {burst.dedup_key}",
    ]
    shown = []
    for entry in burst.first_addresses():
        text = str(entry["address"])
        if entry.get("label"):
            text += f' "{entry["label"]}"'
        if entry.get("owner"):
            text += f" (owner {entry['owner']})"
        shown.append(clip(f"{text}: {entry['amount']}", FACT_LIMIT))
    return BurstText(
        title=head,
        lines=tuple(lines),
        addresses=tuple(shown),
        more=burst.count - len(shown),
        list_command=burst.list_command,
        key=burst.dedup_key,
    )
