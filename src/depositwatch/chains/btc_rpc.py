"""Bitcoin Core's side of the node client (`chains/rpc.py`): its config, its REST interface, its amounts.

The transport (auth, cookie, failover, retries, typed errors, batches, size cap, no redirects,
timeouts) is the shared `NodeClient`; Bitcoin Core sends JSON-RPC errors with HTTP 500 or 404 to
JSON-RPC 1.0 requests and with HTTP 200 to 2.0 requests (v28 and later): the body decides, not the
status. Load: at most `max_in_flight` requests in flight (Bitcoin Core's work queue is 16 deep; keep
it at 8 or fewer). Batches are one HTTP request. REST GETs follow the same rules (size cap, no
redirect, timeouts) against `rest_url`, without failover.

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

import binascii
from decimal import Decimal
from typing import Any, Self

import structlog

from depositwatch import jsonutil
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.rpc import (
    WARMING_UP,
    AnswerTooLarge,
    Call,
    Endpoint,
    InvalidParameter,
    MethodNotFound,
    NodeClient,
    NodeRedirect,
    NotFound,
    Retry,
    RpcAuthError,
    RpcError,
    WarmingUp,
    rpc_error,
)
from depositwatch.config import ChainConfig, ConfigError, redact_url

_RESULT = b'"result":"'
# Members an envelope may hold beside its result; none of them may be an object or a list, so the
# result found first is the top-level one.
_ENVELOPE = frozenset({"result", "error", "id", "jsonrpc"})

__all__ = [
    "WARMING_UP",
    "AnswerTooLarge",
    "BitcoinRpc",
    "Call",
    "InvalidParameter",
    "MethodNotFound",
    "NodeRedirect",
    "NotFound",
    "RpcAuthError",
    "RpcError",
    "WarmingUp",
    "btc_to_sats",
    "rpc_error",
]

log = structlog.get_logger(__name__)

MAX_IN_FLIGHT_ADVISED = 8  # half of Bitcoin Core's default -rpcworkqueue


def btc_to_sats(value: Any) -> int:
    """A JSON amount in BTC (as the node writes it, at most 8 decimals) to satoshis, exactly.

    orjson reads it as a float; the float's shortest repr is the node's own decimal text for every
    amount below 21 million BTC, so going through that text is exact.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"amount {value!r} is not a number")  # noqa: TRY004 - a bad answer, not a caller's bug
    try:
        sats = Decimal(repr(value) if isinstance(value, float) else str(value)) * 100_000_000
    except ArithmeticError:  # decimal.InvalidOperation: not a number at all
        raise ValueError(f"amount {value!r} is not a number") from None
    if not sats.is_finite() or sats != sats.to_integral_value() or sats < 0:
        raise ValueError(f"amount {value!r} is not a whole number of satoshis")
    return int(sats)


class BitcoinRpc(NodeClient):
    """JSON-RPC to one or more Bitcoin Core nodes (failover in order), plus the REST interface."""

    def __init__(self, urls: list[str] | tuple[str, ...], *, rest_url: str | None = None, **options: Any) -> None:
        options.setdefault("chain", "btc")
        options.setdefault("kind", "bitcoin")
        super().__init__(urls, **options)
        self.rest_url = rest_url.rstrip("/") if rest_url else None

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
        settings: dict[str, Any] = {
            "chain": config.name,
            "user": config.rpc_user,
            "password": password,
            "cookie_file": config.cookie_file,
            "rest_url": config.rest_url,
            "max_in_flight": config.max_in_flight,
            "connect_timeout": config.connect_timeout,
            "read_timeout": config.read_timeout,
            "request_timeout": config.request_timeout,
            "max_response_bytes": config.max_response_bytes,
        }
        settings.update(options)
        return cls(config.rpc_urls, **settings)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def hex_result(self, method: str, *params: Any, timeout: float | None = None) -> bytes:
        """A call whose result is a hex string (`getblock HASH 0`), as the bytes the hex spells.

        A 1 MB block is 2 MB of hex: parsing the answer as JSON copies it into a str and `bytes.fromhex`
        reads that again. Here the hex is decoded straight out of the body (`binascii.unhexlify` over a
        view of it), and the rest of the envelope, with the result taken out, is parsed as JSON and
        checked (no error, nothing nested). Any other answer (an error, another status, an unexpected
        shape, escapes inside the string) takes the ordinary path: the same typed errors as `call`.
        A string that is not whole hex bytes is a `BadNodeAnswer`.
        """
        label = Call(method, params).label
        request = {"jsonrpc": "2.0", "id": 0, "method": method, "params": list(params)}

        async def attempt(target: Endpoint) -> bytes | None:
            request["id"] = next(self._ids)
            body = jsonutil.dumps_bytes(request)
            status, raw = await self.exchange(
                "POST", target.url, target.shown, label, body=body, auth=self._auth(target), timeout=timeout, bulk=True
            )
            return _hex_from_body(raw) if status == 200 else None

        found = await self.with_retries(attempt)
        if found is not None:
            return found
        text = await self.call(method, *params, timeout=timeout)  # the ordinary path: its errors, its checks
        if not isinstance(text, str):
            raise BadNodeAnswer(f"chain {self.chain}: {label}: answer is {type(text).__name__}, not hex")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise BadNodeAnswer(
                f"chain {self.chain}: {label}: the answer is not whole hex bytes ({len(text)} characters)"
            ) from None

    async def rest(self, path: str, *, timeout: float | None = None) -> bytes:
        """GET `rest_url` + `path` (e.g. `/rest/block/HASH.bin`): the body. 404 raises NotFound."""
        if self.rest_url is None:
            raise RuntimeError(f"chain {self.chain}: no rest_url configured")
        url = self.rest_url + path
        shown = redact_url(url)
        label = f"REST {path.split('/')[2] if path.count('/') > 2 else path}"

        async def attempt(_: Endpoint) -> bytes:
            status, raw = await self.exchange(
                "GET", url, shown, label, body=None, auth=None, timeout=timeout, bulk=True
            )
            if status == 200:
                return raw
            text = raw[:200].decode(errors="replace").strip()
            if status >= 500:  # 503 while warming up, and the work queue being full
                raise Retry(f"{label} {shown}: HTTP {status}: {text}")
            if status == 404:
                raise NotFound(-5, text or "not found", label)
            raise BadNodeAnswer(f"chain {self.chain}: {label} {shown}: HTTP {status}: {text}")

        return await self.with_retries(attempt, failover=False)


def _hex_from_body(body: bytes) -> bytes | None:
    """The bytes spelled by the hex string result of a JSON-RPC answer, read from the body without parsing
    the string; None when the body is not a plain successful answer of that shape."""
    at = body.find(_RESULT, 0, 64)  # `{"result":"` (Core 25), `{"jsonrpc":"2.0","result":"` (Core 28)
    if at < 0:
        return None
    start = at + len(_RESULT)
    end = body.find(b'"', start)  # hex has no quote: the first one closes the string (an escape is not hex)
    if end < 0:
        return None
    try:
        envelope = jsonutil.loads(body[:start] + body[end:])
    except ValueError:
        return None
    if (
        not isinstance(envelope, dict)
        or envelope.get("result") != ""
        or envelope.get("error") is not None
        or not envelope.keys() <= _ENVELOPE
        or any(isinstance(v, dict | list) for v in envelope.values())
    ):
        return None
    try:
        return binascii.unhexlify(memoryview(body)[start:end])
    except (binascii.Error, ValueError):
        return None
