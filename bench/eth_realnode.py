"""A cheap Ethereum JSON-RPC node serving renumbered, relinked copies of real mainnet block 17,173,049.

    python bench/eth_realnode.py --blocks 100000 [--port 8545]

Block N (0 <= N <= tip) is the real block's 116 transactions, their receipts and 271 logs (from
`../shared/realdata/eth/mainnet_17173049`, see its README) with the block number, the block hash, the
parent hash (the hash of block N-1: the copies form one chain), the timestamp and the transaction hashes
rewritten for N (a transaction hash keeps its last 48 hex digits and takes N in its first 16, so no two
blocks share a transaction). Answers are made from bytes encoded once at start-up (a few `bytes.replace`
per block), so the node costs little and the client is the limit.

Methods: `eth_chainId` (1, mainnet: the ad-hoc replay then watches USDT and USDC), `eth_blockNumber`,
`eth_getBlockByNumber` (hashes or full transactions), `eth_getBlockReceipts`, `eth_getLogs` over a range
(filtered by address and by topic position the way a node does: a string, an OR-list or null), and
JSON-RPC batches of them. Anything else answers "method not found".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

if __package__ in (None, ""):  # run as `python bench/eth_realnode.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.recorded_rpc import etl_block

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "eth" / "mainnet_17173049"
MAINNET_BLOCK = 17_173_049
BLOCK_SECONDS = 12
FIRST_TIME = 1_600_000_000

# Placeholders inside the encoded templates (never valid hex, so they cannot occur in real data).
_NUMBER = b'"@N@"'
_HASH = b'"@H@"'
_PARENT = b'"@P@"'
_TIME = b'"@S@"'
_TX = b"@T@"


def block_hash(height: int) -> str:
    """The hash of copy `height` (32 bytes of hex; the height in the last 8 bytes)."""
    return "0x" + "b1" * 24 + f"{height:016x}" if height >= 0 else "0x" + "00" * 32


def tx_hash(original: str, height: int) -> str:
    """Transaction `original`'s hash in copy `height`."""
    return "0x" + f"{height:016x}" + original[18:]


def _relinked_tx(original: str) -> str:
    return "0x@T@" + original[18:]


@dataclass
class RealBlock:
    """The real block as JSON-RPC objects, with placeholders where copies differ."""

    block: dict[str, Any]
    receipts: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    transfers_to: list[str] = field(default_factory=list)  # token recipients, in log order


def load_block(folder: Path = REALDATA) -> RealBlock:
    """Block 17,173,049 rebuilt in the node's JSON-RPC shape from ethereum-etl's export files (the tests'
    `etl_block`), with placeholders for what each copy rewrites, and made-up signature fields, mix hash
    and receipt blooms (the export has none of them)."""
    block, receipts, logs = etl_block(folder)
    common = {"blockHash": "@H@", "blockNumber": "@N@"}
    for entry in logs:
        entry.update(common, transactionHash=_relinked_tx(entry["transactionHash"]))
    signature = {"chainId": "0x1", "v": "0x1", "r": "0x" + "11" * 32, "s": "0x" + "22" * 32}
    for tx in block["transactions"]:
        tx.update(common, hash=_relinked_tx(tx["hash"]), **signature)
    for receipt in receipts:  # their logs are the entries above
        receipt.update(common, transactionHash=_relinked_tx(receipt["transactionHash"]), logsBloom=block["logsBloom"])
    block.update(number="@N@", hash="@H@", parentHash="@P@", timestamp="@S@", mixHash="0x" + "33" * 32)
    transfer_topic = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    recipients = [
        "0x" + entry["topics"][2][26:]
        for entry in logs
        if len(entry["topics"]) == 3 and entry["topics"][0] == transfer_topic and len(entry["data"]) == 66
    ]
    return RealBlock(block, receipts, logs, recipients)


def _fill(template: bytes, height: int) -> bytes:
    return (
        template.replace(_NUMBER, b'"%s"' % hex(height).encode())
        .replace(_HASH, b'"%s"' % block_hash(height).encode())
        .replace(_PARENT, b'"%s"' % block_hash(height - 1).encode())
        .replace(_TIME, b'"%s"' % hex(FIRST_TIME + BLOCK_SECONDS * height).encode())
        .replace(_TX, b"%016x" % height)
    )


def _topic_matches(wanted: Any, topic: str | None) -> bool:
    if wanted is None:
        return True
    if topic is None:
        return False
    if isinstance(wanted, str):
        return wanted.lower() == topic
    return any(isinstance(w, str) and w.lower() == topic for w in wanted)


class RealNode:
    """Answers JSON-RPC for blocks 0..tip, each a relinked copy of the real block."""

    def __init__(self, tip: int, real: RealBlock | None = None) -> None:
        self.tip = tip
        self.real = real or load_block()
        block = self.real.block
        self._full = orjson.dumps(block)
        self._header = orjson.dumps({**block, "transactions": [tx["hash"] for tx in block["transactions"]]})
        self._receipts = orjson.dumps(self.real.receipts)
        self._logs = [orjson.dumps(entry) for entry in self.real.logs]
        self._log_keys = [(entry["address"].lower(), [t.lower() for t in entry["topics"]]) for entry in self.real.logs]
        self._log_templates: dict[bytes, bytes] = {}
        self.requests = 0

    def _height(self, tag: Any) -> int:
        if tag in ("latest", "safe", "finalized", "pending"):
            return self.tip
        if not isinstance(tag, str) or not tag.startswith("0x"):
            raise ValueError(f"bad block tag {tag!r}")
        return int(tag, 16)

    def _log_template(self, query: dict[str, Any]) -> bytes:
        """The block's logs that pass the query's address and topic filters, as one encoded list body."""
        key = orjson.dumps(
            {"address": query.get("address"), "topics": query.get("topics")}, option=orjson.OPT_SORT_KEYS
        )
        found = self._log_templates.get(key)
        if found is None:
            addresses = query.get("address")
            if isinstance(addresses, str):
                addresses = [addresses]
            wanted = {a.lower() for a in addresses} if addresses else None
            topics = query.get("topics") or []
            chosen = []
            for encoded, (address, log_topics) in zip(self._logs, self._log_keys, strict=True):
                if wanted is not None and address not in wanted:
                    continue
                if all(_topic_matches(t, log_topics[i] if i < len(log_topics) else None) for i, t in enumerate(topics)):
                    chosen.append(encoded)
            found = self._log_templates[key] = b",".join(chosen)
        return found

    def answer(self, method: str, params: Sequence[Any]) -> bytes:
        """The encoded `result` of one call; raises LookupError for an unknown method."""
        if method == "eth_chainId":
            return b'"0x1"'
        if method == "eth_blockNumber":
            return b'"%s"' % hex(self.tip).encode()
        if method == "eth_getBlockByNumber":
            height = self._height(params[0])
            if not 0 <= height <= self.tip:
                return b"null"
            return _fill(self._full if params[1] else self._header, height)
        if method == "eth_getBlockReceipts":
            height = self._height(params[0])
            return _fill(self._receipts, height) if 0 <= height <= self.tip else b"null"
        if method == "eth_getLogs":
            query = params[0]
            first = self._height(query.get("fromBlock", "latest"))
            last = min(self._height(query.get("toBlock", "latest")), self.tip)
            template = self._log_template(query)
            if not template or last < first:
                return b"[]"
            return b"[" + b",".join(_fill(template, h) for h in range(max(first, 0), last + 1)) + b"]"
        raise LookupError(method)

    def envelope(self, call: Any) -> bytes:
        """One call's whole answer (result or error)."""
        ident = orjson.dumps(call.get("id") if isinstance(call, dict) else None)
        try:
            result = self.answer(call["method"], call.get("params") or [])
        except LookupError:
            return b'{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"the method does not exist"}}' % ident
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            message = orjson.dumps(f"invalid params: {exc}")
            return b'{"jsonrpc":"2.0","id":%s,"error":{"code":-32602,"message":%s}}' % (ident, message)
        return b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (ident, result)

    async def handle(self, request: web.Request) -> web.Response:
        """The HTTP endpoint: one call or a batch."""
        payload = orjson.loads(await request.read())
        self.requests += 1
        if isinstance(payload, list):
            body = b"[" + b",".join(self.envelope(call) for call in payload) + b"]"
        else:
            body = self.envelope(payload)
        return web.Response(body=body, content_type="application/json")


async def serve(tip: int, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str, RealNode]:
    """Start the node in this event loop; return its runner (to clean up), its URL and the node."""
    node = RealNode(tip)
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/", node.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}", node


async def _main(tip: int, port: int) -> None:
    runner, url, _ = await serve(tip, port=port)
    print(url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=1_000_000, help="the tip: blocks 0..N are served")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed on the first line)")
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.blocks, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
