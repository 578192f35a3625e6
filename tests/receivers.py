"""Real HTTP receivers on loopback for alert tests, and a maker of real outbox messages.

`Receiver` is an aiohttp server whose answers are decided by a responder: fail the first N attempts,
sleep past the sender's timeout, answer 500 or 429 with Retry-After, or be stopped for a while and
started again on the same port. It records every request it saw and which ones it acknowledged.

Every webhook a Receiver gets is verified with the `standardwebhooks` package (not with the project's
own code) under the receiver's secrets (by default `WEBHOOK_SECRET`, the secret the tests configure);
one that does not verify is answered 401 and kept in `forged`. Slack and PagerDuty documents (a
top-level `blocks` or `routing_key`) are not signed and are not checked.

`AlertMaker` commits blocks with matches through the real store, so the outbox holds exactly what
the follower would have put there.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from depositwatch.jsonutil import loads
from depositwatch.messages import OutboxMessage
from depositwatch.models import AddressEntry, AddressStatus, Asset, Block, BlockRef, Match, MatchKind, Transfer
from depositwatch.store import BlockEffects, ChainPolicy, Cursor, Scope, SqlStore
from tests.util import eventually, serve

ETH = Asset("ETH", 18)
USDT = Asset("USDT", 6, "0xdAC17F958D2ee523a2206206994597C13D831ec7")
# The webhook signing secret the tests configure: Standard Webhooks form, a 32-byte key.
# Top-level keys of the other sinks' documents: Slack, PagerDuty, Opsgenie (create; close has `source`
# and `note`), Teams (Adaptive Card message), Discord, Telegram.
CHANNEL_KEYS = frozenset({"blocks", "routing_key", "alias", "source", "attachments", "embeds", "chat_id"})
WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()


@dataclass
class Received:
    """One request as the receiver saw it."""

    n: int  # 1-based arrival number
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None  # what was answered; None while pending or when the sender gave up
    query: str = ""  # the raw query string
    verified: bool = False  # a webhook whose Standard Webhooks signature checked out

    def header(self, name: str) -> str | None:
        """A header, looked up case-insensitively."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    @property
    def key(self) -> str | None:
        """The idempotency key: `webhook-id` (signed), else the Idempotency-Key header."""
        return self.header("webhook-id") or self.header("Idempotency-Key")

    @property
    def is_webhook(self) -> bool:
        """Anything but a chat or paging document (Slack, PagerDuty, Opsgenie, Teams, Discord, Telegram)
        is a webhook and must carry a valid signature."""
        try:
            document = loads(self.body)
        except ValueError:
            return True
        if not isinstance(document, dict) or "idempotency_key" in document:
            return True
        return not CHANNEL_KEYS.intersection(document)

    def json(self) -> Any:
        """The body parsed."""
        return loads(self.body)


@dataclass
class Reply:
    """What to answer."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering (past the sender's timeout: a timeout)


Responder = Callable[["Received", "Receiver"], Reply | Awaitable[Reply]]


def ok(status: int = 200) -> Responder:
    """Always succeed."""
    return lambda _req, _rx: Reply(status)


def always(status: int, retry_after: str | None = None, body: str = "nope") -> Responder:
    """Always answer `status` (with Retry-After when given)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda _req, _rx: Reply(status, body, headers)


def fail_first(n: int, status: int = 500, *, per_key: bool = True, delay: float = 0.0) -> Responder:
    """Fail the first `n` attempts of each idempotency key (or the first `n` requests overall)."""

    def respond(req: Received, rx: Receiver) -> Reply:
        seen = rx.seen_key(req.key) if per_key else req.n
        if seen <= n:
            return Reply(status, "try again", delay=delay if status == 200 else 0.0)
        return Reply(200)

    return respond


def time_out_first(n: int, sleep: float) -> Responder:
    """Sleep `sleep` seconds (past the sender's timeout) on the first `n` attempts of each key."""

    def respond(req: Received, rx: Receiver) -> Reply:
        return Reply(200, delay=sleep) if rx.seen_key(req.key) <= n else Reply(200)

    return respond


def slow(delay: float, status: int = 200) -> Responder:
    """Answer after `delay` seconds."""
    return lambda _req, _rx: Reply(status, delay=delay)


class Receiver:
    """An HTTP server on 127.0.0.1 that records requests and answers as its responder says."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        path: str = "/hook",
        port: int = 0,
        secrets: Sequence[str] = (WEBHOOK_SECRET,),
    ) -> None:
        self.responder = responder or ok()
        self.path = path
        self.port = port
        self.verifiers = [Webhook(secret) for secret in secrets]
        self.requests: list[Received] = []
        self.forged: list[Received] = []  # webhooks whose signature did not verify (answered 401)
        self.in_flight: Counter[str] = Counter()  # per `group` value, while being answered
        self.max_in_flight: Counter[str] = Counter()
        self.group: Callable[[Received], str] | None = None
        self._keys: Counter[str | None] = Counter()
        self._handling = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where to send."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        """Whether it listens."""
        return self._runner is not None

    async def start(self) -> Receiver:
        """Listen (on the same port as before after a stop)."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post(self.path, self._handle)
        self._runner, self.port = await serve(app, self.port, handler_cancellation=True, shutdown_timeout=0.2)
        return self

    async def stop(self) -> None:
        """Stop listening; requests in progress are dropped."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def in_flight_total(self) -> int:
        """Requests being answered right now."""
        return self._handling

    def seen_key(self, key: str | None) -> int:
        """How many requests with this idempotency key arrived so far (this one included)."""
        return self._keys[key]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        received = Received(len(self.requests) + 1, request.path, dict(request.headers), body, time.time())
        received.query = request.query_string
        self.requests.append(received)
        if received.is_webhook:
            received.verified = self._verify(received)
            if not received.verified:
                self.forged.append(received)
                received.status = 401
                return web.Response(status=401, text="signature does not verify")
        self._keys[received.key] += 1
        self._handling += 1
        group = self.group(received) if self.group else None
        if group is not None:
            self.in_flight[group] += 1
            self.max_in_flight[group] = max(self.max_in_flight[group], self.in_flight[group])
        try:
            reply = self.responder(received, self)
            if not isinstance(reply, Reply):
                reply = await reply
            if reply.delay:
                await asyncio.sleep(reply.delay)
            received.status = reply.status
            return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
        finally:
            self._handling -= 1
            if group is not None:
                self.in_flight[group] -= 1

    def _verify(self, received: Received) -> bool:
        for verifier in self.verifiers:
            try:
                verifier.verify(received.body, received.headers)
            except WebhookVerificationError:
                continue
            return True
        return False

    # what arrived ----------------------------------------------------------------------------------

    @property
    def accepted(self) -> list[Received]:
        """Requests answered with a 2xx."""
        return [r for r in self.requests if r.status is not None and 200 <= r.status < 300]

    @property
    def accepted_keys(self) -> list[str | None]:
        """Idempotency keys of the acknowledged requests, in arrival order."""
        return [r.key for r in self.accepted]

    async def wait_until(self, predicate: Callable[[Receiver], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate(self)` holds."""
        await eventually(lambda: predicate(self), timeout)


def revoked_key(i: int) -> bytes:
    """A 20-byte address key for the i-th test address."""
    return (0x2200000000000000000000000000000000000000 + i).to_bytes(20, "big")


class AlertMaker:
    """Puts real alerts in a store's outbox: revoked addresses, then blocks that pay them."""

    def __init__(
        self, store: SqlStore, chain: str = "eth", chain_id: int | None = 1, confirmations: int = 1000
    ) -> None:
        self.store = store
        self.chain = chain
        self.policy = ChainPolicy(chain, confirmations=confirmations, chain_id=chain_id)
        self.cursor = Cursor(f"live:{chain}", chain, 0, "h0")
        self.scope = Scope.live()
        self._tx = 0
        self._imported: set[int] = set()

    async def revoke(self, indexes: Sequence[int], revoked_at: int = 1000) -> None:
        """Import the addresses `revoked_key(i)` as revoked."""
        rows = []
        for line, i in enumerate(indexes, start=2):
            if i in self._imported:
                continue
            key = revoked_key(i)
            rows.append(
                (
                    line,
                    AddressEntry(
                        self.chain,
                        "0x" + key.hex(),
                        key,
                        AddressStatus.REVOKED,
                        label=f"hot-{i}",
                        owner=f"cust-{i}",
                        revoked_at=revoked_at,
                        reason="breach",
                        type="ethereum",
                    ),
                )
            )
            self._imported.add(i)
        if rows:
            await self.store.import_addresses(rows)

    async def block(
        self, payments: Sequence[tuple[int, int]], *, asset: Asset = ETH, kind: MatchKind = MatchKind.REVOKED_INCOMING
    ) -> list[OutboxMessage]:
        """Commit the next block with one transfer per (address index, amount); return the new messages."""
        await self.revoke([i for i, _ in payments])
        height = self.cursor.height + 1
        ref = BlockRef(height, f"h{height}")
        matches = []
        for i, amount in payments:
            self._tx += 1
            key = revoked_key(i)
            address = "0x" + key.hex()
            if kind is MatchKind.REVOKED_OUTGOING:
                transfer = Transfer(asset, amount, f"0x{self._tx:064x}", None, None, key, address, "0x" + "99" * 20)
            else:
                transfer = Transfer(asset, amount, f"0x{self._tx:064x}", None, key, None, "0x" + "99" * 20, address)
            matches.append(Match(self.chain, kind, key, transfer, ref, 10_000 + height))
        before = await self._max_seq()
        block = Block(height, ref.hash, self.cursor.hash, 10_000 + height, ())
        self.cursor = await self.store.commit_blocks(
            self.scope, self.cursor, self.policy, [BlockEffects(block, matches)], tip_height=height
        )
        return [m for m in await self.store.outbox.messages(limit=1_000_000) if m.seq > before][::-1]

    async def _max_seq(self) -> int:
        messages = await self.store.outbox.messages(limit=1)
        return messages[0].seq if messages else 0
