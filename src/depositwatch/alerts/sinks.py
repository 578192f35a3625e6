"""Alert sinks: where outbox messages go (signed webhook, Slack, PagerDuty), and how failures look.

A sink turns one outbox message into one HTTP request. It raises `DeliveryError` for anything but a
success; the dispatcher decides when to retry. Each sink owns one `aiohttp.ClientSession`, created in
the running loop on first use and closed by `close()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp

from depositwatch.alerts.routing import Routed, severity_rank
from depositwatch.alerts.signing import ALERT_ID_HEADER, IDEMPOTENCY_HEADER, signed_headers
from depositwatch.config import SinkConfig, redact_text
from depositwatch.jsonutil import loads
from depositwatch.messages import OutboxMessage
from depositwatch.models import Asset

USER_AGENT = "depositwatch"
# Statuses that say "not now" rather than "never": retried without being reported as a rejection.
TRANSIENT_4XX = frozenset({408, 409, 425, 429})
BURST_ADDRESSES_SHOWN = 5


class DeliveryError(Exception):
    """A delivery that did not succeed.

    `retry_after` is the receiver's own wish (Retry-After on 429/503), in seconds. `permanent` marks a
    rejection (a 4xx that is not about timing): the dispatcher still retries it, since receivers get
    misconfigured and then fixed, but reports it as a rejection.
    """

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        status: int | None = None,
        timed_out: bool = False,
    ) -> None:
        reason = redact_text(reason)  # it is logged and stored in deliveries.last_error
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.permanent = permanent
        self.status = status
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class Burst:
    """Many due messages of one (chain, block height, kind, event): one summary instead of each."""

    chain: str
    block_height: int | None
    kind: str
    event: str
    messages: tuple[OutboxMessage, ...]

    @property
    def count(self) -> int:
        """How many messages the summary stands for."""
        return len(self.messages)

    @property
    def seqs(self) -> list[int]:
        """Outbox sequence numbers of the messages, in order."""
        return [m.seq for m in self.messages]

    @property
    def severity(self) -> str:
        """The highest severity among the messages."""
        return max((m.severity for m in self.messages), key=severity_rank)

    @property
    def height_text(self) -> str:
        """`block 123`, or `mempool` for unconfirmed sightings."""
        return "mempool" if self.block_height is None else f"block {self.block_height}"

    @property
    def dedup_key(self) -> str:
        """Stable across retries and restarts, so a resent summary lands on the same incident."""
        height = "mempool" if self.block_height is None else str(self.block_height)
        return f"burst:{self.chain}:{height}:{self.kind}"

    @property
    def list_command(self) -> str:
        """The command that lists the messages behind the summary."""
        return f"depositwatch alerts list --kind {self.kind} --limit {max(self.count, 100)}"

    def bodies(self) -> list[dict[str, Any]]:
        """The messages' JSON bodies."""
        return [loads(m.payload) for m in self.messages]

    def totals(self) -> list[str]:
        """Total amount per asset, as `<decimal> <symbol>`, largest count of transfers first."""
        sums: dict[tuple[str, str | None, int], int] = {}
        for body in self.bodies():
            asset = body.get("asset") or {}
            key = (str(asset.get("symbol", "?")), asset.get("contract"), int(asset.get("decimals") or 0))
            try:
                sums[key] = sums.get(key, 0) + int(body.get("amount", 0))
            except (TypeError, ValueError):
                sums.setdefault(key, 0)
        return [
            f"{Asset(symbol, decimals, contract).to_decimal(total)} {symbol}"
            for (symbol, contract, decimals), total in sorted(
                sums.items(), key=lambda item: (item[0][0], item[0][1] or "")
            )
        ]

    def first_addresses(self, n: int = BURST_ADDRESSES_SHOWN) -> list[dict[str, Any]]:
        """The first `n` messages' address, label, owner, amount and alert id."""
        shown = []
        for message, body in zip(self.messages[:n], self.bodies()[:n], strict=True):
            address = body.get("address") or {}
            asset = body.get("asset") or {}
            shown.append(
                {
                    "address": address.get("address"),
                    "label": address.get("label"),
                    "owner": address.get("owner"),
                    "amount": f"{body.get('amount_decimal')} {asset.get('symbol', '')}".strip(),
                    "alert_id": message.alert_id,
                }
            )
        return shown


class AlertSink(Protocol):
    """One configured destination."""

    name: str
    config: SinkConfig  # timeout, concurrency, retry and burst policy
    summarizes_bursts: bool  # True: a burst of due messages is sent as one summary

    def accepts(self, message: OutboxMessage) -> bool:
        """Whether this sink wants the message (its kinds and minimum severity)."""

    async def send(self, message: OutboxMessage) -> None:
        """Deliver one message; raise DeliveryError unless the receiver acknowledged it."""

    async def send_burst(self, burst: Burst) -> None:
        """Deliver one summary for many messages; raise DeliveryError unless acknowledged."""

    async def close(self) -> None:
        """Release the HTTP session."""


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


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def http_failure(status: int, headers: Mapping[str, str], text: str) -> DeliveryError:
    """The DeliveryError for a non-success HTTP answer."""
    snippet = " ".join(text.split())[:200]
    reason = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if status in (429, 503):
        return DeliveryError(reason, retry_after=parse_retry_after(headers.get("Retry-After")), status=status)
    if 400 <= status < 500 and status not in TRANSIENT_4XX:
        return DeliveryError(reason, permanent=True, status=status)
    return DeliveryError(reason, status=status)


class HttpSink(Routed):
    """Common parts of the sinks: filters, one session, POST with error classification."""

    summarizes_bursts = False

    def __init__(self, config: SinkConfig) -> None:
        super().__init__(config)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The sink's session, made on first use inside the running loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(limit=self.config.concurrency),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def exchange(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, Mapping[str, str], str]:
        """POST and return the answer as it is: status, headers and at most `ANSWER_LIMIT` bytes of its text
        (a receiver's answer is hostile: one that never ends, or sends gigabytes, holds no sink);
        DeliveryError only when no answer came."""
        try:
            async with self.session().post(url, data=body, headers=dict(headers), allow_redirects=False) as resp:
                return resp.status, resp.headers.copy(), await read_answer(resp)
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.config.timeout:g} s", timed_out=True) from None
        except aiohttp.InvalidURL:
            # its text is the URL itself, which for Slack is the secret
            raise DeliveryError("connection failed: the configured URL is not usable") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"connection failed: {type(exc).__name__}: {exc}") from None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], ok: Sequence[int] = ()) -> str:
        """POST and return the answer's text; DeliveryError unless 2xx (or a status in `ok`)."""
        status, answer_headers, text = await self.exchange(url, body, headers)
        if 200 <= status < 300 or status in ok:
            return text
        raise http_failure(status, answer_headers, text)

    async def send_burst(self, burst: Burst) -> None:  # noqa: ARG002 - the method of sinks that summarise
        """Sinks that do not summarise send every message; the dispatcher never calls this for them."""
        raise TypeError(f"sink {self.name} does not summarise bursts: deliver each message instead")

    async def close(self) -> None:
        """Close the session (idempotent)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


class WebhookSink(HttpSink):
    """A generic JSON webhook signed the Standard Webhooks way: the stored body, byte for byte."""

    def __init__(self, config: SinkConfig, keys: Sequence[bytes]) -> None:
        super().__init__(config)
        assert config.url is not None
        if not keys:
            raise ValueError(f"sink {config.name}: a webhook needs at least one signing key")
        self.url = config.url
        self._keys = tuple(keys)

    def headers(self, message: OutboxMessage, body: bytes, timestamp: int) -> dict[str, str]:
        """Every header of a webhook request; `webhook-id` is the idempotency key and is signed."""
        return {
            "Content-Type": "application/json",
            ALERT_ID_HEADER: message.alert_id,
            IDEMPOTENCY_HEADER: message.idempotency_key,
            **signed_headers(self._keys, message.idempotency_key, timestamp, body),
        }

    async def send(self, message: OutboxMessage) -> None:
        """POST the stored payload, signed at send time."""
        body = message.payload.encode()
        await self.post(self.url, body, self.headers(message, body, int(time.time())))


async def close_sinks(sinks: Sequence[AlertSink]) -> None:
    """Close every sink, even when one fails to."""
    await asyncio.gather(*(s.close() for s in sinks), return_exceptions=True)
