"""A JSON-RPC client for Bitcoin Core: auth, failover, retries, typed errors, batches, REST.

What it does, after Bitcoin Core's documented behaviour:

- **Auth**: user and password (from the URL's `USER:PASS@`, or `rpc_user` + `rpc_password`), or the
  cookie file (`__cookie__:HEX`, rewritten by the node at every start). On HTTP 401 the cookie is read
  again and the request retried once with the new one; a second 401 (or a 403, the node's
  `rpcallowip`/`rpcwhitelist` refusal) raises `RpcAuthError`, which is not retried.
- **Failover and retries**: several node URLs; a request that fails for a transient reason
  (connection refused or reset, timeout, HTTP 5xx without a JSON-RPC body such as the 503 "Work
  queue depth exceeded", or error -28 "warming up") moves on to the next URL, and once every URL has
  failed in a round it sleeps a capped exponential backoff (0.25 s doubling to 4 s, with jitter) and
  goes round again, for at most `retry_for` seconds; then `NodeUnavailable` is raised with the last
  reason. While failing, the client logs at most once a minute; the first success after a failure
  logs "connection restored".
- **Typed errors**: a JSON-RPC error from the node is its real answer and is raised at once as
  `RpcError(code, message, method)`, or a subclass: `NotFound` (-5), `InvalidParameter` (-8),
  `WarmingUp` (-28, only once the retries are spent), `MethodNotFound` (-32601). Bitcoin Core sends
  them with HTTP 500 or 404 to JSON-RPC 1.0 requests and with HTTP 200 to 2.0 requests (v28 and
  later): the body decides, not the status.
- **Load**: at most `max_in_flight` requests in flight (Bitcoin Core's work queue is 16 deep; keep
  it at 8 or fewer). Batches are one HTTP request.

Why aiohttp and not the `bitcoinrpc` package (0.7, httpx-based, the listed dependency): measured on
this machine (2 cores, other work running), client and node in separate processes, medians of
interleaved runs (`python bench/btc_bench.py --only transport`, against the regtest stand-in, whose
own JSON writing is part of every figure):

| call                                     | bitcoinrpc (httpx)  | this client (aiohttp + orjson) |
| ---------------------------------------- | ------------------- | ------------------------------ |
| `getblock HASH 0`, a 992,848-byte block   | 17.0 ms (min 14.6)  | 13.1 ms (min 11.5)             |
| 100 `getblockhash` (bitcoinrpc: no batch, | 275 ms (min 153)    | 2.2 ms (min 1.6), one batch    |
|   so 100 gathered calls)                 |                     |                                |
| one `getblockhash`                       | 1.73 ms             | 0.53 ms                        |

Against a bare aiohttp server answering with a prepared body (so the client's cost alone), the
999,887-byte block 413,567 took 10.1 ms with bitcoinrpc and 7.4 ms with aiohttp; 100 `getblockhash`
416 ms against 2.0 ms. A range fetch needs batches (hundreds of hashes per step) and bitcoinrpc has
none; httpx's per-request cost is about three times aiohttp's. So the client speaks JSON-RPC over
aiohttp with orjson directly, one keep-alive session for every request; bitcoinrpc is not used.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson
import structlog

from depositwatch.chains.base import BadNodeAnswer, ChainError, NodeUnavailable
from depositwatch.config import ChainConfig, ConfigError, redact_url

log = structlog.get_logger(__name__)

REPORT_EVERY = 60.0  # seconds between two "still failing" log lines
MAX_IN_FLIGHT_ADVISED = 8  # half of Bitcoin Core's default -rpcworkqueue
_JSON = {"Content-Type": "application/json"}


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


_BY_CODE: dict[int, type[RpcError]] = {-5: NotFound, -8: InvalidParameter, -28: WarmingUp, -32601: MethodNotFound}
WARMING_UP = -28


def rpc_error(code: int, message: str, method: str) -> RpcError:
    """The typed error for a JSON-RPC error code."""
    return _BY_CODE.get(code, RpcError)(code, message, method)


class _Retry(Exception):
    """A transient failure of one endpoint: try the next one, then back off."""

    def __init__(self, reason: str, error: ChainError | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


# --- amounts -----------------------------------------------------------------------------------------


def btc_to_sats(value: Any) -> int:
    """A JSON amount in BTC (as the node writes it, at most 8 decimals) to satoshis, exactly.

    orjson reads it as a float; the float's shortest repr is the node's own decimal text for every
    amount below 21 million BTC, so going through that text is exact.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"amount {value!r} is not a number")
    try:
        sats = Decimal(repr(value) if isinstance(value, float) else str(value)) * 100_000_000
    except ArithmeticError:  # decimal.InvalidOperation: not a number at all
        raise ValueError(f"amount {value!r} is not a number") from None
    if not sats.is_finite() or sats != sats.to_integral_value() or sats < 0:
        raise ValueError(f"amount {value!r} is not a whole number of satoshis")
    return int(sats)


# --- endpoints ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Endpoint:
    url: str  # without credentials
    shown: str  # for logs and errors
    fixed_auth: str | None  # an Authorization header from the URL or rpc_user/rpc_password


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _endpoint(url: str, user: str | None, password: str | None) -> _Endpoint:
    parts = urlsplit(url)
    auth = None
    if parts.username is not None:
        auth = _basic(unquote(parts.username), unquote(parts.password or ""))
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc += f":{parts.port}"
        url = parts._replace(netloc=netloc).geturl()
    elif user is not None and password is not None:
        auth = _basic(user, password)
    return _Endpoint(url, redact_url(url), auth)


@dataclass(frozen=True, slots=True)
class Call:
    """One JSON-RPC call of a batch."""

    method: str
    params: tuple[Any, ...] = ()


# --- the client --------------------------------------------------------------------------------------


class BitcoinRpc:
    """JSON-RPC to one or more Bitcoin Core nodes (failover in order), plus the REST interface."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        chain: str = "btc",
        user: str | None = None,
        password: str | None = None,
        cookie_file: Path | None = None,
        rest_url: str | None = None,
        max_in_flight: int = 4,
        timeout: float = 60.0,
        retry_for: float = 30.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 4.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one node URL is needed")
        self.chain = chain
        self.endpoints = [_endpoint(u, user, password) for u in urls]
        self.cookie_file = cookie_file
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.timeout = timeout
        self.retry_for = retry_for
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None
        self._current = 0
        self._cookie: str | None = None
        self._ids = itertools.count(1)
        self._failing_since: float | None = None
        self._last_report = 0.0
        self._log = log.bind(chain=chain)

    @classmethod
    def from_config(cls, config: ChainConfig, **options: Any) -> BitcoinRpc:
        """A client for a configured Bitcoin chain (the password secret is read now)."""
        password = config.rpc_password.resolve().get_secret_value() if config.rpc_password is not None else None
        if password is not None and config.rpc_user is None:
            raise ConfigError(f"chain {config.name}: rpc_password is set but rpc_user is not")
        if config.max_in_flight > MAX_IN_FLIGHT_ADVISED:
            log.warning(
                "max_in_flight is above what Bitcoin Core's default RPC work queue (16) handles well",
                chain=config.name,
                max_in_flight=config.max_in_flight,
                advised=MAX_IN_FLIGHT_ADVISED,
            )
        return cls(
            config.rpc_urls,
            chain=config.name,
            user=config.rpc_user,
            password=password,
            cookie_file=config.cookie_file,
            rest_url=config.rest_url,
            max_in_flight=config.max_in_flight,
            **options,
        )

    # session ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the keep-alive HTTP session (the first request does it too)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> BitcoinRpc:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """The node URL in use now, as it may be shown (scheme, host and port)."""
        return self.endpoints[self._current].shown

    # auth ------------------------------------------------------------------------------------------

    def _read_cookie(self) -> str:
        assert self.cookie_file is not None
        try:
            text = self.cookie_file.read_text().strip()
        except OSError as exc:
            # The node writes it at start-up: missing usually means the node is not (yet) running.
            raise _Retry(f"cannot read the cookie file {self.cookie_file}: {exc.strerror}") from None
        if ":" not in text:
            raise RpcAuthError(f"chain {self.chain}: the cookie file {self.cookie_file} does not hold USER:PASSWORD")
        user, _, password = text.partition(":")
        return _basic(user, password)

    def _auth(self, endpoint: _Endpoint) -> str | None:
        if endpoint.fixed_auth is not None:
            return endpoint.fixed_auth
        if self.cookie_file is None:
            return None
        if self._cookie is None:
            self._cookie = self._read_cookie()
        return self._cookie

    # one HTTP exchange -----------------------------------------------------------------------------

    async def _post(self, endpoint: _Endpoint, body: bytes, label: str, timeout: float | None) -> Any:
        """POST to one endpoint; return the parsed JSON body. Raise _Retry for transient trouble."""
        await self.open()
        assert self._session is not None
        reread = False
        while True:
            auth = self._auth(endpoint)
            headers = dict(_JSON)
            if auth is not None:
                headers["Authorization"] = auth
            try:
                async with (
                    self._in_flight,
                    self._session.post(
                        endpoint.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                    ) as resp,
                ):
                    status = resp.status
                    raw = await resp.read()
            except (aiohttp.ClientError, OSError) as exc:
                raise _Retry(f"{label} to {endpoint.shown} failed: {_describe(exc)}") from None
            except TimeoutError:
                raise _Retry(f"{label} to {endpoint.shown} timed out after {timeout} s") from None
            if status == 401:
                if endpoint.fixed_auth is None and self.cookie_file is not None and not reread:
                    reread = True  # the node rewrites the cookie when it restarts: read it again
                    self._cookie = self._read_cookie()
                    continue
                how = "the cookie file" if endpoint.fixed_auth is None and self.cookie_file else "rpc_user/rpc_password"
                if endpoint.fixed_auth is None and self.cookie_file is None:
                    how = "no credentials were configured (rpc_user/rpc_password, cookie_file or USER:PASS@ in the URL)"
                raise RpcAuthError(f"chain {self.chain}: {endpoint.shown} refused the credentials (HTTP 401): {how}")
            if status == 403:
                raise RpcAuthError(
                    f"chain {self.chain}: {endpoint.shown} forbids this client (HTTP 403): check the node's "
                    "rpcallowip and rpcwhitelist"
                )
            try:
                answer = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                answer = None
            if answer is None or not isinstance(answer, dict | list):
                text = raw[:200].decode(errors="replace").strip()
                if status >= 500:
                    raise _Retry(f"{label}: HTTP {status} from {endpoint.shown}: {text or 'empty body'}")
                raise BadNodeAnswer(
                    f"chain {self.chain}: {label}: HTTP {status} from {endpoint.shown}, not a JSON-RPC answer: "
                    f"{text or 'empty body'}"
                )
            return answer

    # retries and failover --------------------------------------------------------------------------

    async def _with_retries(self, label: str, attempt: Any, *, failover: bool = True) -> Any:
        """Run `attempt(endpoint)` until it succeeds, failing over and backing off on _Retry."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        backoff = self.backoff_initial
        tried_this_round = 0
        rounds = len(self.endpoints) if failover else 1
        while True:
            index = self._current
            endpoint = self.endpoints[index]
            try:
                result = await attempt(endpoint)
            except _Retry as exc:
                self._failed(exc.reason)
                if failover and rounds > 1 and self._current == index:
                    self._current = (index + 1) % rounds
                    self._log.warning("failing over", failed=endpoint.shown, to=self.url, reason=exc.reason)
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
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            self._log.warning("bitcoin node trouble, retrying", reason=reason, nodes=len(self.endpoints))

    def _restored(self) -> None:
        if self._failing_since is not None:
            down_for = round(time.monotonic() - self._failing_since, 1)
            self._failing_since = None
            self._last_report = 0.0
            self._log.info("connection restored", url=self.url, down_for=down_for)

    # JSON-RPC --------------------------------------------------------------------------------------

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """One call; its result, or a typed RpcError for the node's error answer."""
        label = method
        wait = self.timeout if timeout is None else timeout

        async def attempt(endpoint: _Endpoint) -> Any:
            request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
            answer = await self._post(endpoint, orjson.dumps(request), label, wait)
            if not isinstance(answer, dict):
                raise BadNodeAnswer(f"chain {self.chain}: {label}: the answer is not a JSON-RPC object")
            return self._unwrap(answer, method)

        return await self._with_retries(label, attempt)

    def _unwrap(self, envelope: dict[str, Any], method: str) -> Any:
        error = envelope.get("error")
        if error is not None:
            err = self._error(error, method)
            if err.code == WARMING_UP:
                raise _Retry(f"{method}: the node is warming up: {err.message}", err)
            raise err
        if "result" not in envelope:
            raise BadNodeAnswer(f"chain {self.chain}: {method}: neither result nor error in the answer")
        return envelope["result"]

    def _error(self, error: Any, method: str) -> RpcError:
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            return rpc_error(error["code"], str(error.get("message", ""))[:500], method)
        raise BadNodeAnswer(f"chain {self.chain}: {method}: malformed JSON-RPC error {error!r:.200}")

    async def batch_results(self, calls: Sequence[Call], *, timeout: float | None = None) -> list[Any]:
        """Several calls in one request: per call its result or its RpcError (returned, not raised).

        A batch where any call says -28 (warming up) is retried whole.
        """
        if not calls:
            return []
        label = f"batch of {len(calls)} {calls[0].method}" + (
            "" if all(c.method == calls[0].method for c in calls) else " (mixed)"
        )
        wait = self.timeout if timeout is None else timeout

        async def attempt(endpoint: _Endpoint) -> list[Any]:
            first = next(self._ids)
            for _ in range(len(calls) - 1):
                next(self._ids)
            request = [
                {"jsonrpc": "2.0", "id": first + i, "method": c.method, "params": list(c.params)}
                for i, c in enumerate(calls)
            ]
            answer = await self._post(endpoint, orjson.dumps(request), label, wait)
            if isinstance(answer, dict):  # the node refused the batch as a whole
                if answer.get("error") is not None:
                    err = self._error(answer["error"], label)
                    if err.code == WARMING_UP:
                        raise _Retry(f"{label}: the node is warming up: {err.message}", err)
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
                    raise BadNodeAnswer(f"chain {self.chain}: {label}: no answer for call {i} ({call.method})")
                error = envelope.get("error")
                if error is not None:
                    err = self._error(error, call.method)
                    if err.code == WARMING_UP:
                        raise _Retry(f"{call.method}: the node is warming up: {err.message}", err)
                    out.append(err)
                elif "result" not in envelope:
                    raise BadNodeAnswer(f"chain {self.chain}: {call.method}: neither result nor error in the answer")
                else:
                    out.append(envelope["result"])
            return out

        result: list[Any] = await self._with_retries(label, attempt)
        return result

    async def batch(self, calls: Sequence[Call], *, timeout: float | None = None) -> list[Any]:
        """Several calls in one request; the first call that failed raises its RpcError."""
        results = await self.batch_results(calls, timeout=timeout)
        for result in results:
            if isinstance(result, RpcError):
                raise result
        return results

    # REST ------------------------------------------------------------------------------------------

    async def rest(self, path: str, *, timeout: float | None = None) -> bytes:
        """GET `rest_url` + `path` (e.g. `/rest/block/HASH.bin`): the body. 404 raises NotFound."""
        if self.rest_url is None:
            raise RuntimeError(f"chain {self.chain}: no rest_url configured")
        url = self.rest_url + path
        shown = redact_url(url)
        wait = self.timeout if timeout is None else timeout
        label = f"REST {path.split('/')[2] if path.count('/') > 2 else path}"

        async def attempt(_: _Endpoint) -> bytes:
            await self.open()
            assert self._session is not None
            try:
                async with self._in_flight, self._session.get(url, timeout=aiohttp.ClientTimeout(total=wait)) as resp:
                    status = resp.status
                    raw = await resp.read()
            except (aiohttp.ClientError, OSError) as exc:
                raise _Retry(f"{label} {shown} failed: {_describe(exc)}") from None
            except TimeoutError:
                raise _Retry(f"{label} {shown} timed out after {wait} s") from None
            if status == 200:
                return raw
            text = raw[:200].decode(errors="replace").strip()
            if status >= 500:  # 503 while warming up, and the work queue being full
                raise _Retry(f"{label} {shown}: HTTP {status}: {text}")
            if status == 404:
                raise NotFound(-5, text or "not found", label)
            raise BadNodeAnswer(f"chain {self.chain}: {label} {shown}: HTTP {status}: {text}")

        result: bytes = await self._with_retries(label, attempt, failover=False)
        return result


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
