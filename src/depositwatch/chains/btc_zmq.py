"""Bitcoin Core's ZMQ announcements for a `BitcoinSource`: new blocks wake its follower at once (and
bring their bytes, `rawblock`), mempool changes wake its mempool watcher; polling does the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from depositwatch.chains.bitcoin import BitcoinSource

log = structlog.get_logger(__name__)


async def listen_zmq(source: BitcoinSource, url: str) -> None:
    """Set the head event on `hashblock`, `rawblock` and on `sequence` block connect/disconnect
    messages; keep the bytes of the last few `rawblock`s, so the fetch of a new tip needs no
    `getblock` (they are checked as any block read: header hash, merkle root)."""
    import zmq
    import zmq.asyncio

    context = zmq.asyncio.Context()
    socket = context.socket(zmq.SUB)
    try:
        socket.connect(url)
        socket.setsockopt(zmq.SUBSCRIBE, b"hashblock")
        socket.setsockopt(zmq.SUBSCRIBE, b"rawblock")
        socket.setsockopt(zmq.SUBSCRIBE, b"sequence")
        log.info("listening for ZMQ block announcements", chain=source.name, url=url)
        while True:
            parts = await socket.recv_multipart()
            if len(parts) < 2:
                continue
            topic, body = parts[0], parts[1]
            if topic == b"rawblock":
                source._keep_announced(body)
                source._head.set()
            elif topic == b"hashblock" or (topic == b"sequence" and body[32:33] in (b"C", b"D")):
                source._head.set()
            elif topic == b"sequence" and body[32:33] in (b"A", b"R"):
                source.mempool_changed.set()
    except zmq.ZMQError as exc:
        log.warning("ZMQ listener stopped: polling only", chain=source.name, url=url, error=str(exc))
    finally:
        socket.close(linger=0)
        context.term()
