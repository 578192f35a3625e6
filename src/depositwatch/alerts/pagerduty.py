"""PagerDuty Events API v2: trigger on detected/mined/confirmed, resolve on retracted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from depositwatch.alerts.format import explorer_name, explorer_url, is_test, summary_line
from depositwatch.alerts.sinks import Burst, HttpSink
from depositwatch.config import SinkConfig
from depositwatch.jsonutil import dumps_bytes, loads
from depositwatch.messages import OutboxMessage
from depositwatch.timeutil import iso

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SOURCE = "depositwatch"
SUMMARY_LIMIT = 1024
SEVERITIES = {"critical": "critical", "warning": "warning", "info": "info"}


def pd_severity(severity: str) -> str:
    """depositwatch severity → PagerDuty severity (critical, error, warning, info)."""
    return SEVERITIES.get(severity, "warning")


def _clip(text: str) -> str:
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def pagerduty_event(
    routing_key: str, message: OutboxMessage, body: Mapping[str, Any], explorers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Events v2 document for one message; the alert id is the dedup key, so every step of an
    alert (detected, mined, confirmed) lands on one PagerDuty alert and a retraction resolves it."""
    if message.event == "retracted":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": message.alert_id}
    summary = summary_line(body, message.kind, message.event)
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": message.alert_id,
        "client": SOURCE,
        "payload": {
            "summary": _clip(summary),
            "source": SOURCE,
            "severity": "info" if is_test(body) else pd_severity(message.severity),
            "timestamp": body.get("detected_at") or iso(message.created_at),
            "component": message.chain,
            "group": message.kind,
            "class": message.event,
            "custom_details": dict(body),
        },
    }
    url = explorer_url(body, explorers)
    if url:
        event["links"] = [{"href": url, "text": f"Transaction on {explorer_name(url)}"}]
    return event


def pagerduty_burst(routing_key: str, burst: Burst) -> dict[str, Any]:
    """One event standing for a burst, under a stable dedup key (a resent summary lands on the same
    PagerDuty alert); a burst of retractions resolves it."""
    if burst.event == "retracted":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": burst.dedup_key}
    totals = ", ".join(burst.totals())
    summary = (
        f"[{burst.severity.upper()}] Burst: {burst.count} {burst.kind} alerts ({burst.event}) on {burst.chain}"
        f" {burst.height_text}, total {totals}; list them: {burst.list_command}"
    )
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": burst.dedup_key,
        "client": SOURCE,
        "payload": {
            "summary": _clip(summary),
            "source": SOURCE,
            "severity": pd_severity(burst.severity),
            "timestamp": burst.bodies()[0].get("detected_at") or iso(burst.messages[0].created_at),
            "component": burst.chain,
            "group": burst.kind,
            "class": burst.event,
            "custom_details": {
                "burst": True,
                "count": burst.count,
                "chain": burst.chain,
                "block_height": burst.block_height,
                "kind": burst.kind,
                "event": burst.event,
                "totals": burst.totals(),
                "first_addresses": burst.first_addresses(),
                "outbox_seq_range": [burst.seqs[0], burst.seqs[-1]],
                "list_command": burst.list_command,
            },
        },
    }


class PagerDutySink(HttpSink):
    """Events API v2 with a routing key (the secret)."""

    summarizes_bursts = True

    def __init__(self, config: SinkConfig, routing_key: SecretStr, explorers: Mapping[str, str] | None = None) -> None:
        super().__init__(config)
        self.url = config.url or EVENTS_URL
        self._routing_key = routing_key
        self._explorers = explorers

    async def send(self, message: OutboxMessage) -> None:
        """Enqueue one event; PagerDuty answers 202."""
        event = pagerduty_event(self._routing_key.get_secret_value(), message, loads(message.payload), self._explorers)
        await self._send(event)

    async def send_burst(self, burst: Burst) -> None:
        """Enqueue one event for the whole burst."""
        await self._send(pagerduty_burst(self._routing_key.get_secret_value(), burst))

    async def _send(self, event: Mapping[str, Any]) -> None:
        await self.post(self.url, dumps_bytes(event), {"Content-Type": "application/json"})
