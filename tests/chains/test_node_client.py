"""The node clients against hostile answers: field domains, block membership, address words, deep JSON,
oversized answers, redirects, failover and chain switches (issue 13, items 1, 2, 4, 6, 7, 12)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from depositwatch.chains.base import BadNodeAnswer, NodeUnavailable, WrongChain
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.evm import EvmSource
from depositwatch.chains.rpc import AnswerTooLarge, NodeRedirect
from depositwatch.config import ChainConfig, Secret
from depositwatch.devnet import Anvil
from tests.btcnode import BitcoinRegtestServer
from tests.proof.faultproxy import Fault, FaultProxy
from tests.recorded_rpc import MAINNET_BLOCK, RecordedNode, assert_fetch_refused, mainnet_17173049
from tests.util import eventually, serve

USDT = "0xdac17f958d2ee523a2206206994597c13d831ec7"
USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
TOO_WIDE = "0x" + "f" * 64  # 2^256 - 1: a uint256, but no height, time or index


def evm_config(*urls: str, **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "eth",
        "kind": "evm",
        "chain_id": 1,
        "rpc_urls": list(urls),
        "tokens": [{"symbol": s, "contract": c, "decimals": 6} for s, c in (("USDT", USDT), ("USDC", USDC))],
    }
    settings.update(overrides)
    return ChainConfig(**settings)


def btc_config(*urls: str, node: BitcoinRegtestServer, **overrides: Any) -> ChainConfig:
    settings: dict[str, Any] = {
        "name": "btc",
        "kind": "bitcoin",
        "network": "regtest",
        "rpc_urls": list(urls),
        "rpc_user": node.user,
        "rpc_password": Secret(value=node.password),
        "poll_interval": 0.05,
    }
    settings.update(overrides)
    return ChainConfig(**settings)


# --- item 2: every field bounded to its domain at the source -----------------------------------------


def _tampered(method: str, target: Callable[[Any], Any], name: str, value: Any) -> Callable[[str, list[Any], Any], Any]:
    """A tamper hook: in `method`'s answers, `name` set to `value` in the object `target` picks (None: none)."""

    def tamper(called: str, params: list[Any], result: Any) -> Any:
        if called == method:
            found = target(result)
            if found is not None:
                found[name] = value
        return result

    return tamper


def _block_field(name: str, value: str) -> Callable[[str, list[Any], Any], Any]:
    return _tampered("eth_getBlockByNumber", lambda r: r if isinstance(r, dict) else None, name, value)


def _first_log_field(name: str, value: Any) -> Callable[[str, list[Any], Any], Any]:
    return _tampered("eth_getLogs", lambda r: r[0] if r else None, name, value)


def _first_tx(result: Any) -> Any:
    if isinstance(result, dict) and result["transactions"] and isinstance(result["transactions"][0], dict):
        return result["transactions"][0]
    return None


def _first_tx_field(name: str, value: Any) -> Callable[[str, list[Any], Any], Any]:
    return _tampered("eth_getBlockByNumber", _first_tx, name, value)


def _first_receipt_field(name: str, value: Any) -> Callable[[str, list[Any], Any], Any]:
    return _tampered("eth_getBlockReceipts", lambda r: r[0] if r else None, name, value)


def _topic_word(position: int) -> Callable[[str, list[Any], Any], Any]:
    def tamper(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs":
            for entry in result:
                if len(entry["topics"]) == 3:
                    topic = entry["topics"][position]
                    entry["topics"][position] = "0x" + "00" * 11 + "01" + topic[26:]
                    break
        return result

    return tamper


@pytest.mark.parametrize(
    ("tamper", "method", "detail"),
    [
        (_block_field("timestamp", TOO_WIDE), "eth_getBlockByNumber", "timestamp is 0xffff"),
        (_first_log_field("logIndex", TOO_WIDE), "eth_getLogs", "logIndex is 0xffff"),
        (_first_log_field("logIndex", hex(2**63)), "eth_getLogs", "logIndex is 0x8000000000000000"),
        (_first_tx_field("blockHash", "0x" + "ab" * 32), "eth_getBlockByNumber", "transaction 0 names block 0xabab"),
        (_first_tx_field("blockNumber", hex(MAINNET_BLOCK + 1)), "eth_getBlockByNumber", "names block number"),
        (_first_receipt_field("blockNumber", hex(MAINNET_BLOCK - 1)), "eth_getBlockReceipts", "names block number"),
        (_topic_word(1), "eth_getLogs", "topic 1 (from)"),
        (_topic_word(2), "eth_getLogs", "topic 2 (to)"),
    ],
)
async def test_evm_out_of_domain_and_foreign_fields_are_refused(
    tamper: Callable[..., Any], method: str, detail: str
) -> None:
    await assert_fetch_refused(evm_config, tamper, method, detail)


async def test_evm_values_up_to_uint256_are_accepted() -> None:
    def huge_value(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getBlockByNumber" and isinstance(result, dict):
            for tx in result["transactions"]:
                if tx["value"] != "0x0":
                    tx["value"] = TOO_WIDE
                    break
        return result

    async with RecordedNode(mainnet_17173049(), tamper=huge_value) as node:
        source = EvmSource(evm_config(node.url))
        await source.open()
        try:
            (block,) = await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
        finally:
            await source.close()
    assert max(t.amount for t in block.transfers) == 2**256 - 1


@pytest.mark.parametrize("height", [2**63, 2**64 - 1, -1])
async def test_bitcoin_heights_out_of_domain_are_refused(height: int) -> None:
    async with BitcoinRegtestServer() as node, FaultProxy(node.url) as proxy:
        node.chain.mine(3)
        source = BitcoinSource(btc_config(proxy.url, node=node), retry_for=0.5)
        await source.open()
        try:
            best = node.chain.tip.hash
            proxy.set(Fault("answer", methods=frozenset({"getblockheader"}), result={"hash": best, "height": height}))
            with pytest.raises(BadNodeAnswer) as caught:
                await source.tip()
        finally:
            await source.close()
    assert f"getblockheader {best}" in str(caught.value)
    assert "is not a block height" in str(caught.value)


# --- item 1: a deeply nested answer is a typed error, never a crash ---------------------------------

_DEEP_EVM = """
import asyncio, sys
import web3  # noqa: F401  (its py_ecc raises the recursion limit to 100,000, as in a process that has it)
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.evm import EvmSource
from depositwatch.chains.rpc import AnswerTooLarge, NodeRedirect
from depositwatch.config import ChainConfig

async def main(url: str, block: int) -> None:
    config = ChainConfig(name="eth", kind="evm", chain_id=1, rpc_urls=[url])
    source = EvmSource(config)
    await source.open()
    print("open", flush=True)
    input()  # the server turns hostile now
    for name, call in [
        ("tip", source.tip),
        ("hash_at", lambda: source.hash_at(block)),
        ("fetch", lambda: source.fetch(block, block + 1)),
        ("open", source.open),
    ]:
        try:
            await call()
        except BadNodeAnswer as exc:
            print(name, "BadNodeAnswer", str(exc)[:200], flush=True)
        else:
            print(name, "no error", flush=True)
    await source.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""

_DEEP_BTC = """
import asyncio, sys
import web3  # noqa: F401
from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.config import ChainConfig, Secret
from depositwatch.devnet import Anvil

async def main(url: str, user: str, password: str) -> None:
    config = ChainConfig(
        name="btc", kind="bitcoin", network="regtest", rpc_urls=[url], rpc_user=user,
        rpc_password=Secret(value=password),
    )
    source = BitcoinSource(config, retry_for=0.2)
    await source.open()
    print("open", flush=True)
    input()
    for name, call in [
        ("identity", source.identity),
        ("tip", source.tip),
        ("hash_at", lambda: source.hash_at(1)),
        ("fetch", lambda: source.fetch(1, 2)),
        ("open", source.open),
    ]:
        try:
            await call()
        except BadNodeAnswer as exc:
            print(name, "BadNodeAnswer", str(exc)[:200], flush=True)
        else:
            print(name, "no error", flush=True)
    await source.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def _run_hostile(script: str, args: list[str], turn: Callable[[], None]) -> tuple[int, list[str]]:
    """Run `script` in a fresh interpreter; call `turn` once it has opened its source."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        while (line := await process.stdout.readline()).strip() != b"open":  # log lines come first
            assert line, "the script ended before opening its source"
        turn()
        process.stdin.write(b"\n")
        await process.stdin.drain()
        out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = [line for line in out.decode().splitlines() if not line.startswith("20")]  # leave out log lines
    if process.returncode != 0:
        lines.append(err.decode()[-2000:])
    return process.returncode, lines


async def test_a_deeply_nested_answer_to_every_evm_call_is_a_bad_node_answer() -> None:
    async with RecordedNode(mainnet_17173049()) as node:
        deep = b"[" * 100_000 + b"]" * 100_000

        def turn() -> None:
            node.raw_body = deep

        code, lines = await _run_hostile(_DEEP_EVM, [node.url, str(MAINNET_BLOCK)], turn)
    assert code == 0, lines  # a stack overflow ends the process with 139 (SIGSEGV)
    assert [line.split()[:2] for line in lines] == [
        [name, "BadNodeAnswer"] for name in ("tip", "hash_at", "fetch", "open")
    ]


async def test_a_deeply_nested_answer_to_every_bitcoin_call_is_a_bad_node_answer() -> None:
    async with BitcoinRegtestServer() as node, FaultProxy(node.url) as proxy:
        node.chain.mine(3)
        code, lines = await _run_hostile(
            _DEEP_BTC, [proxy.url, node.user, node.password], lambda: proxy.set(Fault("deep"))
        )
    assert code == 0, lines
    assert [line.split()[:2] for line in lines] == [
        [name, "BadNodeAnswer"] for name in ("identity", "tip", "hash_at", "fetch", "open")
    ]
    assert all("recursion" in line or "not JSON" in line for line in lines), lines


async def test_ad_hoc_replay_survives_a_deeply_nested_chain_id(tmp_path: Path) -> None:
    watch = tmp_path / "watch.csv"
    watch.write_text("chain,address,status\neth,0x000000000000000000000000000000000000dEaD,active\n")
    async with RecordedNode(mainnet_17173049(), raw_body=b"[" * 100_000 + b"]" * 100_000) as node:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys, web3; from depositwatch.cli import main; sys.exit(main(sys.argv[1:]))",
            "replay",
            "--chain",
            "eth",
            "--rpc-url",
            node.url,
            "--watch",
            str(watch),
            "--from",
            "1",
            "--to",
            "2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    assert process.returncode == 2, (out, err)
    assert b"cannot read eth_chainId" in err
    assert b"Traceback" not in err


# --- item 4: answers longer than max_response_bytes -------------------------------------------------


async def test_an_endless_evm_answer_fails_the_request_with_answer_too_large() -> None:
    async with RecordedNode(mainnet_17173049()) as node, FaultProxy(node.url) as proxy:
        source = EvmSource(evm_config(proxy.url, max_response_bytes=1024 * 1024))
        await source.open()
        try:
            proxy.set(Fault("endless"))
            for call in (source.tip, lambda: source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)):
                with pytest.raises(AnswerTooLarge, match="longer than max_response_bytes = 1048576"):
                    await call()
        finally:
            await source.close()
    assert proxy.sent < 64 * 1024 * 1024  # the client hung up; it did not read on


async def test_an_endless_bitcoin_answer_and_rest_block_fail_with_answer_too_large() -> None:
    async with BitcoinRegtestServer() as node, FaultProxy(node.url) as proxy:
        node.chain.mine(3)
        config = btc_config(proxy.url, node=node, rest_url=proxy.url, max_response_bytes=1024 * 1024)
        source = BitcoinSource(config, retry_for=0.2)
        await source.open()
        try:
            proxy.set(Fault("endless"))
            with pytest.raises(AnswerTooLarge):
                await source.tip()
            with pytest.raises(AnswerTooLarge, match="REST"):
                await source.rpc.rest(f"/rest/block/{node.chain.tip.hash}.bin")
        finally:
            await source.close()


def test_the_size_cap_is_configurable_and_defaults_to_64_mib() -> None:
    assert evm_config("http://127.0.0.1:1").max_response_bytes == 64 * 1024 * 1024
    assert evm_config("http://127.0.0.1:1", max_response_bytes=2048).max_response_bytes == 2048


# --- item 7: no redirects, credentials only to the configured origin --------------------------------


class Recorder:
    """A loopback server that records every request it gets (the host a redirect points to)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, port = await serve(app)
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": "0x1"})


@pytest.mark.parametrize("status", [307, 308, 302])
async def test_evm_client_follows_no_redirect_and_sends_no_credentials_elsewhere(status: int) -> None:
    async with RecordedNode(mainnet_17173049()) as node, FaultProxy(node.url) as proxy, Recorder() as other:
        config = evm_config(proxy.url, rpc_user="watcher", rpc_password=Secret(value="s3cret-pw"))
        source = EvmSource(config)
        await source.open()
        try:
            proxy.set(Fault("redirect", status=status, location=other.url))
            with pytest.raises(NodeRedirect, match=f"HTTP {status}"):
                await source.tip()
            with pytest.raises(NodeRedirect):
                await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
        finally:
            await source.close()
    assert other.requests == []


async def test_bitcoin_client_follows_no_redirect_and_sends_no_credentials_elsewhere() -> None:
    async with BitcoinRegtestServer() as node, FaultProxy(node.url) as proxy, Recorder() as other:
        node.chain.mine(2)
        source = BitcoinSource(btc_config(proxy.url, node=node), retry_for=0.2)
        await source.open()
        try:
            proxy.set(Fault("redirect", status=307, location=other.url))
            with pytest.raises(NodeRedirect):
                await source.tip()
        finally:
            await source.close()
    assert other.requests == []


# --- item 12 and 6: failover across every URL, and the chain id checked again after it ------------


async def test_evm_source_fails_over_to_the_next_url() -> None:
    async with RecordedNode(mainnet_17173049()) as first, RecordedNode(mainnet_17173049()) as second:
        source = EvmSource(evm_config(first.url, second.url))
        await source.open()
        try:
            first.http_status = 503
            (block,) = await source.fetch(MAINNET_BLOCK, MAINNET_BLOCK + 1)
            assert (await source.tip()).height == MAINNET_BLOCK
        finally:
            await source.close()
    assert block.height == MAINNET_BLOCK and block.transfers
    assert "eth_chainId" in second.methods()  # asked again of the node failed over to
    assert "eth_getBlockByNumber" in second.methods()


async def test_a_node_on_another_chain_after_failover_is_wrong_chain() -> None:
    other_chain = mainnet_17173049()
    other_chain.chain_id = 5
    async with RecordedNode(mainnet_17173049()) as first, RecordedNode(other_chain) as second:
        source = EvmSource(evm_config(first.url, second.url))
        await source.open()
        try:
            first.http_status = 503
            with pytest.raises(WrongChain, match="reports chain id 5, config says 1"):
                await source.tip()
        finally:
            await source.close()


async def test_a_bitcoin_node_on_another_network_after_failover_is_wrong_chain() -> None:
    async with BitcoinRegtestServer() as node, FaultProxy(node.url) as first, FaultProxy(node.url) as second:
        node.chain.mine(2)
        source = BitcoinSource(btc_config(first.url, second.url, node=node), retry_for=0.5)
        await source.open()
        try:
            first.set(Fault("status", status=503))
            second.set(Fault("answer", methods=frozenset({"getblockchaininfo"}), result={"chain": "main"}))
            with pytest.raises(WrongChain, match="follows Bitcoin 'main'"):
                await source.tip()
        finally:
            await source.close()


# --- item 5: replay gives up on a permanently bad answer, and a chain switch is a clean exit ---------


async def _replay_cli(url: str, watch: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "depositwatch",
        "replay",
        "--chain",
        "devnet",
        "--rpc-url",
        url,
        "--chain-id",
        "31337",
        "--watch",
        str(watch),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for a state another process brings about (a proxy's counters), polling."""
    await eventually(condition, 30, "the proxy's counters", every=0.005)


async def _at_first_fetch(proxy: FaultProxy, fault: Fault) -> None:
    """Hold the follower's first fetch, switch `fault` on, let the fetch go on into it."""
    await _until(lambda: proxy.methods_seen["eth_blockNumber"] >= 1)  # the source's open
    fetching = proxy.hold({"eth_blockNumber"})  # the next one: the follower's first fetch
    await asyncio.wait_for(fetching.wait(), 60)
    proxy.set(fault)
    proxy.release()


def _watch_file(tmp_path: Path) -> Path:
    watch = tmp_path / "watch.csv"
    watch.write_text("chain,address,status\ndevnet,0x000000000000000000000000000000000000dEaD,active\n")
    return watch


async def test_replay_gives_up_on_a_permanently_bad_answer(tmp_path: Path) -> None:
    async with Anvil(chain_id=31337) as node, FaultProxy(node.http_url) as proxy:
        await node.mine(5)
        process = await _replay_cli(proxy.url, _watch_file(tmp_path), "--from", "1", "--to", "5")
        await _at_first_fetch(proxy, Fault("answer", methods=frozenset({"eth_getBlockByNumber"}), result={"x": 1}))
        try:
            _, err = await asyncio.wait_for(process.communicate(), 120)  # a guard only: it used to never end
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 1, err
    assert b"giving up after 6 failed attempts in a row" in err
    assert b"Traceback" not in err


async def test_replay_ends_cleanly_when_the_node_switches_chain(tmp_path: Path) -> None:
    async with Anvil(chain_id=31337) as node, FaultProxy(node.http_url) as proxy:
        await node.mine(5)
        process = await _replay_cli(proxy.url, _watch_file(tmp_path), "--from", "1", "--to", "5")
        await _at_first_fetch(proxy, Fault("status", status=503))  # the node goes away mid-fetch ...
        await _until(lambda: proxy.applied["status"] >= 1)
        proxy.set(Fault("chain_id", chain_id=5))  # ... and comes back on another chain
        try:
            _, err = await asyncio.wait_for(process.communicate(), 120)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 1, err
    assert b"reports chain id 5, config says 31337" in err
    assert b"Traceback" not in err


async def test_an_announced_length_above_the_cap_is_refused_before_reading() -> None:
    async with RecordedNode(mainnet_17173049()) as node:
        source = EvmSource(evm_config(node.url, max_response_bytes=300_000))
        await source.open()  # the start-up answers are smaller (the largest, the block's receipts: 239,291)
        try:
            node.raw_body = b'{"jsonrpc": "2.0", "id": 1, "result": "' + b"0" * 400_000 + b'"}'
            with pytest.raises(AnswerTooLarge, match="announced 400"):
                await source.tip()
        finally:
            await source.close()


async def test_read_timeout_is_configurable_and_a_silent_node_is_node_unavailable() -> None:
    async with RecordedNode(mainnet_17173049()) as node, FaultProxy(node.url) as proxy:
        source = EvmSource(evm_config(proxy.url, read_timeout=0.5))
        await source.open()
        try:
            proxy.set(Fault("hang"))
            with pytest.raises(NodeUnavailable, match="Timeout on reading data from socket"):
                await source.tip()
        finally:
            proxy.clear()
            await source.close()
