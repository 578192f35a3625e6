"""The one JSON-RPC node client of both chain kinds: transport rules, failover, retries, typed errors, batches.

Every request to a node (Bitcoin Core's JSON-RPC and REST, an EVM node's JSON-RPC) goes through here:

- **Failover and retries**: several node URLs; a request that fails for a transient reason (connection
  refused or reset, timeout, HTTP 408/425/429/5xx without a JSON-RPC body, a redirect, or a "warming up"
  error) moves on to the next URL, and once every URL has failed in a round it sleeps a capped
  exponential backoff (`backoff_initial` doubling to `backoff_max`, with jitter) and goes round again
  for at most `retry_for` seconds; then the last reason is raised (`NodeUnavailable`, or the typed error
  the last URL gave). `retry_for = 0` makes one round over the URLs and leaves backing off to the caller
  (the EVM source does: its follower backs off). While failing, the client logs at most once a minute;
  the first success after a failure logs "connection restored". `switches` counts the failures, so a
  source can check the node's chain again after every reconnect or failover.
- **Typed errors**: a JSON-RPC error is the node's real answer and is raised (or, in a batch, returned)
  as `RpcError(code, message, method)` or a subclass (`NotFound` -5, `InvalidParameter` -8, `WarmingUp`
  -28, `MethodNotFound` -32601). The body decides, not the status: Bitcoin Core sends errors with HTTP
  500 or 404 to JSON-RPC 1.0 requests.
- **Bounded answers**: every body is read as a stream and given up, with `AnswerTooLarge`, as soon as it
  passes `max_response_bytes` (a `Content-Length` above it is refused before reading); the decompressed
  length counts. At most `max_in_flight` requests are in flight, so at most that many bodies are held.
  Bulk reads (Bitcoin's raw blocks, `exchange(..., bulk=True)`) wait behind every other request for a
  free slot: a short call (the tip, a batch of hashes) is sent as soon as one request ends, not after
  a range of blocks queued before it.
  Every body is parsed by `jsonutil.loads` (orjson: 1,024 levels at most, an error beyond), never by
  the standard library's parser, which overflows the C stack on a deeply nested answer once py_ecc
  (imported by web3) has raised the recursion limit to 100,000.
- **Timeouts**: `connect_timeout` for the TCP (and TLS) connection, `read_timeout` for each wait on the
  socket, `request_timeout` for a whole request (a per-call `timeout` overrides it: `scantxoutset`).
- **Credentials stay at their origin**: user and password (from the URL's `USER:PASS@` or the config),
  or the cookie file (`__cookie__:HEX`, read again once on HTTP 401 since the node rewrites it at every
  start) go as an `Authorization` header on each request to that URL only; redirects are never followed
  (a 3xx is `NodeRedirect`), and the session keeps no cookies. HTTP 401 and 403 raise `RpcAuthError`.
  A provider's API key header (TronGrid's `TRON-PRO-API-KEY`) is a `SecretStr` sent only to the
  configured URLs, and never named by value in an error or a log line.
- **REST calls** (`post_path`): java-tron's HTTP API is POST JSON to a path (`/wallet/getnowblock`), one
  JSON answer per request, with the same limits, failover, retries and typed errors; the node's own
  `{"Error": ...}` answers are the caller's to read.

The module is over 500 lines and stays whole: it is one client, whose request paths (calls, batches,
REST posts) share one session, one failover state and the rules above, with the typed errors it raises.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog
from pydantic import SecretStr

from depositwatch import jsonutil
from depositwatch.chains.base import BadNodeAnswer, ChainError, NodeUnavailable
from depositwatch.config import ChainConfig, redact_url
from depositwatch.supervise import Episode

log = structlog.get_logger(__name__)

DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_JSON = {"Content-Type": "application/json"}
_RETRIED_STATUSES = frozenset({408, 425, 429})

T = TypeVar("T")


# --- request slots ---------------------------------------------------------------------------------


class Slots:
    """At most `size` holders at a time, like a semaphore; a freed slot goes to the oldest waiter of the
    first queue before any waiter of the second (short calls before bulk reads), in order within each."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._queues: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (deque(), deque())

    @property
    def free(self) -> int:
        """Slots nobody holds now."""
        return self._free

    async def acquire(self, *, bulk: bool = False) -> None:
        """Wait for a slot (behind every short call waiting, when `bulk`)."""
        if self._free > 0 and not (self._queues[0] or (bulk and self._queues[1])):
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues[bulk]
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot in the same turn as the cancellation: pass it on
            elif waiter in queue:  # else a release already passed over it
                queue.remove(waiter)
            raise

    def release(self) -> None:
        """Free a slot: hand it to the next waiter, if any."""
        for queue in self._queues:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1

    @asynccontextmanager
    async def hold(self, *, bulk: bool = False) -> AsyncIterator[None]:
        """`async with slots.hold():` a slot for the block."""
        await self.acquire(bulk=bulk)
        try:
            yield
        finally:
            self.release()


# --- errors ------------------------------------------------------------------------------------------


class RpcError(ChainError):
    """The node answered a call with a JSON-RPC error: its real answer, not retried."""

    code = 0

    def __init__(self, code: int, message: str, method: str) -> None:
        super().__init__(f"{method}: error {code}: {message}")
        self.code = code
        self.message = message
        self.method = method


class NotFound(RpcError):
    """-5 RPC_INVALID_ADDRESS_OR_KEY: no such block, transaction or key."""


class InvalidParameter(RpcError):
    """-8 RPC_INVALID_PARAMETER: e.g. a block height out of range."""


class WarmingUp(RpcError, NodeUnavailable):
    """-28 RPC_IN_WARMUP: the node is starting (loading the block index, verifying blocks)."""


class MethodNotFound(RpcError):
    """-32601: the node does not know the method (or it is disabled)."""


class RpcAuthError(ChainError):
    """The node refused the credentials (HTTP 401) or the client (HTTP 403); fix the config."""


class AnswerTooLarge(BadNodeAnswer):
    """The answer is longer than `max_response_bytes`: refused without reading the rest."""


class NodeRedirect(BadNodeAnswer):
    """The node answered with a redirect; node clients follow none (credentials stay at their origin)."""


_BY_CODE: dict[int, type[RpcError]] = {-5: NotFound, -8: InvalidParameter, -28: WarmingUp, -32601: MethodNotFound}
WARMING_UP = -28


def rpc_error(code: int, message: str, method: str) -> RpcError:
    """The typed error for a JSON-RPC error code."""
    return _BY_CODE.get(code, RpcError)(code, message, method)


class Retry(Exception):
    """A transient failure of one endpoint: try the next one, then back off (`error`: what to raise last)."""

    def __init__(self, reason: str, error: ChainError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


# --- endpoints ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One configured node URL."""

    url: str  # without credentials
    shown: str  # for logs and errors
    fixed_auth: str | None  # an Authorization header from the URL or the configured user and password


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic `Authorization` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def endpoint(url: str, user: str | None = None, password: str | None = None) -> Endpoint:
    """The endpoint of a URL: credentials in the URL win over `user` and `password`."""
    parts = urlsplit(url)
    auth = None
    if parts.username is not None:
        auth = basic_auth(unquote(parts.username), unquote(parts.password or ""))
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        url = parts._replace(netloc=netloc).geturl()
    elif user is not None and password is not None:
        auth = basic_auth(user, password)
    return Endpoint(url, redact_url(url), auth)


@dataclass(frozen=True, slots=True)
class Call:
    """One JSON-RPC call of a batch (`what`: the block or range it is about, named in errors)."""

    method: str
    params: tuple[Any, ...] = ()
    what: str = ""

    @property
    def label(self) -> str:
        return f"{self.method} for {self.what}" if self.what else self.method


def describe(exc: BaseException) -> str:
    """An exception as `Type: text` for a log line."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- the client --------------------------------------------------------------------------------------


class NodeClient:
    """JSON-RPC (and plain GETs, for Bitcoin's REST) to one or more nodes of one chain, failing over in order."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        chain: str,
        kind: str = "node",
        user: str | None = None,
        password: str | None = None,
        cookie_file: Path | None = None,
        max_in_flight: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        request_timeout: float = 300.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        retry_for: float = 30.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 4.0,
        headers: dict[str, SecretStr] | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one node URL is needed")
        self.chain = chain
        self.kind = kind  # "bitcoin", "evm": named in the trouble log line
        self.endpoints = [endpoint(u, user, password) for u in urls]
        self.cookie_file = cookie_file
        # Sent with every request to the configured URLs (an API key header): values stay SecretStr here.
        self._headers = dict(headers or {})
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.timeout = request_timeout
        self.max_response_bytes = max_response_bytes
        self.retry_for = retry_for
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.switches = 0  # failed attempts so far: a change means the next answer may come from another node
        self._in_flight = Slots(max_in_flight)
        self._connections = max_in_flight + 4
        self._session: aiohttp.ClientSession | None = None
        self._current = 0
        self._cookie: str | None = None
        self._ids = itertools.count(1)
        self._log = log.bind(chain=chain)
        self._trouble = Episode(self._log, f"{self.kind} node trouble, retrying", "connection restored")

    @property
    def failures(self) -> int:
        """Failed attempts in a row (every URL tried counts one), 0 once a request succeeds again."""
        return self._trouble.failures

    # session ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the keep-alive HTTP session (the first request does it too)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=30)
            # No cookie jar: nothing a node sets is sent anywhere; no session-level auth either.
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session (for a WebSocket subscription beside the requests)."""
        if self._session is None:
            raise RuntimeError(f"chain {self.chain}: the node client is not open")
        return self._session

    @property
    def url(self) -> str:
        """The node URL in use now, redacted."""
        return self.endpoints[self._current].shown

    def _timeout(self, total: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=self.timeout if total is None else total,
            sock_connect=self.connect_timeout,
            sock_read=self.read_timeout,
        )

    # auth ------------------------------------------------------------------------------------------

    def _read_cookie(self) -> str:
        assert self.cookie_file is not None
        try:
            text = self.cookie_file.read_text().strip()
        except OSError as exc:
            # The node writes it at start-up: missing usually means the node is not (yet) running.
            raise Retry(f"cannot read the cookie file {self.cookie_file}: {exc.strerror}") from None
        if ":" not in text:
            raise RpcAuthError(f"chain {self.chain}: the cookie file {self.cookie_file} does not hold USER:PASSWORD")
        user, _, password = text.partition(":")
        return basic_auth(user, password)

    def _auth(self, target: Endpoint) -> str | None:
        if target.fixed_auth is not None:
            return target.fixed_auth
        if self.cookie_file is None:
            return None
        if self._cookie is None:
            self._cookie = self._read_cookie()
        return self._cookie

    # one HTTP exchange -----------------------------------------------------------------------------

    async def _read(self, resp: aiohttp.ClientResponse, label: str, shown: str) -> bytes:
        """The body, refused before reading if its announced length passes the cap, else read as it comes
        (decompressed, whatever the headers said) and refused once it passes the cap.

        The pieces are kept as they arrive and joined once: one copy of a large answer (a range of
        TRON blocks is tens of MiB), not one per 64 KiB piece and another at the end.
        """
        cap = self.max_response_bytes
        if resp.content_length is not None and resp.content_length > cap:
            raise AnswerTooLarge(
                f"chain {self.chain}: {label}: {shown} announced {resp.content_length} bytes, more than "
                f"max_response_bytes = {cap}"
            )
        pieces: list[bytes] = []
        size = 0
        async for piece in resp.content.iter_any():
            size += len(piece)
            if size > cap:
                raise AnswerTooLarge(
                    f"chain {self.chain}: {label}: the answer from {shown} is longer than max_response_bytes = {cap}"
                )
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def exchange(
        self,
        method: str,
        url: str,
        shown: str,
        label: str,
        *,
        body: bytes | None,
        auth: str | None,
        timeout: float | None,
        bulk: bool = False,
    ) -> tuple[int, bytes]:
        """One request, no redirect followed: (status, body). Transport failures raise Retry. A `bulk` request
        (a raw block) waits for its slot behind the other requests waiting (`Slots`)."""
        await self.open()
        assert self._session is not None
        headers = dict(_JSON) if body is not None else {}
        for name, value in self._headers.items():
            headers[name] = value.get_secret_value()
        if auth is not None:
            headers["Authorization"] = auth
        try:
            async with (
                self._in_flight.hold(bulk=bulk),
                self._session.request(
                    method, url, data=body, headers=headers, timeout=self._timeout(timeout), allow_redirects=False
                ) as resp,
            ):
                status = resp.status
                if 300 <= status < 400:
                    error = NodeRedirect(
                        f"chain {self.chain}: {label}: {shown} answered HTTP {status} (a redirect); node clients "
                        "follow no redirects: configure the node's own URL"
                    )
                    raise Retry(str(error), error)
                raw = await self._read(resp, label, shown)
        except (aiohttp.ClientError, OSError) as exc:
            raise Retry(f"{label} to {shown} failed: {describe(exc)}") from None
        except TimeoutError:
            raise Retry(f"{label} to {shown} timed out") from None
        return status, raw

    async def post(self, target: Endpoint, body: bytes, label: str, timeout: float | None) -> Any:
        """POST a JSON-RPC body to one endpoint; the parsed answer. Raise Retry for transient trouble."""
        reread = False
        while True:
            status, raw = await self.exchange(
                "POST", target.url, target.shown, label, body=body, auth=self._auth(target), timeout=timeout
            )
            if status == 401:
                if target.fixed_auth is None and self.cookie_file is not None and not reread:
                    reread = True  # the node rewrites the cookie when it restarts: read it again
                    self._cookie = self._read_cookie()
                    continue
                how = "the cookie file" if target.fixed_auth is None and self.cookie_file else "rpc_user/rpc_password"
                if target.fixed_auth is None and self.cookie_file is None:
                    how = "no credentials were configured (rpc_user/rpc_password, cookie_file or USER:PASS@ in the URL)"
                raise RpcAuthError(f"chain {self.chain}: {target.shown} refused the credentials (HTTP 401): {how}")
            if status == 403:
                raise RpcAuthError(
                    f"chain {self.chain}: {target.shown} forbids this client (HTTP 403): check the node's "
                    "allowed clients (Bitcoin Core: rpcallowip and rpcwhitelist)"
                )
            try:
                answer = jsonutil.loads(raw) if raw else None
            except ValueError as exc:
                if status == 200 and raw.lstrip()[:1] in (b"[", b"{"):
                    raise BadNodeAnswer(f"chain {self.chain}: {label}: the answer is not JSON ({exc})") from None
                answer = None
            if not isinstance(answer, dict | list):
                text = raw[:200].decode(errors="replace").strip()
                if status >= 500 or status in _RETRIED_STATUSES:  # 503 while warming up, a full work queue
                    raise Retry(f"{label}: HTTP {status} from {target.shown}: {text or 'empty body'}")
                raise BadNodeAnswer(
                    f"chain {self.chain}: {label}: HTTP {status} from {target.shown}, not a JSON-RPC answer: "
                    f"{text or 'empty body'}"
                )
            return answer

    async def post_path(self, path: str, body: dict[str, Any], *, what: str = "", timeout: float | None = None) -> Any:
        """POST `body` as JSON to `path` under each node URL (java-tron's HTTP API); the parsed answer.

        HTTP 401/403 is `RpcAuthError` (a missing or refused API key); 408, 425, 429 and 5xx, a redirect
        or a broken connection fail over and retry like any request; another status or a body that is
        not JSON is a `BadNodeAnswer` naming the call and the node.
        """
        if not path.startswith("/") or "//" in path or "?" in path or "#" in path:
            raise ValueError(f"not an API path: {path[:100]!r}")
        label = f"{path} for {what}" if what else path
        payload = jsonutil.dumps_bytes(body)

        async def attempt(target: Endpoint) -> Any:
            status, raw = await self.exchange(
                "POST",
                target.url.rstrip("/") + path,
                target.shown,
                label,
                body=payload,
                auth=self._auth(target),
                timeout=timeout,
            )
            if status in (401, 403):
                what_key = "the API key header" if self._headers else "no API key was configured (api_key)"
                raise RpcAuthError(
                    f"chain {self.chain}: {label}: {target.shown} refused the request (HTTP {status}): {what_key}"
                )
            if status >= 500 or status in _RETRIED_STATUSES:
                text = raw[:200].decode(errors="replace").strip()
                raise Retry(f"{label}: HTTP {status} from {target.shown}: {text or 'empty body'}")
            if status != 200:
                raise BadNodeAnswer(f"chain {self.chain}: {label}: HTTP {status} from {target.shown}")
            try:
                return jsonutil.loads(raw)
            except ValueError as exc:
                raise BadNodeAnswer(
                    f"chain {self.chain}: {label}: the answer from {target.shown} is not JSON ({exc})"
                ) from None

        return await self.with_retries(attempt)

    # retries and failover --------------------------------------------------------------------------

    async def with_retries(self, attempt: Callable[[Endpoint], Awaitable[T]], *, failover: bool = True) -> T:
        """Run `attempt(endpoint)` until it succeeds, failing over and backing off on Retry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        backoff = self.backoff_initial
        tried_this_round = 0
        rounds = len(self.endpoints) if failover else 1
        while True:
            index = self._current
            target = self.endpoints[index]
            try:
                result = await attempt(target)
            except Retry as exc:
                self.switches += 1
                self._failed(exc.reason)
                if failover and rounds > 1 and self._current == index:
                    self._current = (index + 1) % rounds
                    self._log.warning("failing over", failed=target.shown, to=self.url, reason=exc.reason)
                tried_this_round += 1
                if tried_this_round < rounds:
                    continue
                tried_this_round = 0
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if exc.error is not None:
                        raise exc.error from None
                    raise NodeUnavailable(f"chain {self.chain}: {exc.reason}") from None
                await asyncio.sleep(min(remaining, backoff * (0.75 + random.random() / 2)))
                backoff = min(backoff * 2, self.backoff_max)
                continue
            self._restored()
            return result

    def _failed(self, reason: str) -> None:
        self._trouble.failed(reason, nodes=len(self.endpoints))

    def _restored(self) -> None:
        self._trouble.recovered(url=self.url)

    # JSON-RPC --------------------------------------------------------------------------------------

    def _error(self, error: Any, method: str) -> RpcError:
        if isinstance(error, dict) and isinstance(error.get("code"), int) and not isinstance(error["code"], bool):
            return rpc_error(error["code"], str(error.get("message", ""))[:500], method)
        raise BadNodeAnswer(f"chain {self.chain}: {method}: malformed JSON-RPC error {error!r:.200}")

    def _unwrap(self, envelope: dict[str, Any], method: str) -> Any:
        error = envelope.get("error")
        if error is not None:
            err = self._error(error, method)
            if err.code == WARMING_UP:
                raise Retry(f"{method}: the node is warming up: {err.message}", err)
            raise err
        if "result" not in envelope:
            raise BadNodeAnswer(f"chain {self.chain}: {method}: neither result nor error in the answer")
        return envelope["result"]

    async def call(self, method: str, *params: Any, what: str = "", timeout: float | None = None) -> Any:
        """One call; its result, or a typed RpcError for the node's error answer."""
        label = Call(method, params, what).label

        async def attempt(target: Endpoint) -> Any:
            request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            answer = await self.post(target, jsonutil.dumps_bytes(request), label, timeout)
            if not isinstance(answer, dict):
                raise BadNodeAnswer(f"chain {self.chain}: {label}: the answer is not a JSON-RPC object")
            return self._unwrap(answer, label)

        return await self.with_retries(attempt)

    async def batch_results(self, calls: Sequence[Call], *, timeout: float | None = None) -> list[Any]:
        """Several calls in one request: per call its result or its RpcError (returned, not raised).

        A batch where any call says -28 (warming up) is retried whole.
        """
        if not calls:
            return []
        label = _batch_label(calls)

        async def attempt(target: Endpoint) -> list[Any]:
            first = next(self._ids)
            for _ in range(len(calls) - 1):
                next(self._ids)
            request = [
                {"jsonrpc": "2.0", "id": first + i, "method": c.method, "params": list(c.params)}
                for i, c in enumerate(calls)
            ]
            answer = await self.post(target, jsonutil.dumps_bytes(request), label, timeout)
            if isinstance(answer, dict):  # the node refused the batch as a whole
                if answer.get("error") is not None:
                    err = self._error(answer["error"], label)
                    if err.code == WARMING_UP:
                        raise Retry(f"{label}: the node is warming up: {err.message}", err)
                    raise err
                raise BadNodeAnswer(f"chain {self.chain}: {label}: a single answer to a batch")
            by_id: dict[int, dict[str, Any]] = {}
            for envelope in answer:
                if not isinstance(envelope, dict) or not isinstance(envelope.get("id"), int):
                    raise BadNodeAnswer(f"chain {self.chain}: {label}: malformed JSON-RPC envelope {envelope!r:.200}")
                by_id[envelope["id"] - first] = envelope
            out: list[Any] = []
            for i, call in enumerate(calls):
                envelope = by_id.get(i)
                if envelope is None:
                    raise BadNodeAnswer(f"chain {self.chain}: {call.label}: no answer in the batch")
                error = envelope.get("error")
                if error is not None:
                    err = self._error(error, call.label)
                    if err.code == WARMING_UP:
                        raise Retry(f"{call.label}: the node is warming up: {err.message}", err)
                    out.append(err)
                elif "result" not in envelope:
                    raise BadNodeAnswer(f"chain {self.chain}: {call.label}: neither result nor error in the answer")
                else:
                    out.append(envelope["result"])
            return out

        return await self.with_retries(attempt)

    async def batch(self, calls: Sequence[Call], *, timeout: float | None = None) -> list[Any]:
        """Several calls in one request; the first call that failed raises its RpcError."""
        results = await self.batch_results(calls, timeout=timeout)
        for result in results:
            if isinstance(result, RpcError):
                raise result
        return results


def chain_client(
    config: ChainConfig,
    kind: str,
    *,
    user: str | None = None,
    password: str | None = None,
    headers: dict[str, SecretStr] | None = None,
) -> NodeClient:
    """The node client of a configured chain: one round over its URLs per request (the follower backs off),
    every URL in turn (failover), the configured timeouts and size cap, and the chain kind's credentials."""
    return NodeClient(
        config.rpc_urls,
        chain=config.name,
        kind=kind,
        user=user,
        password=password,
        max_in_flight=config.max_in_flight,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        request_timeout=config.request_timeout,
        max_response_bytes=config.max_response_bytes,
        retry_for=0.0,
        headers=headers,
    )


def _batch_label(calls: Sequence[Call]) -> str:
    if len(calls) == 1:
        return calls[0].label
    methods = sorted({c.method for c in calls})
    span = f" for {calls[0].what} to {calls[-1].what}" if calls[0].what else ""
    return f"batch of {len(calls)} ({', '.join(methods)}){span}"
