"""The common part of the chat and paging sinks (Opsgenie, Teams, Discord, Telegram): JSON over HTTP,
one summary per burst, and no secret in an error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from depositwatch.alerts.redact import scrubbed
from depositwatch.alerts.sinks import DeliveryError, HttpSink
from depositwatch.config import SinkConfig
from depositwatch.jsonutil import dumps_bytes


class JsonChatSink(HttpSink):
    """POSTs JSON documents; any secret the sink holds is scrubbed from the reason of a failure."""

    summarizes_bursts = True

    def __init__(self, config: SinkConfig, secrets: Sequence[str], explorers: Mapping[str, str] | None = None) -> None:
        super().__init__(config)
        self._secrets = tuple(secrets)
        self._explorers = explorers

    async def post_json(self, url: str, document: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> str:
        """POST `document`; DeliveryError (without secrets) unless 2xx."""
        try:
            return await self.post(url, dumps_bytes(document), {"Content-Type": "application/json", **(headers or {})})
        except DeliveryError as exc:
            raise scrubbed(exc, self._secrets) from None

    async def exchange_json(self, url: str, document: Mapping[str, Any]) -> tuple[int, Mapping[str, str], str]:
        """POST `document` and return the answer as it is (`HttpSink.exchange`), for sinks whose receivers
        say more than the status (a rate limit's wait, "ok": false); DeliveryError (without secrets) only
        when no answer came."""
        try:
            return await self.exchange(url, dumps_bytes(document), {"Content-Type": "application/json"})
        except DeliveryError as exc:
            raise scrubbed(exc, self._secrets) from None
