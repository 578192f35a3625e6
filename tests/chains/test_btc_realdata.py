"""Real mainnet Bitcoin data through BitcoinSource and replay, served by a small recorded node.

- Block 413,567 (`block413567.raw`, 999,887 bytes, 1,557 transactions: 2,841 P2PKH, 737 P2SH and 3
  OP_RETURN outputs) over `getblock HASH 0` and REST; watched scripts drawn from its outputs are
  found exactly, on the full path, the watched path and through `replay`.
- bitcoin-etl's old-format recordings (`getblock HASH 2` in Bitcoin Core's pre-22 shape, with
  `scriptPubKey.addresses`) of blocks 0, 1 and 50,000 to 50,002: the recordings carry each
  transaction's `hex`, so the raw blocks are rebuilt from them with `btc_serialize` (header fields plus
  transactions) and must hash to the recorded hashes; the node answers `getblock 2` from the file
  and `getblock 0` with the rebuilt block. Every decoded output equals the recorded one (script hex,
  value as Decimal, n). Old Core listed a P2PK output under the P2PKH address of its key: matching
  is on scripts, so watching that address finds the P2PKH outputs and, rightly, not the P2PK ones.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiohttp import web

from depositwatch.addresses import bitcoin_script_to_address, parse_bitcoin_address, script_type
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_decode import decode_block, decode_tx
from depositwatch.chains.btc_serialize import serialize_header, write_varint
from depositwatch.chains.btc_wire import BlockHeader, block_hash
from depositwatch.config import ChainConfig, Secret
from depositwatch.matcher import match_block
from depositwatch.models import AddressEntry, AddressStatus
from depositwatch.registry import AddressRegistry
from depositwatch.replay import replay
from depositwatch.store import SqlStore
from depositwatch.store.base import RegistryRow
from depositwatch.sweeps import OutputTracker
from tests.realdata import realdata
from tests.util import serve

BLOCK_413567 = "0000000000000000025aff8be8a55df8f89c77296db6198f272d6577325d4069"
HEIGHT_413567 = 413_567
MAINNET_GENESIS = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
OLD_FOLDERS = ("block_0", "block_1", "block_without_transactions", "block_with_transactions")


@dataclass
class Recorded:
    """What the recorded node serves: raw blocks by height, optional verbosity-2 JSON, extra hashes."""

    raw: dict[int, bytes] = field(default_factory=dict)
    verbose: dict[str, Any] = field(default_factory=dict)  # hash -> the recorded getblock 2 result
    hashes: dict[int, str] = field(default_factory=dict)  # heights only known by hash (a parent)

    def hash_at(self, height: int) -> str | None:
        if height in self.raw:
            return block_hash(self.raw[height][:80])
        return self.hashes.get(height)


class RecordedBitcoinNode:
    """JSON-RPC (with Basic auth) and REST answering from recorded mainnet blocks, as Core 25 would."""

    user, password = "rec", "orded"

    def __init__(self, data: Recorded) -> None:
        self.data = data
        self.by_hash = {block_hash(raw[:80]): (height, raw) for height, raw in data.raw.items()}
        self.calls: list[tuple[str, list[Any]]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> RecordedBitcoinNode:
        app = web.Application()
        app.router.add_post("/", self._rpc)
        app.router.add_get("/rest/block/{name}", self._rest)
        self.runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def tip(self) -> int:
        return max(self.data.raw)

    def _answer(self, method: str, params: list[Any]) -> Any:
        self.calls.append((method, params))
        if method == "getblockchaininfo":
            return {"chain": "main", "blocks": self.tip, "bestblockhash": self.data.hash_at(self.tip)}
        if method == "getbestblockhash":
            return self.data.hash_at(self.tip)
        if method == "getblockhash":
            found = self.data.hash_at(params[0])
            if found is None:
                raise LookupError(-8, "Block height out of range")
            return found
        if method in ("getblockheader", "getblock"):
            if params[0] not in self.by_hash:
                raise LookupError(-5, "Block not found")
            height, raw = self.by_hash[params[0]]
            if method == "getblockheader":
                return {"hash": params[0], "height": height, "previousblockhash": raw[4:36][::-1].hex()}
            if params[1] == 0:
                return raw.hex()
            if params[1] == 2 and params[0] in self.data.verbose:
                return self.data.verbose[params[0]]
            raise LookupError(-8, "verbosity not recorded")
        raise LookupError(-32601, "Method not found")

    def _one(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"result": self._answer(request["method"], request.get("params", [])), "error": None,
                    "id": request["id"]}  # fmt: skip
        except LookupError as exc:
            code, message = exc.args
            return {"result": None, "error": {"code": code, "message": message}, "id": request["id"]}

    async def _rpc(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        body = orjson.loads(await request.read())
        if isinstance(body, list):
            return web.Response(body=orjson.dumps([self._one(item) for item in body]), content_type="application/json")
        reply = self._one(body)
        status = 200 if reply["error"] is None else 404 if reply["error"]["code"] == -32601 else 500
        return web.Response(status=status, body=orjson.dumps(reply), content_type="application/json")

    async def _rest(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self.by_hash.get(name.removesuffix(".bin"))
        if not name.endswith(".bin") or found is None:
            return web.Response(status=404, text=f"{name} not found\r\n")
        return web.Response(body=found[1], content_type="application/octet-stream")


def mainnet_config(node: RecordedBitcoinNode, **extra: Any) -> ChainConfig:
    return ChainConfig(
        name="btc", kind="bitcoin", network="mainnet", rpc_urls=[node.url], rpc_user=node.user,
        rpc_password=Secret(value=node.password), confirmations=1, batch_blocks=5, **extra,
    )  # fmt: skip


# --- block 413,567 ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_413567() -> bytes:
    return realdata("btc", "block413567.raw").read_bytes()


@pytest.fixture
async def node_413567(raw_413567: bytes) -> AsyncIterator[RecordedBitcoinNode]:
    hashes = {0: MAINNET_GENESIS, HEIGHT_413567 - 1: raw_413567[4:36][::-1].hex()}
    async with RecordedBitcoinNode(Recorded(raw={HEIGHT_413567: raw_413567}, hashes=hashes)) as node:
        yield node


async def test_block_413567_through_the_source(node_413567: RecordedBitcoinNode, raw_413567: bytes) -> None:
    source = BitcoinSource(mainnet_config(node_413567))
    rest = BitcoinSource(mainnet_config(node_413567, rest_url=node_413567.url))
    await source.open()
    await rest.open()
    try:
        assert await source.tip() == (await rest.tip())
        (block,) = await source.fetch(HEIGHT_413567, HEIGHT_413567 + 1)
        assert await rest.fetch(HEIGHT_413567, HEIGHT_413567 + 1) == [block]
    finally:
        await source.close()
        await rest.close()
    assert block.hash == BLOCK_413567 and block.height == HEIGHT_413567 and block.tx_count == 1557
    kinds: dict[str | None, int] = {}
    for transfer in block.transfers:
        assert transfer.to_key is not None
        kind = script_type(transfer.to_key)
        kinds[kind] = kinds.get(kind, 0) + 1
        assert transfer.to_address is not None
        assert transfer.to_address[0] == {"p2pkh": "1", "p2sh": "3"}[str(kind)]
    assert kinds == {"p2pkh": 2841, "p2sh": 737}  # the 3 OP_RETURN outputs are not transfers
    decoded = decode_block(raw_413567)
    assert len(block.spends) == sum(len(tx.inputs) for tx in decoded.txs[1:])
    assert sum(t.amount for t in block.transfers) == sum(o.value for tx in decoded.txs for o in tx.outputs)


def sample_book(raw: bytes, seed: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(seed)
    scripts = sorted({o.script for tx in decode_block(raw).txs for o in tx.outputs if o.script[:1] != b"\x6a"})
    chosen = rng.sample(scripts, 120)
    return chosen[:60], chosen[60:]  # active, revoked


def expected_matches(raw: bytes, active: list[bytes], revoked: list[bytes]) -> set[tuple[str, str, int, int]]:
    """(kind, txid, index, amount) worked out from the decoded block, independently of the source."""
    found = set()
    kept: dict[tuple[str, int], int] = {}
    for tx in decode_block(raw).txs:
        for i, txin in enumerate(tx.inputs if not tx.is_coinbase else ()):
            amount = kept.pop((txin.prev_txid_hex, txin.prev_vout), None)
            if amount is not None:
                found.add(("revoked_outgoing", tx.txid, i, amount))
        for n, out in enumerate(tx.outputs):
            if out.value <= 0:
                continue
            if out.script in revoked:
                found.add(("revoked_incoming", tx.txid, n, out.value))
                kept[(tx.txid, n)] = out.value
            elif out.script in active:
                found.add(("deposit", tx.txid, n, out.value))
    return found


async def test_watched_scripts_from_block_413567_are_found_exactly_on_both_paths(
    node_413567: RecordedBitcoinNode, raw_413567: bytes
) -> None:
    active, revoked = sample_book(raw_413567, 1)
    noise = [bytes([0x76, 0xA9, 0x14]) + random.Random(2).randbytes(20) + b"\x88\xac" for _ in range(5000)]
    rows = [RegistryRow("btc", k, AddressStatus.ACTIVE, None) for k in active + noise]
    rows += [RegistryRow("btc", k, AddressStatus.REVOKED, 0) for k in revoked]
    registry = AddressRegistry.from_rows(rows)
    expected = expected_matches(raw_413567, active, revoked)
    assert len(expected) >= 120
    for watched in (False, True):
        source = BitcoinSource(mainnet_config(node_413567))
        tracker = OutputTracker("btc", "BTC", "mainnet")
        if watched:
            source.watch(registry, tracker)
        await source.open()
        try:
            (block,) = await source.fetch(HEIGHT_413567, HEIGHT_413567 + 1)
        finally:
            await source.close()
        matches = tracker.effects(block, match_block("btc", block, registry.book("btc")), registry).matches
        got = {(str(m.kind), m.transfer.txid, m.transfer.index, m.transfer.amount) for m in matches}
        assert got == expected, f"watched={watched}"
        if watched:
            assert len(block.transfers) < 200  # only the watched outputs were built


async def test_replay_of_block_413567_finds_exactly_the_watched_outputs(
    node_413567: RecordedBitcoinNode, raw_413567: bytes, store: SqlStore
) -> None:
    active, revoked = sample_book(raw_413567, 3)
    entries = []
    for status, scripts in ((AddressStatus.ACTIVE, active), (AddressStatus.REVOKED, revoked)):
        for script in scripts:
            parsed = parse_bitcoin_address(str(bitcoin_script_to_address(script, "mainnet")), "mainnet")
            assert parsed.key == script
            entries.append(
                AddressEntry("btc", parsed.address, parsed.key, status, label=parsed.type,
                             revoked_at=0 if status is AddressStatus.REVOKED else None, type=parsed.type)
            )  # fmt: skip
    await store.import_addresses(list(enumerate(entries, 1)))
    out = io.StringIO()
    summary = await replay(
        chain=mainnet_config(node_413567), store=store, start=HEIGHT_413567, stop=HEIGHT_413567, output=out
    )
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    got = {(line["kind"], line["txid"], line["index"], int(line["amount"])) for line in lines}
    assert got == expected_matches(raw_413567, active, revoked)
    assert summary.blocks == 1
    for line in lines:
        assert line["block_hash"] == BLOCK_413567 and line["chain"] == "btc" and line["asset"] == "BTC"
        if line["kind"] != "revoked_outgoing":
            assert parse_bitcoin_address(line["to"], "mainnet").type == line["label"]


# --- old-format recordings -------------------------------------------------------------------------


def _rebuild(verbose: dict[str, Any]) -> bytes:
    """The wire block from a verbosity-2 answer: header fields, then each transaction's `hex`."""
    header = BlockHeader(
        version=verbose["version"],
        prev_hash=verbose.get("previousblockhash", "00" * 32),
        merkle_root=verbose["merkleroot"],
        time=verbose["time"],
        bits=int(verbose["bits"], 16),
        nonce=verbose["nonce"],
        hash=verbose["hash"],
    )
    txs = [bytes.fromhex(tx["hex"]) for tx in verbose["tx"]]
    return serialize_header(header) + write_varint(len(txs)) + b"".join(txs)


def old_recordings() -> Recorded:
    data = Recorded()
    for name in OLD_FOLDERS:
        folder = realdata("btc", name, "expected_blocks.json").parent
        for path in sorted(folder.glob("rpc_response_getblock_*")):
            verbose = json.loads(path.read_text(), parse_float=Decimal)
            raw = _rebuild(verbose)
            assert block_hash(raw[:80]) == verbose["hash"]  # the rebuilt header is the recorded block
            data.raw[verbose["height"]] = raw
            data.verbose[verbose["hash"]] = verbose
        for path in folder.glob("rpc_response_getblockhash_*"):
            height = int(path.stem.rsplit("_", 1)[1])
            assert json.loads(path.read_text()) == data.hash_at(height)
    data.hashes[49_999] = data.verbose[data.hash_at(50_000)]["previousblockhash"]  # type: ignore[index]
    return data


@pytest.fixture
async def old_node() -> AsyncIterator[RecordedBitcoinNode]:
    async with RecordedBitcoinNode(old_recordings()) as node:
        yield node


async def test_old_format_blocks_decode_to_exactly_the_recorded_outputs(old_node: RecordedBitcoinNode) -> None:
    source = BitcoinSource(mainnet_config(old_node))
    await source.open()
    try:
        assert await source.identity() == MAINNET_GENESIS
        blocks = await source.fetch(0, 2) + await source.fetch(50_000, 50_003)
    finally:
        await source.close()
    assert [b.height for b in blocks] == [0, 1, 50_000, 50_001, 50_002]
    for block in blocks:
        verbose = old_node.data.verbose[block.hash]
        assert block.tx_count == len(verbose["tx"]) and block.time == verbose["time"]
        assert block.parent_hash == verbose.get("previousblockhash", "00" * 32)
        recorded = [
            (tx["txid"], out["n"], out["scriptPubKey"]["hex"], int(out["value"] * 100_000_000))
            for tx in verbose["tx"]
            for out in tx["vout"]
        ]
        decoded = [(t.txid, t.index, t.to_key.hex() if t.to_key else "", t.amount) for t in block.transfers]
        assert decoded == recorded
        for tx in verbose["tx"][1:]:
            assert decode_tx(bytes.fromhex(tx["hex"])).txid == tx["txid"]
        recorded_spends = [
            (tx["txid"], i, vin["txid"], vin["vout"]) for tx in verbose["tx"] if "coinbase" not in tx["vin"][0]
            for i, vin in enumerate(tx["vin"])
        ]  # fmt: skip
        assert [(s.txid, s.index, s.prev_txid, s.prev_vout) for s in block.spends] == recorded_spends
    # the one block with payments has two P2PKH outputs beside the P2PK coinbase
    assert sum(1 for b in blocks for t in b.transfers if t.to_key and script_type(t.to_key) == "p2pkh") == 2


async def test_old_format_replay_with_addresses_drawn_from_the_outputs(
    old_node: RecordedBitcoinNode, store: SqlStore
) -> None:
    listed: dict[str, list[tuple[str, int, str, str]]] = {}  # address -> (txid, n, type, script hex)
    for verbose in old_node.data.verbose.values():
        for tx in verbose["tx"]:
            for out in tx["vout"]:
                spk = out["scriptPubKey"]
                for text in spk.get("addresses", []):
                    listed.setdefault(text, []).append((tx["txid"], out["n"], spk["type"], spk["hex"]))
    assert len(listed) >= 6
    entries = []
    for i, text in enumerate(sorted(listed)):
        parsed = parse_bitcoin_address(text, "mainnet")
        status = AddressStatus.REVOKED if i % 2 else AddressStatus.ACTIVE
        entries.append(AddressEntry("btc", parsed.address, parsed.key, status, label=text,
                                    revoked_at=0 if i % 2 else None, type=parsed.type))  # fmt: skip
    await store.import_addresses(list(enumerate(entries, 1)))
    lines: list[dict[str, Any]] = []
    for start, stop in ((0, 1), (50_000, 50_002)):
        out = io.StringIO()
        await replay(chain=mainnet_config(old_node), store=store, start=start, stop=stop, output=out)
        lines += [json.loads(line) for line in out.getvalue().splitlines()]
    got = sorted((line["txid"], line["index"], line["to"]) for line in lines)
    # matching is on scripts: the P2PKH outputs are found; a P2PK output, listed under the P2PKH address
    # of its key by old Bitcoin Core, does not pay that address's script and is not a match
    expected = sorted(
        (txid, n, text)
        for text, outputs in listed.items()
        for txid, n, kind, script_hex in outputs
        if bytes.fromhex(script_hex) == parse_bitcoin_address(text, "mainnet").key
    )
    assert got == expected
    assert len(expected) == 2 and {kind for o in listed.values() for _, _, kind, _ in o} == {"pubkey", "pubkeyhash"}
    for line in lines:
        assert Decimal(line["amount_decimal"]) * 100_000_000 == int(line["amount"])
    assert sorted(line["amount_decimal"] for line in lines) == ["100", "50"]
