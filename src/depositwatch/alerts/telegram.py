"""Telegram Bot API `sendMessage`: one HTML message per alert, one per burst. The bot token is part of
the URL path, so it is scrubbed from every error."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from depositwatch.alerts.chatsink import JsonChatSink
from depositwatch.alerts.discord import rate_limit_wait
from depositwatch.alerts.redact import scrubbed
from depositwatch.alerts.sinks import Burst, http_failure
from depositwatch.alerts.text import AlertText, alert_text, burst_text, clip
from depositwatch.config import SinkConfig
from depositwatch.jsonutil import dumps_bytes, loads
from depositwatch.messages import OutboxMessage

API_URL = "https://api.telegram.org"
TEXT_LIMIT = 4096  # Telegram's limit for a message, after entities are parsed


def telegram_text(text: AlertText) -> str:
    """The message in Telegram's HTML: a bold title, then the facts, the transaction linked."""
    lines = [f"<b>{html.escape(text.title)}</b>"]
    if text.test:
        lines.append("<i>This is a test alert; no funds moved.</i>")
    for fact in text.facts:
        if fact.label == "Explorer":
            continue
        value = html.escape(fact.value)
        if fact.label == "Transaction" and text.explorer:
            value = f'<a href="{html.escape(text.explorer, quote=True)}">{value}</a>'
        lines.append(f"<b>{html.escape(fact.label)}:</b> {value}")
    return _fit(lines)


def telegram_burst(burst: Burst) -> str:
    """The burst summary in Telegram's HTML."""
    text = burst_text(burst)
    lines = [
        f"<b>{html.escape(text.title)}</b>",
        *(html.escape(line) for line in text.lines),
        "<b>First addresses:</b>",
    ]
    lines += [f"• {html.escape(a)}" for a in text.addresses]
    if text.more > 0:
        lines.append(f"…and {text.more} more")
    return _fit(lines)


def _fit(lines: list[str]) -> str:
    """Whole lines up to Telegram's limit (a cut inside a tag would be refused as bad HTML)."""
    kept: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > TEXT_LIMIT - 2:
            kept.append("…")
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept)


class TelegramSink(JsonChatSink):
    """A bot (its token is the secret) posting to one chat."""

    def __init__(self, config: SinkConfig, token: str, explorers: Mapping[str, str] | None = None) -> None:
        url = f"{(config.url or API_URL).rstrip('/')}/bot{token}/sendMessage"
        super().__init__(config, [url, token, f"bot{token}"], explorers)
        assert config.chat_id is not None
        self._chat_id = config.chat_id
        self._url = url

    async def send(self, message: OutboxMessage) -> None:
        """Send the alert."""
        await self._send(telegram_text(alert_text(message, self._explorers)))

    async def send_burst(self, burst: Burst) -> None:
        """Send the burst summary."""
        await self._send(telegram_burst(burst))

    async def _send(self, text: str) -> None:
        document: dict[str, Any] = {
            "chat_id": self._chat_id,
            "text": clip(text, TEXT_LIMIT),
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
        }
        status, headers, answer = await self.exchange_json(self._url, document)
        if 200 <= status < 300 and _ok(answer):
            return
        failure = http_failure(status, headers, _description(answer))
        if status == 429:
            failure.retry_after = _retry_after(answer)
        raise scrubbed(failure, self._secrets)


def _parsed(answer: str) -> dict[str, Any]:
    try:
        found = loads(answer)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _ok(answer: str) -> bool:
    """The Bot API says `"ok": true` on success; a 2xx without it is not one."""
    return _parsed(answer).get("ok") is True


def _description(answer: str) -> str:
    """The Bot API's own words (`Bad Request: chat not found`), else the raw answer."""
    description = _parsed(answer).get("description")
    return str(description) if description else answer


def _retry_after(answer: str) -> float | None:
    """`parameters.retry_after` of a 429 (seconds)."""
    parameters = _parsed(answer).get("parameters")
    wait = parameters.get("retry_after") if isinstance(parameters, dict) else None
    return rate_limit_wait(dumps_bytes({"retry_after": wait}).decode(), None)
