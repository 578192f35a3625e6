"""The least a `TronTransport` does, for tests and benchmarks that drive a `TronSource` without the
project's node client: POST JSON to the node, parse the answer with orjson (its own depth limit)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson


class PlainTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession()

    async def call(self, path: str, body: dict[str, Any]) -> Any:
        async with self.session.post(self.url + path, data=orjson.dumps(body)) as response:
            return orjson.loads(await response.read())

    async def close(self) -> None:
        await self.session.close()
