"""The Bitcoin Core JSON-RPC client against small scripted HTTP servers: every answer shape Core gives.

Bitcoin Core answers a JSON-RPC 1.0 error with HTTP 500 (404 for an unknown method), a 2.0 error with
HTTP 200, a bad password with an empty 401, a full work queue with a plain-text 503; the REST
interface answers 404 for an unknown block and 503 while warming up.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web

from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable
from depositwatch.chains.btc_rpc import (
    BitcoinRpc,
    Call,
    InvalidParameter,
    MethodNotFound,
    NotFound,
    RpcAuthError,
    RpcError,
    WarmingUp,
    btc_to_sats,
)
from depositwatch.config import ChainConfig, Secret, redact_url
from tests.util import serve as serve_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Scripted:
    """An HTTP server on 127.0.0.1 whose handler the test sets; it counts requests and concurrency."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        self.active = 0
        self.peak = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self.handler(request)
        finally:
            self.active -= 1

    async def start(self) -> Scripted:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner, port = await serve_app(app)
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Scripted]]]:
    servers: list[Scripted] = []

    async def start(handler: Handler) -> Scripted:
        server = await Scripted(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def envelope(request_body: Any, result: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"result": result, "error": error, "id": request_body.get("id")}


def answer(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def fast(urls: list[str], **options: Any) -> BitcoinRpc:
    options.setdefault("retry_for", 1.0)
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.05)
    return BitcoinRpc(urls, chain="t", **options)


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


async def test_call_sends_basic_auth_from_config_or_url(serve: Any) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        body = await request.json()
        assert body["jsonrpc"] == "2.0" and body["method"] == "getblockcount" and body["params"] == []
        return answer(envelope(body, 42))

    server = await serve(handler)
    async with fast([server.url], user="alice", password="s3cret") as rpc:
        assert await rpc.call("getblockcount") == 42
    with_url = server.url.replace("http://", "http://bob:p%40ss@")
    async with fast([with_url]) as rpc:
        assert await rpc.call("getblockcount") == 42
        assert "p%40ss" not in rpc.url
    assert seen == [
        "Basic " + base64.b64encode(b"alice:s3cret").decode(),
        "Basic " + base64.b64encode(b"bob:p@ss").decode(),
    ]


async def test_from_config_reads_the_password_secret(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"u:pw").decode()
        return answer(envelope(await request.json(), "ok"))

    server = await serve(handler)
    config = ChainConfig(
        name="btc",
        kind="bitcoin",
        network="regtest",
        rpc_urls=[server.url],
        rpc_user="u",
        rpc_password=Secret(value="pw"),
        max_in_flight=2,
    )
    async with BitcoinRpc.from_config(config) as rpc:
        assert await rpc.call("x") == "ok"


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (-5, 500, NotFound),
        (-8, 500, InvalidParameter),
        (-32601, 404, MethodNotFound),
        (-1, 500, RpcError),
        (-5, 200, NotFound),  # JSON-RPC 2.0 requests get HTTP 200 from Core 28 and later
    ],
)
async def test_node_errors_are_typed_and_not_retried(serve: Any, code: int, status: int, kind: type) -> None:
    async def handler(request: web.Request) -> web.Response:
        return answer(envelope(await request.json(), None, {"code": code, "message": "nope"}), status)

    server = await serve(handler)
    async with fast([server.url]) as rpc:
        with pytest.raises(kind) as caught:
            await rpc.call("getblock", "00" * 32, 0)
    error = caught.value
    assert type(error) is kind and isinstance(error, RpcError)
    assert (error.code, error.message, error.method) == (code, "nope", "getblock")
    assert "getblock" in str(error) and str(code) in str(error)
    assert server.requests == 1


async def test_warming_up_is_retried_then_works(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        if server.requests <= 3:
            return answer(envelope(body, None, {"code": -28, "message": "Loading block index…"}), 500)
        return answer(envelope(body, 7))

    server = await serve(handler)
    async with fast([server.url]) as rpc:
        assert await rpc.call("getblockcount") == 7
    assert server.requests == 4


async def test_warming_up_for_too_long_raises_warming_up(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return answer(envelope(await request.json(), None, {"code": -28, "message": "Verifying blocks…"}), 500)

    server = await serve(handler)
    async with fast([server.url], retry_for=0.2) as rpc:
        with pytest.raises(WarmingUp) as caught:
            await rpc.call("getblockcount")
    assert isinstance(caught.value, NodeUnavailable)  # the follower backs off and tries again
    assert server.requests > 2


@pytest.mark.parametrize(("status", "text"), [(503, b"Work queue depth exceeded"), (502, b""), (500, b"oops")])
async def test_http_5xx_without_a_json_rpc_body_is_retried(serve: Any, status: int, text: bytes) -> None:
    async def handler(request: web.Request) -> web.Response:
        if server.requests == 1:
            return web.Response(status=status, body=text)
        return answer(envelope(await request.json(), "fine"))

    server = await serve(handler)
    async with fast([server.url]) as rpc:
        assert await rpc.call("x") == "fine"
    assert server.requests == 2


async def test_node_down_raises_node_unavailable_logs_once_and_reports_restored(serve: Any) -> None:
    url = closed_port_url()
    with structlog.testing.capture_logs() as logs:
        async with fast([url], retry_for=0.3) as rpc:
            with pytest.raises(NodeUnavailable) as caught:
                await rpc.call("getblockcount")
            assert "127.0.0.1" in str(caught.value)
            with pytest.raises(NodeUnavailable):
                await rpc.call("getblockcount")
    trouble = [e for e in logs if e["event"] == "bitcoin node trouble, retrying"]
    assert len(trouble) == 1  # at most once a minute, however many attempts


async def test_connection_restored_is_logged_when_the_node_comes_back(serve: Any) -> None:
    up = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if not up.is_set():
            return web.Response(status=503, body=b"")
        return answer(envelope(await request.json(), 1))

    server = await serve(handler)
    with structlog.testing.capture_logs() as logs:
        async with fast([server.url], retry_for=5.0) as rpc:
            call = asyncio.ensure_future(rpc.call("getblockcount"))
            await asyncio.sleep(0.2)
            assert not call.done()
            up.set()
            assert await call == 1
    events = [e["event"] for e in logs]
    assert events.count("bitcoin node trouble, retrying") == 1
    assert "connection restored" in events


async def test_failover_to_the_second_url(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return answer(envelope(await request.json(), "second"))

    server = await serve(handler)
    async with fast([closed_port_url(), server.url]) as rpc:
        assert await rpc.call("x") == "second"
        assert rpc.url == redact_url(server.url)  # it stays on the node that works
        assert await rpc.call("x") == "second"
    assert server.requests == 2


async def test_bad_credentials_raise_a_clear_error(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})

    server = await serve(handler)
    async with fast([server.url], user="u", password="wrong") as rpc:
        with pytest.raises(RpcAuthError, match=r"refused the credentials.*rpc_user/rpc_password"):
            await rpc.call("x")
    assert server.requests == 1

    async def forbidden(request: web.Request) -> web.Response:
        return web.Response(status=403)

    other = await serve(forbidden)
    async with fast([other.url], user="u", password="p") as rpc:
        with pytest.raises(RpcAuthError, match="rpcallowip"):
            await rpc.call("x")


async def test_cookie_is_read_again_after_a_node_restart(serve: Any, tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:first")
    accepted = {"first"}

    async def handler(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        if user != "__cookie__" or password not in accepted:
            return web.Response(status=401)
        return answer(envelope(await request.json(), password))

    server = await serve(handler)
    async with fast([server.url], cookie_file=cookie) as rpc:
        assert await rpc.call("x") == "first"
        cookie.write_text("__cookie__:second\n")  # the node restarted and wrote a new cookie
        accepted.clear()
        accepted.add("second")
        assert await rpc.call("x") == "second"
        cookie.write_text("__cookie__:stale")
        accepted.clear()
        accepted.add("third")
        with pytest.raises(RpcAuthError, match="cookie file"):
            await rpc.call("x")


async def test_missing_cookie_file_is_node_unavailable(tmp_path: Path, serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        return answer(envelope(await request.json(), 1))

    server = await serve(handler)
    async with fast([server.url], cookie_file=tmp_path / "missing", retry_for=0.1) as rpc:
        with pytest.raises(NodeUnavailable, match="cookie file"):
            await rpc.call("x")


async def test_batches_keep_order_and_return_per_call_errors(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        out = []
        for item in reversed(body):  # any order: the client matches ids
            height = item["params"][0]
            if height > 2:
                out.append(envelope(item, None, {"code": -8, "message": "Block height out of range"}))
            else:
                out.append(envelope(item, f"{height:064x}"))
        return answer(out)

    server = await serve(handler)
    async with fast([server.url]) as rpc:
        results = await rpc.batch_results([Call("getblockhash", (h,)) for h in range(5)])
        assert results[:3] == [f"{h:064x}" for h in range(3)]
        assert all(isinstance(r, InvalidParameter) for r in results[3:])
        with pytest.raises(InvalidParameter):
            await rpc.batch([Call("getblockhash", (h,)) for h in range(5)])
        assert await rpc.batch([]) == []
    assert server.requests == 2


async def test_a_batch_with_a_warming_up_call_is_retried(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        if server.requests == 1:
            return answer([envelope(item, None, {"code": -28, "message": "Loading"}) for item in body])
        return answer([envelope(item, item["params"][0]) for item in body])

    server = await serve(handler)
    async with fast([server.url]) as rpc:
        assert await rpc.batch([Call("echo", (i,)) for i in range(3)]) == [0, 1, 2]


async def test_at_most_max_in_flight_requests(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return answer(envelope(await request.json(), 1))

    server = await serve(handler)
    async with fast([server.url], max_in_flight=3) as rpc:
        await asyncio.gather(*(rpc.call("x") for _ in range(20)))
    assert server.peak == 3


@pytest.mark.parametrize(
    "body",
    [b"<html>proxy error</html>", b'{"id": 1}', b'"just a string"', b'{"error": "text", "id": 1}'],
)
async def test_hostile_answers_are_bad_node_answers(serve: Any, body: bytes) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200, body=body)

    server = await serve(handler)
    async with fast([server.url]) as rpc:
        with pytest.raises(BadNodeAnswer, match="getbestblockhash"):
            await rpc.call("getbestblockhash")


async def test_rest_gets_bytes_retries_503_and_maps_404(serve: Any) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/ff.bin"):
            return web.Response(status=404, text="ff not found")
        if server.requests == 1:
            return web.Response(status=503, text="Service temporarily unavailable: Loading block index…")
        return web.Response(body=b"\x01\x02" + request.path.encode())

    server = await serve(handler)
    async with fast([closed_port_url()], rest_url=server.url.rstrip("/")) as rpc:
        assert await rpc.rest("/rest/block/aa.bin") == b"\x01\x02/rest/block/aa.bin"
        with pytest.raises(NotFound, match="ff not found"):
            await rpc.rest("/rest/block/ff.bin")


def test_btc_amounts_convert_to_satoshis_exactly() -> None:
    assert btc_to_sats(0.1) == 10_000_000
    assert btc_to_sats(20999999.9769) == 2_099_999_997_690_000
    assert btc_to_sats(0.00000001) == 1
    assert btc_to_sats(1) == 100_000_000
    assert btc_to_sats(Decimal("12.34567891")) == 1_234_567_891
    for bad in (0.000000001, -1.0, True, "x", None):
        with pytest.raises(ValueError):
            btc_to_sats(bad)
    # every amount with 8 decimals survives orjson's float: a sweep of awkward ones
    for sats in (1, 7, 10_000_001, 123_456_789, 2_099_999_997_690_000, 69_999_999, 100_000_003):
        assert btc_to_sats(orjson.loads(f"{Decimal(sats).scaleb(-8):f}")) == sats
