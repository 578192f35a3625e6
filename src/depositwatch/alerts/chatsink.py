"""The common part of the chat and paging sinks (Opsgenie, Teams, Discord, Telegram): JSON over HTTP,
one summary per burst, and no secret in an error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from depositwatch.alerts.redact import scrubbed
from depositwatch.alerts.sinks import DeliveryError, HttpSink
from depositwatch.config import SinkConfig
from depositwatch.jsonutil import dumps_bytes

ANSWER_LIMIT = 64 * 1024  # a receiver's answer is read this far: enough for any error it means to give


async def read_answer(resp: aiohttp.ClientResponse, limit: int = ANSWER_LIMIT) -> str:
    """The answer's text, at most `limit` bytes of it (a hostile receiver cannot fill memory)."""
    data = bytearray()
    while len(data) < limit:
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


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

    async def exchange(self, url: str, document: Mapping[str, Any]) -> tuple[int, Mapping[str, str], str]:
        """POST `document` and return the answer as it is: status, headers and at most `ANSWER_LIMIT` bytes of
        text, for sinks whose receivers say more than the status (a rate limit's wait, "ok": false);
        DeliveryError (without secrets) only when no answer came."""
        try:
            async with self.session().post(
                url, data=dumps_bytes(document), headers={"Content-Type": "application/json"}, allow_redirects=False
            ) as resp:
                return resp.status, resp.headers.copy(), await read_answer(resp)
        except TimeoutError:
            failure = DeliveryError(f"no answer within {self.config.timeout:g} s", timed_out=True)
        except (aiohttp.ClientError, OSError) as exc:
            failure = DeliveryError(f"connection failed: {type(exc).__name__}: {exc}")
        raise scrubbed(failure, self._secrets)
