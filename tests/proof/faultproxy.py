"""An HTTP proxy on loopback that injects faults between a client and the server behind it.

It sits between the daemon and a node (JSON-RPC, single calls and batches; Basic auth is passed on)
or between the dispatcher and a webhook receiver. With no fault set it forwards every request as it
is. `set(Fault(...))` switches a fault on for the requests it selects (by JSON-RPC method, or all of
them); `clear()` switches it off again and lets every request it holds go.

Faults:

- `hang`: hold the request until the fault is cleared, then drop the connection unanswered;
- `reset`: close the connection at once with a TCP reset;
- `status`: answer an HTTP status (502, 503, 429 with `Retry-After`, ...) with an HTML body;
- `cut`: send the upstream answer's headers with its full length, half of its body, then close;
- `truncate`: a complete HTTP answer whose body is the first half of the upstream JSON;
- `invalid_json`: a 200 answer whose body is not JSON;
- `batch_error`: forward, then replace one call's answer in a JSON-RPC batch with a JSON-RPC error;
- `behind`: act as a node `lag` blocks behind the real one: `eth_blockNumber` and `latest` lower,
  blocks and receipts above that height null, `eth_getLogs` clamped;
- `chain_id`: answer `eth_chainId` with another chain id;
- `answer`: answer the selected calls with `result` (say, null for `eth_getBlockByNumber`);
- `pad`: forward, then pad the JSON answer to `factor` times its size (whitespace and an extra key);
- `delay`: forward after `seconds` (a slow node or receiver);
- `forward_then_fail`: forward (the server handles the request), then answer the client `status`;
- `deep`: a 200 answer that is an array nested `depth` levels deep (a stack-overflow attempt);
- `endless`: a 200 answer streamed without a length that never ends (until the client hangs up);
  `sent` counts the bytes written;
- `redirect`: answer `status` (307 by default for it) with `Location: location`.

`hold(methods)` arms a one-shot trap instead: the next request naming one of `methods` is held until
`release()`, and the returned event is set when it arrives (to kill a client in the middle of a
fetch).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.util import serve

# Lower case: looked up case-insensitively. The webhook-* headers carry the Standard Webhooks signature.
_PASSED_HEADERS = frozenset(
    {"authorization", "content-type", "idempotency-key", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
_SKIPPED_ANSWER_HEADERS = {"content-length", "transfer-encoding", "content-encoding", "connection", "date", "server"}
_TAGS = {"latest", "pending", "safe", "finalized"}


@dataclass
class Fault:
    """A fault and the requests it applies to (`methods`: JSON-RPC method names; None: every request)."""

    kind: str
    methods: frozenset[str] | None = None
    status: int = 503
    retry_after: str | None = None
    lag: int = 5
    height: int | None = None  # `behind`: the lagging node's height, fixed when the fault starts
    chain_id: int = 1
    factor: int = 100
    result: Any = None  # `answer`: the result given to the selected calls
    seconds: float = 0.0
    probability: float = 1.0  # the share of selected requests that get the fault
    note: str = ""
    depth: int = 100_000  # `deep`
    location: str = ""  # `redirect`

    def selects(self, methods: list[str]) -> bool:
        """Whether a request naming `methods` is one this fault applies to."""
        return self.methods is None or any(m in self.methods for m in methods)


@dataclass
class _Trap:
    methods: frozenset[str]
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)


def request_methods(body: bytes) -> list[str]:
    """The JSON-RPC methods a request body names (empty for other bodies)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return []
    calls = data if isinstance(data, list) else [data]
    return [c["method"] for c in calls if isinstance(c, dict) and isinstance(c.get("method"), str)]


class FaultProxy:
    """`async with FaultProxy(upstream) as proxy:` then point the client at `proxy.url`."""

    def __init__(self, upstream: str, *, rng: Any = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self.fault: Fault | None = None
        self.applied: Counter[str] = Counter()  # fault kind -> requests it was applied to
        self.requests = 0
        self.methods_seen: Counter[str] = Counter()
        self.in_flight = 0
        self.sent = 0  # bytes written by `endless`
        self._rng = rng
        self._cleared = asyncio.Event()
        self._trap: _Trap | None = None
        self._holding: _Trap | None = None  # the trap whose request is being held
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """Where the client should send."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        """Listen on a free loopback port (the same port again after a stop)."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=120), auto_decompress=False
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.port = await serve(app, self.port)
        return self

    async def stop(self) -> None:
        """Stop listening, let held requests go, close the upstream session."""
        self.clear()
        self.release()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # switching faults -------------------------------------------------------------------------------

    def set(self, fault: Fault) -> None:
        """Switch `fault` on (replacing any other)."""
        self._cleared.set()  # requests held by an earlier hang go
        self._cleared = asyncio.Event()
        self.fault = fault

    def clear(self) -> None:
        """Switch faults off; requests held by `hang` are dropped."""
        self.fault = None
        self._cleared.set()

    def hold(self, methods: Iterable[str]) -> asyncio.Event:
        """Hold the next request naming one of `methods` until `release()`; the event is set when it comes."""
        self._trap = _Trap(frozenset(methods))
        return self._trap.arrived

    def release(self) -> None:
        """Let a held request go on (or, before one has come, disarm the trap)."""
        for trap in (self._trap, self._holding):
            if trap is not None:
                trap.released.set()
        self._trap = self._holding = None

    # the proxy ----------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        methods = request_methods(body)
        self.requests += 1
        self.methods_seen.update(methods)
        self.in_flight += 1
        try:
            trap = self._trap
            if trap is not None and any(m in trap.methods for m in methods):
                self._trap, self._holding = None, trap
                trap.arrived.set()
                await trap.released.wait()
            fault = self.fault
            if fault is not None and fault.selects(methods) and self._chance(fault.probability):
                self.applied[fault.kind] += 1
                return await self._faulty(request, body, fault)
            status, headers, answer = await self._forward(request, body)
            return self._answer(status, headers, answer)
        finally:
            self.in_flight -= 1

    def _chance(self, probability: float) -> bool:
        if probability >= 1.0:
            return True
        if self._rng is None:
            import random

            return random.random() < probability
        return bool(self._rng.random() < probability)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED_HEADERS}
        url = self.upstream + request.rel_url.path_qs
        async with self._session.request(request.method, url, data=body, headers=headers) as resp:
            answer = await resp.read()
            kept = {k: v for k, v in resp.headers.items() if k.lower() not in _SKIPPED_ANSWER_HEADERS}
            return resp.status, kept, answer

    @staticmethod
    def _answer(status: int, headers: dict[str, str], body: bytes) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    async def _faulty(self, request: web.Request, body: bytes, fault: Fault) -> web.StreamResponse:
        kind = fault.kind
        if kind == "hang":
            await self._cleared.wait()
            _reset(request)
            return web.Response(status=504)
        if kind == "reset":
            _reset(request)
            return web.Response(status=502)
        if kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            html = f"<html><body><h1>{fault.status}</h1>upstream trouble</body></html>"
            return web.Response(status=fault.status, text=html, content_type="text/html", headers=headers)
        if kind == "deep":
            deep = b"[" * fault.depth + b"]" * fault.depth
            return web.Response(status=200, body=deep, content_type="application/json")
        if kind == "endless":
            return await self._endless(request)
        if kind == "redirect":
            return web.Response(status=fault.status, headers={"Location": fault.location})
        if kind == "invalid_json":
            return web.Response(status=200, body=b"<html>not json {", content_type="application/json")
        if kind == "delay":
            await asyncio.sleep(fault.seconds)
            status, headers, answer = await self._forward(request, body)
            return self._answer(status, headers, answer)
        if kind == "forward_then_fail":
            await self._forward(request, body)
            return web.Response(status=fault.status, text="stored, but the answer is lost")
        if kind == "behind":
            return await self._behind(request, body, fault)
        if kind == "chain_id":
            return await self._rewrite(request, body, {"eth_chainId": hex(fault.chain_id)})
        if kind == "answer":
            assert fault.methods is not None, "name the methods `answer` answers"
            return await self._rewrite(request, body, dict.fromkeys(fault.methods, fault.result))
        status, headers, answer = await self._forward(request, body)
        if kind == "cut":
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = len(answer)
            await response.prepare(request)
            await response.write(answer[: len(answer) // 2])
            _reset(request)
            return response
        if kind == "truncate":
            return self._answer(status, headers, answer[: max(1, len(answer) // 2)])
        if kind == "batch_error":
            return self._answer(status, headers, _error_in_batch(answer, body, fault))
        if kind == "pad":
            return self._answer(status, headers, _pad(answer, fault.factor))
        raise ValueError(f"unknown fault {kind!r}")

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"[" + b" " * 65_535
        with contextlib.suppress(ConnectionError, RuntimeError):
            while self.sent < 2**32:  # a bound, so a client that never hangs up cannot keep this forever
                await response.write(chunk)
                self.sent += len(chunk)
        return response

    async def _rewrite(self, request: web.Request, body: bytes, fixed: dict[str, Any]) -> web.Response:
        """Answer the calls named in `fixed` locally, forward the others; keep single/batch shape."""
        data = orjson.loads(body)
        calls = data if isinstance(data, list) else [data]
        local = {i: fixed[c["method"]] for i, c in enumerate(calls) if c.get("method") in fixed}
        return await self._mixed(request, data, calls, local)

    async def _behind(self, request: web.Request, body: bytes, fault: Fault) -> web.Response:
        assert fault.height is not None, "set Fault.height for `behind`"
        height = fault.height
        data = orjson.loads(body)
        calls = data if isinstance(data, list) else [data]
        local: dict[int, Any] = {}
        for i, call in enumerate(calls):
            method, params = call.get("method"), list(call.get("params") or [])
            if method == "eth_blockNumber":
                local[i] = hex(height)
            elif method in ("eth_getBlockByNumber", "eth_getBlockReceipts", "debug_traceBlockByNumber") and params:
                tag = params[0]
                if tag in _TAGS:
                    params[0] = hex(height)
                elif isinstance(tag, str) and tag.startswith("0x") and int(tag, 16) > height:
                    local[i] = None
                call["params"] = params
            elif method == "eth_getLogs" and params and isinstance(params[0], dict):
                span = dict(params[0])
                low = int(span.get("fromBlock", "0x0"), 16)
                if low > height:
                    local[i] = []
                else:
                    high = span.get("toBlock", "latest")
                    if high in _TAGS or int(high, 16) > height:
                        span["toBlock"] = hex(height)
                    call["params"] = [span, *params[1:]]
        return await self._mixed(request, data, calls, local)

    async def _mixed(
        self, request: web.Request, data: Any, calls: list[dict[str, Any]], local: dict[int, Any]
    ) -> web.Response:
        forwarded = [c for i, c in enumerate(calls) if i not in local]
        answers: dict[Any, Any] = {}
        status = 200
        if forwarded:
            payload = orjson.dumps(forwarded if isinstance(data, list) else forwarded[0])
            status, _, raw = await self._forward(request, payload)
            if status != 200:
                return web.Response(status=status, body=raw)
            got = orjson.loads(raw)
            for envelope in got if isinstance(got, list) else [got]:
                answers[envelope.get("id")] = envelope
        out = []
        for i, call in enumerate(calls):
            if i in local:
                out.append({"jsonrpc": "2.0", "id": call.get("id"), "result": local[i]})
            else:
                out.append(answers[call.get("id")])
        result = out if isinstance(data, list) else out[0]
        return web.Response(status=status, body=orjson.dumps(result), content_type="application/json")


def _reset(request: web.Request) -> None:
    """Drop the client's connection with a TCP reset (SO_LINGER 0)."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _error_in_batch(answer: bytes, body: bytes, fault: Fault) -> bytes:
    """Replace the answer to one selected call of a batch with a JSON-RPC error."""
    try:
        envelopes = orjson.loads(answer)
        calls = orjson.loads(body)
    except orjson.JSONDecodeError:
        return answer
    if not isinstance(envelopes, list) or not isinstance(calls, list):
        calls, envelopes = [calls], [envelopes]
    methods = {c.get("id"): c.get("method") for c in calls if isinstance(c, dict)}
    chosen = [
        i
        for i, e in enumerate(envelopes)
        if isinstance(e, dict) and (fault.methods is None or methods.get(e.get("id")) in fault.methods)
    ]
    if not chosen:
        return answer
    i = chosen[len(chosen) // 2]
    envelopes[i] = {
        "jsonrpc": "2.0",
        "id": envelopes[i].get("id"),
        "error": {"code": -32000, "message": "header not found (injected)"},
    }
    result = envelopes if isinstance(orjson.loads(answer), list) else envelopes[0]
    return orjson.dumps(result)


def _pad(answer: bytes, factor: int) -> bytes:
    """The same JSON, `factor` times larger: an unknown key in every envelope, and whitespace."""
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return answer
    target = max(len(answer) * factor, 1024)
    envelopes = data if isinstance(data, list) else [data]
    share = max(1, target // (2 * max(1, len(envelopes))))
    for envelope in envelopes:
        if isinstance(envelope, dict):
            envelope["x-padding"] = "z" * share
    text = orjson.dumps(data)
    spaces = max(0, target - len(text))
    return b" " * (spaces // 2) + text + b"\n" * (spaces - spaces // 2)
