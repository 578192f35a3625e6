"""A cheap EVM JSON-RPC node serving a generated chain from bytes made once, so that the client is the limit.

Block `h` holds `txs` plain ETH transfers between addresses of a population; the first `watched` addresses
of the population are watched (every other one of them revoked at 2020-01-01, before the first block's
time), so a replay finds deposits, revoked_incoming and sweeps (revoked_outgoing) spread over the range.
Every answer (full block, header, block receipts) is rendered to bytes when the node starts; a request
costs a lookup and a join. `eth_getLogs` answers an empty list (the chain has no token logs).

With `cycle=K` (`--cycle K`) only K blocks' answers are rendered, with placeholders where blocks differ, and
block `h` is body `(h - 1) % K` with its own number, hash, parent hash, time and transaction hashes filled
in (a few replaces a request): a chain of millions of blocks in the memory of K, each block still
distinct, so a replay stores every match anew.

Used by bench/replay_workers.py and tests/replay/test_replay_workers.py:

    python bench/evm_synth.py --blocks 2000 --txs 40     # serves until interrupted; prints its URL
    python bench/evm_synth.py --blocks 1000000 --cycle 1000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from dataclasses import dataclass, field
from typing import Any, Self

import orjson
from aiohttp import web

CHAIN_ID = 1337
GENESIS_TIME = 1_600_000_000
REVOKED_AT = "2020-01-01T00:00:00Z"


def synth_address(seed: int, n: int) -> str:
    """The population's address number `n` (lower-case hex)."""
    return "0x" + hashlib.sha256(f"synth:{seed}:{n}".encode()).hexdigest()[:40]


def _hash(height: int) -> str:
    return "0x" + hashlib.sha256(f"block:{height}".encode()).hexdigest() if height >= 0 else "0x" + "00" * 32


# Placeholders in a cycle's bodies (never valid hex, so they cannot occur in a rendered value).
_NUMBER, _HASH, _PARENT, _TIME, _TX = b'"@N@"', b'"@H@"', b'"@P@"', b'"@S@"', b"@T@"


def _fill(body: bytes, height: int) -> bytes:
    return (
        body.replace(_NUMBER, b'"%s"' % hex(height).encode())
        .replace(_HASH, b'"%s"' % _hash(height).encode())
        .replace(_PARENT, b'"%s"' % _hash(height - 1).encode())
        .replace(_TIME, b'"%s"' % hex(GENESIS_TIME + 12 * height).encode())
        .replace(_TX, b"%016x" % height)
    )


@dataclass
class SynthChain:
    """Blocks 0..`blocks` (the tip), each of `txs` transfers among `population` addresses."""

    blocks: int
    txs: int = 40
    population: int = 2_000
    watched: int = 20
    seed: int = 1
    cycle: int = 0  # render this many bodies and fill each block in from one of them (0: every block)
    full: list[bytes] = field(default_factory=list, repr=False)
    header: list[bytes] = field(default_factory=list, repr=False)
    receipts: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._addresses = [synth_address(self.seed, n) for n in range(self.population)]
        if self.cycle:
            self._render(0)  # the genesis block, then the bodies
            for body in range(self.cycle):
                self._render(body, template=True)
        else:
            for height in range(self.blocks + 1):
                self._render(height)

    def answer(self, height: int, kind: str) -> bytes | None:
        """Block `height`'s `kind` answer ("full", "header" or "receipts"), None past the tip."""
        if not 0 <= height <= self.blocks:
            return None
        bodies: list[bytes] = getattr(self, kind)
        if not self.cycle or height == 0:
            return bodies[height]
        return _fill(bodies[1 + (height - 1) % self.cycle], height)

    def _render(self, height: int, *, template: bool = False) -> None:
        """Block `height`'s answers, or with `template` body number `height` of a cycle (placeholders)."""
        if template:
            block_hash, number, parent, time = "@H@", "@N@", "@P@", "@S@"
            seq = height + 1  # the transfers of body k are those block k + 1 has without a cycle
        else:
            block_hash, number, parent, time = (
                _hash(height),
                hex(height),
                _hash(height - 1),
                hex(GENESIS_TIME + 12 * height),
            )
            seq = height
        addresses = self._addresses
        common = {"blockHash": block_hash, "blockNumber": number}
        txs: list[dict[str, Any]] = []
        receipts: list[dict[str, Any]] = []
        for i in range(self.txs if seq else 0):
            digest = hashlib.blake2b(f"{self.seed}:{seq}:{i}".encode(), digest_size=32).hexdigest()
            tx_hash = "0x" + ("@T@" + digest[16:] if template else digest)
            sender = addresses[(seq * 31 + i * 13) % self.population]
            to = addresses[(seq * 17 + i * 7 + 5) % self.population]
            txs.append(
                {
                    **common,
                    "hash": tx_hash,
                    "from": sender,
                    "to": to,
                    "value": hex(10**15 + seq * 1000 + i),
                    "input": "0x",
                    "nonce": hex(seq),
                    "gas": "0x5208",
                    "gasPrice": "0x3b9aca00",
                    "transactionIndex": hex(i),
                    "type": "0x0",
                }
            )
            receipts.append(
                {
                    **common,
                    "transactionHash": tx_hash,
                    "transactionIndex": hex(i),
                    "from": sender,
                    "to": to,
                    "contractAddress": None,
                    "cumulativeGasUsed": hex(21000 * (i + 1)),
                    "gasUsed": "0x5208",
                    "effectiveGasPrice": "0x3b9aca00",
                    "type": "0x0",
                    "status": "0x1",
                    "logs": [],
                }
            )
        block = {
            "number": number,
            "hash": block_hash,
            "parentHash": parent,
            "timestamp": time,
            "miner": "0x" + "00" * 20,
            "gasLimit": "0x1c9c380",
            "gasUsed": hex(21000 * len(txs)),
            "transactions": txs,
        }
        self.full.append(orjson.dumps(block))
        self.header.append(orjson.dumps({**block, "transactions": [t["hash"] for t in txs]}))
        self.receipts.append(orjson.dumps(receipts))

    def watch_csv(self) -> str:
        """The import CSV of the watched addresses: even ones active, odd ones revoked."""
        lines = ["chain,address,status,label,owner,revoked_at,reason"]
        for n in range(self.watched):
            address = synth_address(self.seed, n)
            if n % 2:
                lines.append(f"eth,{address},revoked,hot-{n},cust-{n},{REVOKED_AT},leak")
            else:
                lines.append(f"eth,{address},active,dep-{n},cust-{n},,")
        return "\n".join(lines) + "\n"


class SynthNode:
    """An aiohttp JSON-RPC server on 127.0.0.1 answering from a SynthChain's bytes."""

    def __init__(self, chain: SynthChain, port: int = 0, *, delay: float = 0.0) -> None:
        self.chain = chain
        self.port = port
        self.delay = delay  # seconds added to every answer: a slow node, so a test can stop a run midway
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=1 << 24)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(payload, list):
            body = b"[" + b",".join(self._one(item) for item in payload) + b"]"
        else:
            body = self._one(payload)
        return web.Response(body=body, content_type="application/json")

    def _one(self, request: dict[str, Any]) -> bytes:
        head = b'{"jsonrpc":"2.0","id":' + orjson.dumps(request.get("id")) + b","
        try:
            result = self._answer(request["method"], request.get("params") or [])
        except LookupError as exc:
            return head + orjson.dumps({"error": {"code": -32601, "message": str(exc)}})[1:]
        return head + b'"result":' + result + b"}"

    def _height(self, tag: str) -> int:
        return self.chain.blocks if tag in ("latest", "safe", "finalized", "pending") else int(tag, 16)

    def _answer(self, method: str, params: list[Any]) -> bytes:
        chain = self.chain
        if method == "eth_chainId":
            return orjson.dumps(hex(CHAIN_ID))
        if method == "eth_blockNumber":
            return orjson.dumps(hex(chain.blocks))
        if method == "eth_getBlockByNumber":
            answer = chain.answer(self._height(params[0]), "full" if params[1] else "header")
            return b"null" if answer is None else answer
        if method == "eth_getBlockReceipts":
            answer = chain.answer(self._height(params[0]), "receipts")
            return b"null" if answer is None else answer
        if method == "eth_getLogs":
            return b"[]"
        raise LookupError(f"the method {method} does not exist/is not available")


async def _serve(args: argparse.Namespace) -> None:
    chain = SynthChain(args.blocks, txs=args.txs, population=args.population, watched=args.watched, cycle=args.cycle)
    async with SynthNode(chain, args.port) as node:
        print(node.url, flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--txs", type=int, default=40)
    parser.add_argument("--population", type=int, default=2000)
    parser.add_argument("--watched", type=int, default=20)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cycle", type=int, default=0, help="render this many bodies, fill blocks in from them")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
