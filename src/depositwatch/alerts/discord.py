"""Discord webhooks: one embed per alert, one per burst; 429 answers say when to come back."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from depositwatch.alerts.chatsink import JsonChatSink
from depositwatch.alerts.redact import scrubbed, secret_parts
from depositwatch.alerts.sinks import Burst, http_failure
from depositwatch.alerts.text import AlertText, alert_text, burst_text, clip
from depositwatch.config import SinkConfig
from depositwatch.jsonutil import loads
from depositwatch.messages import OutboxMessage

# Discord's embed limits
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FIELDS_MAX = 25
CONTENT_LIMIT = 2000
RETRY_AFTER_MAX = 3600.0  # a rate limit asking for longer than an hour is not believed
COLORS = {"critical": 0xD92D20, "warning": 0xF79009, "info": 0x2E90FA}
RETRACTED_COLOR = 0x12B76A
USERNAME = "depositwatch"


def escape(text: str) -> str:
    """Discord markdown and mentions in data (labels, owners) shown as they are."""
    for char in "\\*_~`|>[]()":
        text = text.replace(char, "\\" + char)
    return text.replace("@", "@\u200b")


def discord_embed(text: AlertText) -> dict[str, Any]:
    """The webhook document for one alert: content for notifications, an embed with the facts."""
    fields = [
        {"name": clip(f.label, FIELD_NAME_LIMIT), "value": clip(escape(f.value), FIELD_VALUE_LIMIT), "inline": False}
        for f in text.facts
        if f.label != "Explorer"
    ][:FIELDS_MAX]
    embed: dict[str, Any] = {
        "title": clip(text.title, TITLE_LIMIT),
        "color": RETRACTED_COLOR if text.retracted else COLORS.get(text.severity, COLORS["warning"]),
        "fields": fields,
        "footer": {"text": clip(f"alert {text.alert_id} · key {text.idempotency_key}", 2048)},
    }
    if text.explorer:
        embed["url"] = text.explorer
        embed["description"] = f"[View the transaction]({text.explorer})"
    if text.test:
        embed["description"] = "This is a test alert; no funds moved."
    if text.detected_at:
        embed["timestamp"] = text.detected_at
    return {
        "username": USERNAME,
        "content": clip(escape(f"{text.title} on {text.chain}: {text.address}"), CONTENT_LIMIT),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},  # data never pings anyone
    }


def discord_burst(burst: Burst) -> dict[str, Any]:
    """One embed standing for a burst."""
    text = burst_text(burst)
    listing = [f"• {escape(a)}" for a in text.addresses] + ([f"…and {text.more} more"] if text.more > 0 else [])
    description = "\n".join(escape(line) for line in text.lines) + "\n\n**First addresses:**\n" + "\n".join(listing)
    color = RETRACTED_COLOR if burst.event == "retracted" else COLORS.get(burst.severity, COLORS["warning"])
    return {
        "username": USERNAME,
        "content": clip(escape(text.title), CONTENT_LIMIT),
        "embeds": [
            {
                "title": clip(text.title, TITLE_LIMIT),
                "color": color,
                "description": clip(description, DESCRIPTION_LIMIT),
            }
        ],
        "allowed_mentions": {"parse": []},
    }


def rate_limit_wait(body: str, header: str | None) -> float | None:
    """Seconds to wait from a 429: the JSON `retry_after` (seconds, may be fractional), else the
    Retry-After header; bounded to what a rate limit can mean."""
    try:
        found = loads(body).get("retry_after")
    except (ValueError, AttributeError):
        found = None
    if isinstance(found, int | float) and not isinstance(found, bool) and math.isfinite(found):
        return min(max(float(found), 0.0), RETRY_AFTER_MAX)
    if header is not None:
        try:
            value = float(header)
        except ValueError:
            return None
        return min(max(value, 0.0), RETRY_AFTER_MAX) if math.isfinite(value) else None
    return None


class DiscordSink(JsonChatSink):
    """A Discord webhook (its URL is the secret); Discord answers 204, or 200 with `?wait=true`."""

    def __init__(self, config: SinkConfig, url: str, explorers: Mapping[str, str] | None = None) -> None:
        super().__init__(config, secret_parts(url), explorers)
        self._url = url

    async def send(self, message: OutboxMessage) -> None:
        """POST the embed."""
        await self._send(discord_embed(alert_text(message, self._explorers)))

    async def send_burst(self, burst: Burst) -> None:
        """POST the burst embed."""
        await self._send(discord_burst(burst))

    async def _send(self, document: Mapping[str, Any]) -> None:
        status, headers, text = await self.exchange_json(self._url, document)
        if 200 <= status < 300:
            return
        failure = http_failure(status, headers, text)
        if status == 429:
            failure.retry_after = rate_limit_wait(text, headers.get("Retry-After"))
        raise scrubbed(failure, self._secrets)
