"""How the node client reads an answer body: whole and exact however it arrives (announced length,
chunked, compressed, in many small pieces), and refused past `max_response_bytes` counted on what it
decompresses to, not on what the headers announce."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from depositwatch.chains.rpc import AnswerTooLarge, NodeClient

CAP = 1_048_576
# A java-tron-like answer: a list of blocks, each with hex fields (about 300 KiB in all).
ANSWER = {"block": [{"blockID": f"{n:064x}", "raw_data_hex": "ab" * 1500} for n in range(100)]}
BODY = orjson.dumps(ANSWER)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/wallet/getblockbylimitnext", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def ask(url: str) -> object:
    client = NodeClient([url], chain="tron", kind="tron", max_response_bytes=CAP, retry_for=0.0)
    try:
        return await client.post_path("/wallet/getblockbylimitnext", {"startNum": 1, "endNum": 101})
    finally:
        await client.close()


async def test_an_answer_with_its_length_announced_is_read_whole() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async with serving(handler) as url:
        assert await ask(url) == ANSWER


async def test_a_chunked_answer_in_many_small_pieces_is_read_whole_and_in_order() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for at in range(0, len(BODY), 997):
            await response.write(BODY[at : at + 997])
            if at % (997 * 50) == 0:
                await asyncio.sleep(0)  # let the pieces reach the client apart
        await response.write_eof()
        return response

    async with serving(handler) as url:
        assert await ask(url) == ANSWER


async def test_a_compressed_answer_is_read_whole() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(BODY), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    async with serving(handler) as url:
        assert await ask(url) == ANSWER


async def test_a_small_compressed_answer_that_decompresses_past_the_cap_is_refused() -> None:
    """Its announced length (the compressed one, about 20 KiB) is far under the cap: the cap holds on
    the decompressed bytes."""
    bomb = gzip.compress(b'{"block": ["' + b"0" * (20 * CAP) + b'"]}')
    assert len(bomb) < CAP // 10

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    async with serving(handler) as url:
        with pytest.raises(AnswerTooLarge, match="longer than max_response_bytes = 1048576"):
            await ask(url)


async def test_a_chunked_answer_past_the_cap_is_refused() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"block": ["')
        for _ in range(2 * CAP // 65536 + 1):
            await response.write(b"0" * 65536)
        await response.write(b'"]}')
        await response.write_eof()
        return response

    async with serving(handler) as url:
        with pytest.raises(AnswerTooLarge, match="longer than max_response_bytes"):
            await ask(url)
