"""New heads of an EVM chain: a WebSocket `newHeads` subscription where `ws_url` is set, kept up across
drops with backoff, else polling every `poll_interval`. The source's `wait_for_head` is `wait_for_head`
here; `follow_heads` is the task `EvmSource.open` starts and `close` stops.

While the subscription is live a head wakes the waiter at once; while it is down (or not yet up) the
waiter wakes at least every `poll_interval`, so the follower polls meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import aiohttp
import orjson
import structlog

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.rpc import describe
from depositwatch.config import redact_url

if TYPE_CHECKING:
    from depositwatch.chains.evm import EvmSource

log = structlog.get_logger(__name__)


async def wait_for_head(source: EvmSource, timeout: float) -> None:
    """Return when a new head arrives over WebSocket, or after `timeout` (polling without one)."""
    if source._ws_task is None:
        await asyncio.sleep(min(timeout, source.config.poll_interval))
        return
    wait = timeout if source._ws_live else min(timeout, source.config.poll_interval)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(source._head.wait(), wait)
    source._head.clear()


async def follow_heads(source: EvmSource) -> None:
    """Keep a `newHeads` subscription; after a drop, reconnect and subscribe again, with backoff."""
    assert source.ws_url is not None
    shown = redact_url(source.ws_url)
    backoff = 1.0
    while True:
        try:
            async with source.client.session.ws_connect(
                source.ws_url, heartbeat=30.0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
            ) as ws:
                request_id = next(source._ids)
                await ws.send_bytes(
                    orjson.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": request_id,
                            "method": "eth_subscribe",
                            "params": ["newHeads"],
                        }
                    )
                )
                subscribed = False
                async for message in ws:
                    if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        break
                    data = orjson.loads(message.data)
                    if not isinstance(data, dict):
                        continue
                    if not subscribed and data.get("id") == request_id:
                        if data.get("error") is not None or not isinstance(data.get("result"), str):
                            raise BadNodeAnswer(f"eth_subscribe newHeads refused: {data.get('error')!r}")
                        subscribed = True
                        source._ws_live = True
                        backoff = 1.0
                        log.info("subscribed to new heads", chain=source.name, url=shown)
                        source._head.set()  # heads may have come while not subscribed
                    elif data.get("method") == "eth_subscription":
                        source._head.set()
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, BadNodeAnswer) as exc:
            log.warning("new-heads subscription lost", chain=source.name, url=shown, error=describe(exc))
        finally:
            source._ws_live = False
        source._head.set()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
