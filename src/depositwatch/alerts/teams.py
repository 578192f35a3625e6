"""Microsoft Teams workflow webhooks: one Adaptive Card per alert, one per burst."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from depositwatch.alerts.chatsink import JsonChatSink
from depositwatch.alerts.sinks import Burst
from depositwatch.alerts.text import AlertText, alert_text, burst_text, clip
from depositwatch.config import SinkConfig
from depositwatch.messages import OutboxMessage

CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION = "1.4"
COLORS = {"critical": "Attention", "warning": "Warning", "info": "Accent"}
TEXT_LIMIT = 2000


def _plain(text: str) -> str:
    """Adaptive Card TextBlocks read a subset of Markdown: data (labels, owners) is shown as it is."""
    for char in "\\*_[]()#>`~":
        text = text.replace(char, "\\" + char)
    return clip(text, TEXT_LIMIT)


def _card(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {"$schema": CARD_SCHEMA, "type": "AdaptiveCard", "version": CARD_VERSION, "body": body}
    if actions:
        card["actions"] = actions
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def _heading(title: str, *, retracted: bool, severity: str) -> dict[str, Any]:
    """The card's title line, green for a retraction, else in the severity's colour."""
    return {
        "type": "TextBlock",
        "text": _plain(title),
        "weight": "Bolder",
        "size": "Medium",
        "wrap": True,
        "color": "Good" if retracted else COLORS.get(severity, "Warning"),
    }


def teams_card(text: AlertText) -> dict[str, Any]:
    """The workflow webhook document for one alert: a title, a fact set, a button to the explorer."""
    body: list[dict[str, Any]] = [_heading(text.title, retracted=text.retracted, severity=text.severity)]
    if text.test:
        body.append({"type": "TextBlock", "text": "This is a test alert; no funds moved.", "wrap": True})
    body.append({"type": "FactSet", "facts": [{"title": f.label, "value": _plain(f.value)} for f in text.facts]})
    actions = [{"type": "Action.OpenUrl", "title": "View transaction", "url": text.explorer}] if text.explorer else []
    return _card(body, actions)


def teams_burst(burst: Burst) -> dict[str, Any]:
    """One card standing for a burst."""
    text = burst_text(burst)
    listing = [f"- {_plain(a)}" for a in text.addresses] + ([f"...and {text.more} more"] if text.more > 0 else [])
    body: list[dict[str, Any]] = [
        _heading(text.title, retracted=burst.event == "retracted", severity=burst.severity),
        *({"type": "TextBlock", "text": _plain(line), "wrap": True} for line in text.lines),
        {"type": "TextBlock", "text": "First addresses:\n\n" + "\n".join(listing), "wrap": True},
    ]
    return _card(body, [])


class TeamsSink(JsonChatSink):
    """A Teams workflow webhook (its URL is the secret); workflows answer 202."""

    def __init__(self, config: SinkConfig, url: str, explorers: Mapping[str, str] | None = None) -> None:
        from depositwatch.alerts.redact import secret_parts

        super().__init__(config, secret_parts(url), explorers)
        self._url = url

    async def send(self, message: OutboxMessage) -> None:
        """POST the card."""
        await self.post_json(self._url, teams_card(alert_text(message, self._explorers)))

    async def send_burst(self, burst: Burst) -> None:
        """POST the burst card."""
        await self.post_json(self._url, teams_burst(burst))
