"""Replay over key trees, the ad-hoc form: `--watch` takes tree rows, on the Bitcoin stand-in and on anvil;
every line names the tree and index, and a transfer before the revocation is a deposit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from depositwatch.addresses.derive import address_text, derive
from depositwatch.addresses.descriptors import KeyTree, parse_trees
from depositwatch.addresses.hd import parse_extended_public_key
from depositwatch.cli import main
from depositwatch.devnet import Anvil
from tests.btcnode import BitcoinRegtestServer
from tests.daemon.test_daemon import pay

XPUB = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
UPUB = parse_extended_public_key(XPUB)[0].serialise("upub")  # SLIP-132: sh(wpkh) on the test networks


def key_at(tree: KeyTree, index: int) -> bytes:
    return next(key for _, key in derive(tree, index, index + 1))


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def replay_lines(tmp_path: Path, watch_csv: str, *argv: str) -> list[dict[str, Any]]:
    """`depositwatch replay ARGV --watch W --output O`, W holding `watch_csv`: it exits 0; O's lines."""
    watch = tmp_path / "watch.csv"
    watch.write_text(watch_csv)
    out = tmp_path / "out.jsonl"
    assert await run_cli("replay", *argv, "--watch", str(watch), "--output", str(out)) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


async def anvil_replay_lines(node: Anvil, tmp_path: Path, watch_csv: str) -> list[dict[str, Any]]:
    """The ad-hoc replay of anvil's blocks 1 to the tip; the output's lines."""
    tip = await node.w3.eth.block_number
    argv = ["--chain", "eth", "--from", "1", "--to", str(tip), "--rpc-url", node.http_url, "--chain-id", "31337"]
    return await replay_lines(tmp_path, watch_csv, *argv)


async def test_ad_hoc_bitcoin_replay_over_a_multipath_slip132_tree(tmp_path: Path) -> None:
    """`[origin]upub/<0;1>/*` is two trees (receive and change), sh(wpkh) by the key's version: payments to
    receive index 7 and change index 3 replay as revoked_incoming lines naming each tree and index."""
    async with BitcoinRegtestServer() as node:
        chain = node.chain
        chain.mine(101)
        text = f"[d34db33f/49h/1h/0h]{UPUB}/<0;1>/*"
        receive, change = parse_trees("bitcoin", text)
        first = chain.height + 1
        one = chain.send([(key_at(receive, 7), 11_000)])
        two = chain.send([(key_at(change, 3), 22_000)])
        chain.mine(1)
        url = node.url.replace("http://", f"http://{node.user}:{node.password}@")
        lines = await replay_lines(
            tmp_path,
            f"chain,descriptor,range,status,label,revoked_at\nbtc,{text},0-9,revoked,leaked,2020-01-01T00:00:00Z\n",
            "--chain", "btc", "--from", str(first), "--to", str(chain.height), "--rpc-url", url, "--network", "regtest",
        )  # fmt: skip
        found = {(line["txid"], line["kind"], line["tree_index"], line["address"]) for line in lines}
        assert found == {
            (one.txid, "revoked_incoming", 7, address_text(receive, key_at(receive, 7), "regtest")),
            (two.txid, "revoked_incoming", 3, address_text(change, key_at(change, 3), "regtest")),
        }
        assert address_text(receive, key_at(receive, 7), "regtest").startswith("2")  # P2SH on regtest
        assert len({line["tree_id"] for line in lines}) == 2


async def test_ad_hoc_evm_replay_over_a_tree_revoked_after_the_first_payment(tmp_path: Path) -> None:
    """On anvil, an EVM tree revoked at a time between two payments to index 42: the first replays as a
    deposit, the second as revoked_incoming, both naming index 42."""
    async with Anvil(chain_id=31337) as node:
        text = f"{XPUB}/0/*"
        [tree] = parse_trees("evm", text)
        target = address_text(tree, key_at(tree, 42))
        [early] = await pay(node, target, 1)
        block = await node.w3.eth.get_block("latest")
        await node.w3.provider.make_request("evm_increaseTime", [3600])  # type: ignore[arg-type]
        [late] = await pay(node, target, 1)
        revoked_at = int(block["timestamp"]) + 1800
        watch_csv = f"chain,descriptor,range,status,revoked_at\neth,{text},0-99,revoked,{revoked_at}\n"
        lines = await anvil_replay_lines(node, tmp_path, watch_csv)
        assert sorted((line["txid"], line["kind"], line["tree_index"]) for line in lines) == sorted(
            [(early, "deposit", 42), (late, "revoked_incoming", 42)]
        )


async def test_ad_hoc_evm_replay_grows_a_tree_by_its_gap_during_the_run(tmp_path: Path) -> None:
    """On anvil, a revoked EVM tree of indexes 0-9 with gap 5 (a book small enough for the node to filter
    the logs by its keys): ETH to index 8 grows it to 13 while the replay runs, so ETH to index 12 in a
    later block of the same run replays too, naming its index."""
    async with Anvil(chain_id=31337) as node:
        text = f"{XPUB}/0/*"
        [tree] = parse_trees("evm", text)
        [hit] = await pay(node, address_text(tree, key_at(tree, 8)), 1)
        [beyond] = await pay(node, address_text(tree, key_at(tree, 12)), 1)
        watch_csv = f"chain,descriptor,range,gap,status,revoked_at\neth,{text},0-9,5,revoked,1600000000\n"
        lines = await anvil_replay_lines(node, tmp_path, watch_csv)
        assert sorted((line["txid"], line["kind"], line["tree_index"]) for line in lines) == sorted(
            [(hit, "revoked_incoming", 8), (beyond, "revoked_incoming", 12)]
        )


async def test_ad_hoc_tron_replay_over_a_tree_grown_within_one_block(tmp_path: Path) -> None:
    """On the TRON test node, a revoked TRON tree of indexes 0-9 with gap 5: USDT to index 3, then one
    block paying TRX to index 8 (which grows the range to 13) and to index 12. Every line names its
    index: the one beyond the imported range too, in the block that grew it."""
    from depositwatch.chains.tron_wire import tx_id
    from tests.tronnode.chain import TronChain, account, trc20, trx
    from tests.tronnode.server import TronNodeServer

    [tree] = parse_trees("tron", f"{XPUB}/0/*")
    customer, usdt = account(1), account(500)
    async with TronNodeServer(TronChain()) as node:
        chain = node.chain
        first = chain.tip + 1
        token = trc20(customer, key_at(tree, 3), usdt, 250_000_000)
        token.nonce = chain.next_nonce()
        chain.mine([token], count=2)
        hit, beyond = trx(customer, key_at(tree, 8), 5_000_000), trx(customer, key_at(tree, 12), 7_000_000)
        hit.nonce, beyond.nonce = chain.next_nonce(), chain.next_nonce()
        chain.mine([hit, beyond], count=2)
        lines = await replay_lines(
            tmp_path,
            f"chain,descriptor,range,gap,status,revoked_at\ntron,{XPUB}/0/*,0-9,5,revoked,2020-01-01T00:00:00Z\n",
            "--chain", "tron", "--from", str(first), "--to", str(chain.tip), "--rpc-url", node.url,
            "--token", f"USDT:{address_text(tree, usdt)}:6",
        )  # fmt: skip
        assert sorted((line["txid"], line["kind"], line["asset"], line["tree_index"]) for line in lines) == sorted(
            [
                (tx_id(token.raw()).hex(), "revoked_incoming", "USDT", 3),
                (tx_id(hit.raw()).hex(), "revoked_incoming", "TRX", 8),
                (tx_id(beyond.raw()).hex(), "revoked_incoming", "TRX", 12),
            ]
        )
        assert {line["address"] for line in lines} == {address_text(tree, key_at(tree, i)) for i in (3, 8, 12)}
