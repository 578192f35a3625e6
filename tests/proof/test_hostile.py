"""Hostile input: every parser facing the outside world fails only with its own, documented error.

- address parsers (Bitcoin on every network, Ethereum, the chain-kind front door): only AddressError;
  a parsed address's script turns back into the same address;
- the raw Bitcoin block and transaction decoders, on real regtest blocks mutated (bytes flipped,
  inserted, deleted, truncated, counts inflated) and on random bytes: only BlockDecodeError;
- the config loader, on random nested data and mutated valid configs (`parse_config`) and on random
  file contents (`load_config`): only ConfigError; an accepted config can be shown redacted;
- the import CSV reader on random and near-valid CSV: only BadRows or ValueError; through the store, on
  both backends, an import the store rejects leaves the book exactly as it was;
- the EVM source, talking to a tiny JSON-RPC server whose honest answers are corrupted at a random
  place (a field replaced by random JSON or removed, a wrong envelope, a JSON-RPC error, an HTTP
  status, a raw body): only BadNodeAnswer or NodeUnavailable (and WrongChain when opening).

The full form (DEPOSITWATCH_PROOF=full) runs ten times as many examples.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import string
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depositwatch.addressbook import BadRows, ChainDirectory, read_import_csv
from depositwatch.addresses import (
    AddressError,
    ParsedAddress,
    bitcoin_script_to_address,
    normalise_key,
    parse_bitcoin_address,
    parse_ethereum_address,
)
from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable, WrongChain
from depositwatch.chains.btc_decode import decode_block, decode_tx
from depositwatch.chains.btc_scan import scan_block
from depositwatch.chains.btc_wire import BlockDecodeError, decode_header
from depositwatch.chains.evm import EvmSource
from depositwatch.chains.evm_decode import TRANSFER_TOPIC
from depositwatch.config import ChainConfig, ConfigError, TokenConfig, load_config, parse_config
from depositwatch.store import ImportRejected, open_store
from tests.btcnode import RegtestChain, p2pkh, p2sh, p2tr, p2wpkh, p2wsh
from tests.proof.harness import FULL, form_param
from tests.receivers import WEBHOOK_SECRET
from tests.util import serve

T = TypeVar("T")

SCALE = 10 if FULL else 1
NETWORKS = ("mainnet", "testnet", "signet", "regtest")


def examples(n: int) -> settings:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


class Loop:
    """A private event loop for a synchronous hypothesis test (the examples share its servers)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


# --- addresses -------------------------------------------------------------------------------------


def _valid_addresses() -> list[str]:
    found = []
    for network in NETWORKS:
        for script in (
            p2pkh(b"\x11" * 20),
            p2sh(b"\x22" * 20),
            p2wpkh(b"\x33" * 20),
            p2wsh(b"\x44" * 32),
            p2tr(b"\x55" * 32),
            bytes([0x52, 0x02]) + b"\x66\x66",  # witness v2, 2 bytes
        ):
            address = bitcoin_script_to_address(script, network)
            if address is not None:
                found.append(address)
    found += ["0x" + "ab" * 20, "0x" + "AB" * 20, "0x52908400098527886E0F7030069857D2E4169EE7"]
    return found


VALID_ADDRESSES = _valid_addresses()
ADDRESS_CHARS = string.ascii_letters + string.digits + " \t\n:._-/\\'\"\x00é"


@st.composite
def near_addresses(draw: st.DrawFn) -> str:
    """A valid address with a few characters changed, inserted, deleted or re-cased."""
    text = list(draw(st.sampled_from(VALID_ADDRESSES)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "case", "cut"]))
        position = draw(st.integers(0, max(0, len(text) - 1)))
        if op == "set" and text:
            text[position] = draw(st.sampled_from(ADDRESS_CHARS))
        elif op == "insert":
            text.insert(position, draw(st.sampled_from(ADDRESS_CHARS)))
        elif op == "delete" and text:
            del text[position]
        elif op == "case" and text:
            text[position] = text[position].swapcase()
        elif op == "cut":
            text = text[:position]
    return "".join(text)


ADDRESS_TEXT = st.one_of(near_addresses(), st.text(max_size=120), st.sampled_from(VALID_ADDRESSES))


@form_param(timeout_ci=120, timeout_full=1800)
def test_address_parsers_raise_only_address_errors(form: str) -> None:
    @examples(1500)
    @given(text=ADDRESS_TEXT, network=st.sampled_from(NETWORKS))
    def check(text: str, network: str) -> None:
        parsers: tuple[Callable[[], ParsedAddress], ...] = (
            lambda: parse_bitcoin_address(text, network),
            lambda: normalise_key("bitcoin", text, network),
            lambda: parse_ethereum_address(text),
            lambda: normalise_key("evm", text, None),
        )
        for parse in parsers:
            try:
                parsed = parse()
            except AddressError:
                continue
            assert parsed.key and parsed.address
        try:
            parsed = parse_bitcoin_address(text, network)
        except AddressError:
            return
        # What parses names a script, and that script is written back as the same address.
        assert bitcoin_script_to_address(parsed.key, network) in (parsed.address, parsed.address.lower())

    check()


@form_param(timeout_ci=60, timeout_full=600)
def test_script_to_address_takes_any_bytes(form: str) -> None:
    @examples(1000)
    @given(script=st.binary(max_size=60), network=st.sampled_from(NETWORKS))
    def check(script: bytes, network: str) -> None:
        address = bitcoin_script_to_address(script, network)
        if address is not None:
            assert parse_bitcoin_address(address, network).key == script

    check()


# --- raw blocks ------------------------------------------------------------------------------------


def _blocks() -> list[bytes]:
    chain = RegtestChain()
    chain.mine(105)
    chain.send([(p2wpkh(b"\xa1" * 20), 70_000), (p2tr(b"\xa2" * 32), 80_000), (p2pkh(b"\xa3" * 20), 5_000)])
    chain.send([(p2sh(b"\xa4" * 20), 90_000)])
    chain.mine(1)
    chain.send([(p2wsh(b"\xa5" * 32), 60_000)], from_script=p2wpkh(b"\xa1" * 20), change_script=p2pkh(b"\x01" * 20))
    chain.mine(1)
    return [chain.block_at(h).raw for h in (1, chain.height - 1, chain.height)]


RAW_BLOCKS = _blocks()


@st.composite
def mutated_blocks(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(RAW_BLOCKS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append", "varint"]))
        position = draw(st.integers(0, len(data)))
        if op == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif op == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del data[position : position + draw(st.integers(1, 40))]
        elif op == "truncate":
            del data[position:]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=40))
        elif op == "varint" and position < len(data):
            data[position : position + 1] = bytes([draw(st.sampled_from([0xFD, 0xFE, 0xFF]))]) + draw(
                st.binary(min_size=2, max_size=8)
            )
    return bytes(data)


@form_param(timeout_ci=120, timeout_full=1800)
def test_block_decoder_raises_only_block_decode_errors(form: str) -> None:
    scripts = {p2wpkh(b"\xa1" * 20), p2tr(b"\xa2" * 32), p2sh(b"\xa4" * 20)}

    @examples(1500)
    @given(raw=st.one_of(mutated_blocks(), st.binary(max_size=400)))
    def check(raw: bytes) -> None:
        for decode in (
            lambda: decode_block(raw),
            lambda: scan_block(raw, scripts),
            lambda: scan_block(raw, scripts, verify_merkle=False),
            lambda: decode_tx(raw[80:]),
            lambda: decode_tx(raw),
            lambda: decode_header(raw),
        ):
            try:
                decode()
            except BlockDecodeError:
                pass

    check()
    for raw in RAW_BLOCKS:  # and the honest blocks decode
        assert len(decode_block(raw).txs) >= 1


# --- config ----------------------------------------------------------------------------------------

CHAIN_KEYS = list(ChainConfig.model_fields)
KEYS = ["store", "chains", "sinks", "alerts", "http", "log", "url", "name", "kind", "type", "secret", "value", "env"]
KEYS += ["file", "retry", "severity", "listen", "level", "format", "symbol", "contract", "decimals", "password"]
KEYS += CHAIN_KEYS
URLS = [
    "http://127.0.0.1:8545",
    "http://user:pw@host:99999",
    "http://user:pw@[::1",
    "https://u:p@h:0/x",
    "ws://",
    "ipc:///tmp/x",
    "tcp://h:-1",
    "sqlite:///x.db",
    "sqlite://",
    "postgresql://u:p@h:bad/db",
    "http://[fe80::1%25eth0]:8545",
]
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from([*URLS, "evm", "bitcoin", "regtest", "webhook", "slack", "pagerduty", "critical", "info"]),
)
JSON = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=10)), children, max_size=5)
    ),
    max_leaves=25,
)

VALID_CONFIG: dict[str, Any] = {
    "store": {"url": "sqlite:///state.db"},
    "chains": [
        {
            "name": "eth",
            "kind": "evm",
            "chain_id": 1,
            "rpc_urls": ["http://u:p@127.0.0.1:8545"],
            "tokens": [{"symbol": "USDT", "contract": "0xdAC17F958D2ee523a2206206994597C13D831ec7", "decimals": 6}],
        },
        {"name": "btc", "kind": "bitcoin", "network": "regtest", "rpc_urls": ["http://127.0.0.1:18443"]},
    ],
    "sinks": [{"name": "hook", "type": "webhook", "url": "https://example.org/h", "secret": {"value": WEBHOOK_SECRET}}],
    "alerts": {"poll_interval": 0.2},
    "http": {"listen": "127.0.0.1:9108"},
    "log": {"level": "info"},
}


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return list(node)
    return list(range(len(node))) if isinstance(node, list) else []


@st.composite
def mutated_configs(draw: st.DrawFn) -> Any:
    data: Any = orjson.loads(orjson.dumps(VALID_CONFIG))
    for _ in range(draw(st.integers(1, 4))):
        node, key = data, None
        for _ in range(draw(st.integers(0, 4))):
            children = _children(node)
            if not children:
                break
            key = draw(st.sampled_from(children))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
            key = None
        if not _children(node):
            continue
        if key is None:
            key = draw(st.sampled_from(_children(node)))
        if isinstance(node, dict) and draw(st.booleans()) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(JSON)
    return data


@form_param(timeout_ci=120, timeout_full=1800)
def test_config_loader_raises_only_config_errors(form: str) -> None:
    @examples(600)
    @given(data=st.one_of(mutated_configs(), JSON, st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6)))
    def check(data: Any) -> None:
        if not isinstance(data, dict):
            data = {"chains": data}
        try:
            config = parse_config(data, "fuzz.toml")
        except ConfigError as exc:
            error = exc
        else:
            config.redacted()  # what check-config prints
            return
        assert "fuzz.toml" in str(error), error  # the message names the file

    check()


@form_param(timeout_ci=60, timeout_full=600)
def test_config_files_of_any_content_raise_only_config_errors(form: str) -> None:
    toml_like = st.lists(
        st.sampled_from(
            ["[store]\n", 'url = "sqlite:///x.db"\n', "[[chains]]\n", 'name = "eth"\n', 'kind = "evm"\n',
             "chain_id = 1\n", 'rpc_urls = ["http://x:1"]\n', "= = =\n", '"\\ud800"\n', "a.b.c = 1\n", "[x\n",
             'x = """\n', "\x00", "\ufeff", "n = nan\n", "i = inf\n", "d = 1979-05-27T07:32:00Z\n"]
        ),
        max_size=12,
    ).map(lambda parts: "".join(parts).encode())  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "depositwatch.toml"

        @examples(300)
        @given(content=st.one_of(toml_like, st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
        def check(content: bytes) -> None:
            path.write_bytes(content)
            try:
                load_config(path)
            except ConfigError:
                pass

        check()


# --- the import CSV --------------------------------------------------------------------------------

ETH_POOL = ["0x" + f"{i:02x}" * 20 for i in (0xA1, 0xA2, 0xA3, 0xC1, 0xC2, 0xC3)]
CELL_VALUES = [*VALID_ADDRESSES, *ETH_POOL, "active", "revoked", "REVOKED", "Active", "eth", "btc", "sol", ""]
CELL_VALUES += ["2023-09-12T00:00:00Z", "2023-09-12", "2023-09-12T00:00:00", "1694476800", "99999999999999999999999"]
CELL_VALUES += ["0", "9" * 400, "x" * 600, "a\x00b", "line\nbreak", 'quo"te', "\u202eabc", "１２３", "²"]
CELLS = st.one_of(st.sampled_from(CELL_VALUES), st.text(max_size=30))


@st.composite
def csv_texts(draw: st.DrawFn) -> str:
    columns = draw(
        st.one_of(
            st.permutations(["chain", "address", "status", "label", "owner", "revoked_at", "reason"]),
            st.lists(st.sampled_from(["chain", "address", "status", "revoked_at", "Label", "extra", ""]), max_size=8),
        )
    )
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=len(columns) + 1), max_size=8))
    if draw(st.booleans()):
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue()
    return "\n".join(",".join(row) for row in [list(columns), *rows])


@form_param(timeout_ci=120, timeout_full=1800)
def test_import_csv_reader_raises_only_bad_rows(form: str) -> None:
    directory = ChainDirectory(ChainDirectory.DEFAULTS)

    @examples(800)
    @given(text=st.one_of(csv_texts(), st.text(max_size=300)))
    def check(text: str) -> None:
        try:
            entries = read_import_csv(text, directory)
        except BadRows as exc:
            problems = exc.problems
        except ValueError:
            return
        else:
            for line, entry in entries:
                assert line >= 2 and entry.key
            return
        assert problems and all(isinstance(line, int) and reason for line, reason in problems)

    check()


@st.composite
def book_imports(draw: st.DrawFn) -> str:
    """Near-valid imports over a small pool of Ethereum addresses: repeats, un-revocations, bad values."""
    rows = ["chain,address,status,label,owner,revoked_at,reason"]
    for _ in range(draw(st.integers(1, 8))):
        address = draw(st.sampled_from(ETH_POOL))
        status = draw(st.sampled_from(["active", "revoked"]))
        revoked_at = draw(st.sampled_from(["2023-09-12T00:00:00Z", "1694476800", "99999999999999999999999", "0"]))
        label = draw(st.text(alphabet=string.ascii_letters + " ", max_size=8))
        rows.append(f"eth,{address},{status},{label},own,{revoked_at if status == 'revoked' else ''},r")
    return "\n".join(rows) + "\n"


@form_param(timeout_ci=150, timeout_full=1800)
def test_a_rejected_import_leaves_the_store_unchanged(form: str, store_url: str) -> None:
    directory = ChainDirectory(ChainDirectory.DEFAULTS)
    base = (
        "chain,address,status,label,owner,revoked_at,reason\n"
        f"eth,{ETH_POOL[0]},revoked,r0,o,2023-01-01T00:00:00Z,breach\n"
        f"eth,{ETH_POOL[1]},revoked,r1,o,2023-01-01T00:00:00Z,breach\n"
        f"eth,{ETH_POOL[3]},active,a3,o,,\n"
    )
    loop = Loop()
    store = loop.run(open_store(store_url, migrate=True))
    outcomes: dict[str, int] = {}

    async def book() -> tuple[int, list[Any]]:
        return await store.address_book_version(), await store.list_addresses()

    try:
        loop.run(store.import_addresses(read_import_csv(base, directory)))

        @examples(60)
        @given(text=st.one_of(book_imports(), csv_texts()))
        def check(text: str) -> None:
            before = loop.run(book())
            try:
                entries = read_import_csv(text, directory)
            except ValueError:
                outcomes["refused by the reader"] = outcomes.get("refused by the reader", 0) + 1
                assert loop.run(book()) == before
                return
            try:
                loop.run(store.import_addresses(entries))
            except ImportRejected:
                outcomes["refused by the store"] = outcomes.get("refused by the store", 0) + 1
                assert loop.run(book()) == before, "a rejected import changed the book"
                return
            outcomes["applied"] = outcomes.get("applied", 0) + 1
            after = {(e.chain, e.key): e for e in loop.run(store.list_addresses())}
            for _, entry in entries:
                stored = after[(entry.chain, entry.key)]
                assert (stored.status, stored.label, stored.revoked_at) == (entry.status, entry.label, entry.revoked_at)

        check()
    finally:
        loop.run(store.close())
        loop.close()
    print(f"\nimports through the store: {outcomes}")


# --- the EVM source against a hostile node ----------------------------------------------------------

TOKEN = "0x" + "70" * 20
SENDER = "0x" + "11" * 20
TIP = 5


def _h(text: str) -> str:
    return "0x" + hashlib.sha256(text.encode()).hexdigest()


def _honest_chain() -> dict[int, dict[str, Any]]:
    blocks: dict[int, dict[str, Any]] = {}
    for height in range(TIP + 1):
        block_hash = _h(f"block {height}")
        txs, receipts = [], []
        for i in range(3 if height else 0):
            tx_hash = _h(f"tx {height} {i}")
            is_token = i == 2
            to = TOKEN if is_token else "0x" + f"{0xA0 + i:02x}" * 20
            data = "0xa9059cbb" + "00" * 12 + "a1" * 20 + f"{1000 + height:064x}" if is_token else "0x"
            txs.append(
                {
                    "hash": tx_hash, "from": SENDER, "to": to, "value": "0x0" if is_token else hex(10**15 + i),
                    "input": data, "nonce": hex(height * 3 + i), "gas": "0x5208", "gasPrice": "0x1",
                    "blockHash": block_hash, "blockNumber": hex(height), "transactionIndex": hex(i), "type": "0x0",
                }
            )  # fmt: skip
            logs = []
            if is_token:
                logs.append(
                    {
                        "address": TOKEN, "topics": [TRANSFER_TOPIC, "0x" + "00" * 12 + SENDER[2:],
                        "0x" + "00" * 12 + "a1" * 20], "data": f"0x{1000 + height:064x}",
                        "blockNumber": hex(height), "blockHash": block_hash, "transactionHash": tx_hash,
                        "transactionIndex": hex(i), "logIndex": "0x0", "removed": False,
                    }
                )  # fmt: skip
            receipts.append(
                {
                    "transactionHash": tx_hash, "blockHash": block_hash, "blockNumber": hex(height),
                    "status": "0x1", "logs": logs, "transactionIndex": hex(i), "gasUsed": "0x5208",
                    "cumulativeGasUsed": "0x5208", "from": SENDER, "to": to, "type": "0x0",
                    "logsBloom": "0x" + "00" * 256, "contractAddress": None, "effectiveGasPrice": "0x1",
                }
            )  # fmt: skip
        blocks[height] = {
            "block": {
                "number": hex(height), "hash": block_hash,
                "parentHash": _h(f"block {height - 1}") if height else "0x" + "00" * 32,
                "timestamp": hex(1_700_000_000 + 12 * height), "nonce": "0x0000000000000000",
                "sha3Uncles": "0x" + "00" * 32, "logsBloom": "0x" + "00" * 256, "transactionsRoot": "0x" + "00" * 32,
                "stateRoot": "0x" + "00" * 32, "receiptsRoot": "0x" + "00" * 32, "miner": "0x" + "00" * 20,
                "difficulty": "0x0", "totalDifficulty": "0x0", "extraData": "0x", "size": "0x220",
                "gasLimit": "0x1c9c380", "gasUsed": "0x0", "uncles": [], "baseFeePerGas": "0x7",
            },
            "txs": txs,
            "receipts": receipts,
        }  # fmt: skip
    return blocks


CHAIN = _honest_chain()


def _height(tag: Any) -> int | None:
    if tag in ("latest", "pending", "safe", "finalized"):
        return TIP
    if isinstance(tag, str) and tag.startswith("0x"):
        return int(tag, 16)
    return None


def honest(method: str, params: list[Any]) -> Any:
    if method == "eth_chainId":
        return "0x1"
    if method == "eth_blockNumber":
        return hex(TIP)
    if method == "eth_getBlockByNumber":
        height = _height(params[0])
        if height is None or height not in CHAIN:
            return None
        entry = CHAIN[height]
        full = len(params) > 1 and params[1]
        return {**entry["block"], "transactions": entry["txs"] if full else [t["hash"] for t in entry["txs"]]}
    if method == "eth_getBlockReceipts":
        height = _height(params[0])
        return None if height is None or height not in CHAIN else CHAIN[height]["receipts"]
    if method == "eth_getTransactionReceipt":
        for entry in CHAIN.values():
            for receipt in entry["receipts"]:
                if receipt["transactionHash"] == params[0]:
                    return receipt
        return None
    if method == "eth_getLogs":
        span = params[0]
        low, high = _height(span.get("fromBlock")), _height(span.get("toBlock"))
        assert low is not None and high is not None
        return [
            log for h in range(low, min(high, TIP) + 1) for receipt in CHAIN[h]["receipts"] for log in receipt["logs"]
        ]
    raise KeyError(method)


@dataclass(frozen=True)
class Corruption:
    method: str
    mode: str  # field | drop | result | envelope | error | id | status | raw | missing
    path: tuple[int, ...] = ()
    value: Any = None
    skip: int = 0  # honest answers to `method` before the corruption starts


def _at_path(root: Any, path: tuple[int, ...], value: Any, drop: bool) -> Any:
    """`root` with the node reached by `path` (indexes into sorted keys or list positions) replaced or removed."""
    if not path or not isinstance(root, dict | list) or not root:
        return value
    keys = sorted(root) if isinstance(root, dict) else list(range(len(root)))
    key = keys[path[0] % len(keys)]
    copy: Any = dict(root) if isinstance(root, dict) else list(root)
    if len(path) == 1 and drop:
        del copy[key]
    else:
        copy[key] = _at_path(copy[key], path[1:], value, drop)
    return copy


class HostileNode:
    """A JSON-RPC server that answers honestly except where its `corruption` says."""

    def __init__(self) -> None:
        self.corruption: Corruption | None = None
        self.seen = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        data = orjson.loads(await request.read())
        calls = data if isinstance(data, list) else [data]
        envelopes: list[Any] = [
            {"jsonrpc": "2.0", "id": c["id"], "result": honest(c["method"], c.get("params") or [])} for c in calls
        ]
        c = self.corruption
        hit = [i for i, call in enumerate(calls) if c is not None and call["method"] == c.method]
        if c is None or not hit:
            return self._json(envelopes, data)
        self.seen += 1
        if self.seen <= c.skip:
            return self._json(envelopes, data)
        i = hit[len(hit) // 2]
        if c.mode == "status":
            return web.Response(status=int(c.value), text="no")
        if c.mode == "raw":
            return web.Response(status=200, body=c.value, content_type="application/json")
        if c.mode == "field":
            envelopes[i] = {**envelopes[i], "result": _at_path(envelopes[i]["result"], c.path, c.value, False)}
        elif c.mode == "drop":
            envelopes[i] = {**envelopes[i], "result": _at_path(envelopes[i]["result"], c.path, None, True)}
        elif c.mode == "result":
            envelopes[i] = {**envelopes[i], "result": c.value}
        elif c.mode == "null":
            envelopes[i] = {**envelopes[i], "result": None}
        elif c.mode == "envelope":
            envelopes[i] = c.value
        elif c.mode == "error":
            envelopes[i] = {"jsonrpc": "2.0", "id": envelopes[i]["id"], "error": c.value}
        elif c.mode == "id":
            envelopes[i] = {**envelopes[i], "id": c.value}
        elif c.mode == "missing":
            del envelopes[i]
        return self._json(envelopes, data)

    @staticmethod
    def _json(envelopes: list[Any], data: Any) -> web.Response:
        body = envelopes if isinstance(data, list) else (envelopes[0] if envelopes else [])
        return web.Response(text=json.dumps(body), content_type="application/json")  # any integer size


HEXISH = st.from_regex(r"\A0x[0-9a-fA-F]{0,70}\Z")
HOSTILE_JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20), HEXISH,
    ),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)  # fmt: skip
METHODS = ["eth_chainId", "eth_blockNumber", "eth_getBlockByNumber", "eth_getBlockReceipts", "eth_getLogs"]


@st.composite
def corruptions(draw: st.DrawFn) -> Corruption | None:
    if draw(st.integers(0, 30)) == 0:
        return None
    method = draw(st.sampled_from(METHODS))
    modes = ["field", "field", "field", "drop", "drop", "result", "null", "envelope", "error", "id", "status", "raw"]
    modes.append("missing")
    mode = draw(st.sampled_from(modes))
    path = tuple(draw(st.lists(st.integers(0, 40), min_size=1, max_size=5)))
    value: Any = draw(HOSTILE_JSON)
    if mode == "status":
        value = draw(st.sampled_from([200, 204, 301, 400, 401, 404, 413, 429, 500, 502, 503, 504]))
    elif mode == "raw":
        value = draw(st.one_of(st.binary(max_size=60), st.sampled_from([b"", b"[]", b"{}", b"null", b"[{}]", b"1"])))
    return Corruption(method, mode, path, value, draw(st.integers(0, 2)))


async def _exercise(url: str) -> list[str]:
    """Open, tip, hash_at, fetch: what each did (or the allowed error it raised)."""
    source = EvmSource(
        ChainConfig(
            name="eth",
            kind="evm",
            chain_id=1,
            rpc_urls=[url],
            tokens=[TokenConfig(symbol="TT", contract=TOKEN, decimals=6)],
            batch_blocks=2,
            getlogs_max_range=3,
            request_timeout=5,
        )
    )
    done: list[str] = []
    try:
        try:
            await source.open()
        except (BadNodeAnswer, NodeUnavailable, WrongChain) as exc:
            return [f"open: {type(exc).__name__}"]
        done.append("open")
        for name, call in (
            ("tip", source.tip),
            ("hash_at", lambda: source.hash_at(3)),
            ("fetch", lambda: source.fetch(1, TIP + 1)),
        ):
            try:
                result = await call()
            except (BadNodeAnswer, NodeUnavailable) as exc:
                done.append(f"{name}: {type(exc).__name__}")
                continue
            done.append(name)
            if name == "fetch":
                assert isinstance(result, list)
                heights = [b.height for b in result]
                assert heights == list(range(1, 1 + len(heights))), heights
    finally:
        await source.close()
    return done


@form_param(timeout_ci=150, timeout_full=3600)
def test_evm_source_raises_only_chain_errors_on_hostile_answers(form: str) -> None:
    loop = Loop()
    node = HostileNode()
    loop.run(node.start())
    tally: dict[str, int] = {}
    try:
        node.corruption = None
        honest_run = loop.run(_exercise(node.url))
        assert honest_run == ["open", "tip", "hash_at", "fetch"], honest_run

        @examples(300)
        @given(corruption=corruptions())
        def check(corruption: Corruption | None) -> None:
            node.corruption, node.seen = corruption, 0
            for step in loop.run(_exercise(node.url)):
                tally[step] = tally.get(step, 0) + 1

        check()
    finally:
        loop.run(node.stop())
        loop.close()
    print(f"\nEVM source outcomes: {dict(sorted(tally.items()))}")


# --- URLs in every URL field of the config ------------------------------------------------------------

URL_FIELDS: tuple[tuple[Any, ...], ...] = (
    ("store", "url"),
    ("chains", 0, "rpc_urls", 0),
    ("chains", 0, "ws_url"),
    ("chains", 1, "rest_url"),
)
URL_FIELDS += (("chains", 1, "zmq_url"), ("sinks", 0, "url"))


@form_param(timeout_ci=60, timeout_full=600)
def test_any_url_in_the_config_is_refused_or_shown_redacted(form: str) -> None:
    @examples(300)
    @given(
        where=st.sampled_from(URL_FIELDS),
        url=st.one_of(
            st.sampled_from(URLS),
            st.builds(
                "{}://{}{}{}".format,
                st.sampled_from(["http", "https", "ws", "tcp", "ipc", "postgresql", "sqlite"]),
                st.sampled_from(["", "u:p@", "u@", ":p@", "u:p:q@", "u:@"]),
                st.sampled_from(["h", "127.0.0.1", "[::1]", "[::1", "h h", ""]),
                st.sampled_from(["", ":0", ":8545", ":65536", ":-1", ":x", ":", "/p?q=1"]),
            ),
        ),
    )
    def check(where: tuple[Any, ...], url: str) -> None:
        data: Any = orjson.loads(orjson.dumps(VALID_CONFIG))
        node = data
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = url
        try:
            config = parse_config(data, "fuzz.toml")
        except ConfigError:
            return
        text = orjson.dumps(config.redacted()).decode()
        assert ":p@" not in text, text  # an accepted URL's password is never shown

    check()


# --- regressions: the bugs these suites found, one input each -------------------------------------------


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "depositwatch.toml"
    path.write_bytes(b'[store]\nurl = "sqlite:///x\x80.db"\n')
    with pytest.raises(ConfigError):
        load_config(path)


def test_the_import_csv_refuses_a_revocation_time_the_store_cannot_hold() -> None:
    text = f"chain,address,status,revoked_at\neth,{ETH_POOL[0]},revoked,99999999999999999999999\n"
    with pytest.raises(BadRows):
        read_import_csv(text, ChainDirectory(ChainDirectory.DEFAULTS))


@pytest.mark.parametrize("latest", ["null", "list"])
async def test_a_node_with_no_usable_latest_block_is_a_chain_error(latest: str) -> None:
    node = HostileNode()
    await node.start()
    try:
        mode = "null" if latest == "null" else "result"
        node.corruption = Corruption("eth_getBlockByNumber", mode, value=[])
        steps = await _exercise(node.url)
    finally:
        await node.stop()
    assert "tip: BadNodeAnswer" in steps or "tip: NodeUnavailable" in steps, steps


def test_a_malformed_sink_url_is_a_config_error() -> None:
    data: Any = orjson.loads(orjson.dumps(VALID_CONFIG))
    data["sinks"][0]["url"] = "http://user:pw@[::1"
    with pytest.raises(ConfigError):
        parse_config(data, "fuzz.toml").redacted()
