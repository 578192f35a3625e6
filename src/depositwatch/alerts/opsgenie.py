"""Opsgenie Alert API v2: create an alert per alert id (alias), close it on retraction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from depositwatch.alerts.chatsink import JsonChatSink
from depositwatch.alerts.sinks import Burst
from depositwatch.alerts.text import alert_text, burst_text, clip
from depositwatch.config import SinkConfig
from depositwatch.messages import OutboxMessage

API_URL = "https://api.opsgenie.com"  # the EU instance is https://api.eu.opsgenie.com
SOURCE = "depositwatch"
PRIORITIES = {"critical": "P1", "warning": "P3", "info": "P5"}
# Opsgenie's field limits
MESSAGE_LIMIT = 130
ALIAS_LIMIT = 512
DESCRIPTION_LIMIT = 15_000
DETAIL_KEY_LIMIT = 8_000
DETAIL_VALUE_LIMIT = 8_000
TAG_LIMIT = 50


def priority(severity: str) -> str:
    """critical → P1, warning → P3, info → P5 (unknown severities as warnings)."""
    return PRIORITIES.get(severity, "P3")


def opsgenie_alert(message: OutboxMessage, explorers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The create-alert document for one message; the alert id is the alias, so every step of one
    alert (detected, mined, confirmed) lands on one Opsgenie alert."""
    text = alert_text(message, explorers)
    details = {clip(f.label, DETAIL_KEY_LIMIT): clip(f.value, DETAIL_VALUE_LIMIT) for f in text.facts}
    return {
        "message": clip(text.title, MESSAGE_LIMIT),
        "alias": clip(message.alert_id, ALIAS_LIMIT),
        "description": clip(text.plain(), DESCRIPTION_LIMIT),
        "entity": clip(text.address, 512),
        "source": SOURCE,
        "priority": "P5" if text.test else priority(message.severity),
        "tags": [clip(t, TAG_LIMIT) for t in (message.kind, message.event, message.chain, message.severity)],
        "details": details,
    }


def opsgenie_burst(burst: Burst) -> dict[str, Any]:
    """One alert standing for a burst, under a stable alias (a resent summary lands on the same alert)."""
    text = burst_text(burst)
    return {
        "message": clip(text.title, MESSAGE_LIMIT),
        "alias": clip(burst.dedup_key, ALIAS_LIMIT),
        "description": clip(text.plain(), DESCRIPTION_LIMIT),
        "entity": burst.chain,
        "source": SOURCE,
        "priority": priority(burst.severity),
        "tags": [clip(t, TAG_LIMIT) for t in (burst.kind, burst.event, burst.chain, burst.severity, "burst")],
        "details": {
            "count": str(burst.count),
            "kind": burst.kind,
            "event": burst.event,
            "chain": burst.chain,
            "block": burst.height_text,
            "totals": ", ".join(burst.totals()),
            "list_command": burst.list_command,
        },
    }


def close_note(what: str) -> dict[str, str]:
    """The close-alert document: who closed it and why."""
    return {"source": SOURCE, "user": SOURCE, "note": f"RETRACTED: {what} (reorg or dropped transaction)"}


class OpsgenieSink(JsonChatSink):
    """Alert API v2 with a `GenieKey` (the secret)."""

    def __init__(self, config: SinkConfig, api_key: str, explorers: Mapping[str, str] | None = None) -> None:
        super().__init__(config, [api_key], explorers)
        self.url = (config.url or API_URL).rstrip("/")
        self._auth = {"Authorization": f"GenieKey {api_key}"}

    async def send(self, message: OutboxMessage) -> None:
        """Create (or add to) the alert; a retraction closes it. Opsgenie answers 202."""
        if message.event == "retracted":
            await self._close(message.alert_id, alert_text(message, self._explorers).title)
        else:
            await self.post_json(f"{self.url}/v2/alerts", opsgenie_alert(message, self._explorers), self._auth)

    async def send_burst(self, burst: Burst) -> None:
        """One alert for the burst; a burst of retractions closes it."""
        if burst.event == "retracted":
            await self._close(burst.dedup_key, burst_text(burst).title)
        else:
            await self.post_json(f"{self.url}/v2/alerts", opsgenie_burst(burst), self._auth)

    async def _close(self, alias: str, what: str) -> None:
        # An alias holds `:` (burst keys): quoted whole, so it stays one path segment.
        url = f"{self.url}/v2/alerts/{quote(clip(alias, ALIAS_LIMIT), safe='')}/close?identifierType=alias"
        await self.post_json(url, close_note(what), self._auth)
