"""Key trees end to end: the daemon on anvil and on the Bitcoin stand-in, a tree revoked by the CLI while it
runs, a transfer to index 123,456 alerting with tree and index, and gap extension while running."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from depositwatch.addresses.derive import address_text, derive, watch_keys
from depositwatch.addresses.descriptors import KeyTree, parse_tree
from depositwatch.addresses.hd import parse_extended_public_key
from depositwatch.store import open_store
from tests.btcnode import BitcoinRegtestServer
from tests.daemon.test_daemon import SECRET, Daemon, Setup, _setup, free_port, launch, pay, reap, run_depositwatch, stop
from tests.receivers import Receiver
from tests.util import eventually

pytestmark = pytest.mark.filterwarnings("ignore:shutdown_timeout should be set on BaseRunner:DeprecationWarning")

XPUB = "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL"
TPUB = parse_extended_public_key(XPUB)[0].serialise("tpub")
HIT = 123_456


async def book_version(store_url: str) -> int:
    store = await open_store(store_url)
    try:
        return await store.address_book_version()
    finally:
        await store.close()


async def reloaded(daemon: Daemon, version: int, timeout: float = 60.0) -> None:
    """Wait until the daemon's log says its registry holds book `version` (or a later one)."""

    def loaded() -> bool:
        for line in daemon.output().splitlines():
            with_version = json.loads(line) if line.startswith("{") else {}
            if with_version.get("event") in ("address book reloaded", "address book loaded") and (
                with_version.get("version", -1) >= version
            ):
                return True
        return False

    await eventually(loaded, timeout, f"the daemon loading book version {version}", detail=daemon.output)


async def alert_for(receiver: Receiver, txid: str, timeout: float = 60.0) -> dict[str, Any]:
    """The `detected` alert of a transaction, once it arrives."""

    def found() -> list[dict[str, Any]]:
        bodies = (received.json() for received in receiver.accepted)
        return [b for b in bodies if b["txid"] == txid and b["event"] == "detected"]

    seen = lambda: str([r.json() for r in receiver.accepted])  # noqa: E731
    await eventually(lambda: bool(found()), timeout, f"the alert for {txid}", detail=seen)
    return found()[0]


@pytest.fixture
async def sqlite_setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async for s in _setup(tmp_path, f"sqlite:///{tmp_path}/state.db"):
        yield s


def key_at(tree: KeyTree, index: int) -> bytes:
    return next(key for _, key in derive(tree, index, index + 1))


async def test_tree_on_anvil_revoked_while_running_and_grown_by_its_gap(sqlite_setup: Setup) -> None:
    """An active EVM tree (indexes 100,000-123,500, gap 100) is revoked by `addresses revoke --descriptor`
    while the daemon runs; ETH to index 123,456 alerts naming the tree and the index and grows the range
    to 123,556; once the daemon has reloaded, ETH to index 123,550 (beyond the imported range) alerts too."""
    s = sqlite_setup
    text = f"[d34db33f/44h/60h/0h]{XPUB}/0/*"
    tree = parse_tree("evm", text)
    csv = s.tmp / "trees.csv"
    csv.write_text(f"chain,descriptor,range,gap,status,label,owner\neth,{text},100000-123500,100,active,hot,ops\n")
    await run_depositwatch("addresses", "import", str(csv), "--store", s.store_url)
    daemon = await s.start(s.config())
    await run_depositwatch(
        "addresses", "revoke", "--chain", "eth", "--descriptor", text, "--at", "2021-01-01T00:00:00Z",
        "--reason", "account key leaked", "--store", s.store_url,
    )  # fmt: skip
    await reloaded(daemon, await book_version(s.store_url))
    [txid] = await pay(s.node, address_text(tree, key_at(tree, HIT)), 1)
    body = await alert_for(s.receiver, txid)
    assert body["kind"] == "revoked_incoming"
    assert body["tree"]["descriptor"] == tree.descriptor and body["tree"]["index"] == HIT
    assert body["address"]["label"] == "hot" and body["address"]["address"] == address_text(tree, key_at(tree, HIT))
    listing = await run_depositwatch("addresses", "list", "--format", "json", "--store", s.store_url)
    [row] = [json.loads(line) for line in listing.splitlines() if "descriptor" in line]
    assert row["range"] == f"100000-{HIT + 100}" and row["keys"] == HIT + 100 - 100000 + 1
    await reloaded(daemon, await book_version(s.store_url))
    [beyond] = await pay(s.node, address_text(tree, key_at(tree, HIT + 94)), 1)
    assert (await alert_for(s.receiver, beyond))["tree"]["index"] == HIT + 94
    matches = await run_depositwatch("matches", "list", "--format", "json", "--store", s.store_url)
    assert {HIT, HIT + 94} <= {json.loads(line).get("tree_index") for line in matches.splitlines()}
    table = await run_depositwatch("matches", "list", "--store", s.store_url)
    assert f"/{HIT}" in table and "TREE" in table.splitlines()[0]
    assert await stop(daemon) == 0


async def btc_config(
    tmp_path: Path, store_url: str, node: BitcoinRegtestServer, receiver: Receiver, book: Path
) -> Path:
    """A daemon's config on the Bitcoin stand-in from its next block (no mempool), alerting to `receiver`;
    `book` imported into the store at `store_url`."""
    chain = node.chain
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nurl = "{store_url}"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n[alerts]\npoll_interval = 0.05\n'
        '[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
        f'rpc_urls = ["{node.url}"]\nrpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
        f"confirmations = 2\npoll_interval = 0.1\nstart_height = {chain.height + 1}\nmempool = false\n"
        f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\nsecret = {{ value = "{SECRET}" }}\n'
        "retry = { initial_backoff = 0.05, max_backoff = 0.5 }\n"
    )
    await run_depositwatch("--config", str(config), "addresses", "import", str(book))
    return config


async def test_tree_on_bitcoin_pkh_pays_its_p2pk_and_wpkh_index_123456(tmp_path: Path, pg_url: str) -> None:
    """On the Bitcoin stand-in (regtest, PostgreSQL): a wpkh(tpub) tree revoked while running alerts for
    index 123,456 and grows by its gap; a pkh tree alerts for a bare P2PK output of one of its keys."""
    async with BitcoinRegtestServer() as node, Receiver() as receiver:
        chain = node.chain
        chain.mine(101)
        wpkh_text, pkh_text = f"wpkh({TPUB}/0/*)", f"pkh({TPUB}/1/*)"
        wpkh, pkh = parse_tree("bitcoin", wpkh_text), parse_tree("bitcoin", pkh_text)
        csv = tmp_path / "trees.csv"
        csv.write_text(
            "chain,descriptor,range,gap,status,label,owner,revoked_at,reason\n"
            f"btc,{wpkh_text},123000-123500,50,active,hot,ops,,\n"
            f"btc,{pkh_text},0-9,,revoked,legacy,ops,2020-01-01T00:00:00Z,breach\n"
        )
        config = await btc_config(tmp_path, pg_url, node, receiver, csv)
        daemon = launch(config, tmp_path, 0)
        try:
            await daemon.notify.wait_for("READY=1")
            await run_depositwatch(
                "--config", str(config), "addresses", "revoke", "--chain", "btc", "--descriptor", wpkh_text,
                "--at", "2021-01-01T00:00:00Z", "--reason", "seed leaked",
            )  # fmt: skip
            await reloaded(daemon, await book_version(pg_url))
            hit = chain.send([(key_at(wpkh, HIT), 50_000)])
            chain.mine(1)
            body = await alert_for(receiver, hit.txid)
            assert (body["tree"]["descriptor"], body["tree"]["index"]) == (wpkh.descriptor, HIT)
            assert body["address"]["address"] == address_text(wpkh, key_at(wpkh, HIT), "regtest")
            await reloaded(daemon, await book_version(pg_url))
            beyond = chain.send([(key_at(wpkh, HIT + 50), 40_000)])
            chain.mine(1)
            assert (await alert_for(receiver, beyond.txid))["tree"]["index"] == HIT + 50
            p2pk = [key for _, key in watch_keys(pkh, 5, 6)][1]
            bare = chain.send([(p2pk, 30_000)])
            chain.mine(1)
            body = await alert_for(receiver, bare.txid)
            assert (body["tree"]["descriptor"], body["tree"]["index"]) == (pkh.descriptor, 5)
            assert body["address"]["label"] == "legacy"
            assert await stop(daemon) == 0, daemon.output()
        finally:
            reap([daemon])


async def test_tree_grown_by_a_transfer_matches_one_beyond_its_range_in_the_same_block(tmp_path: Path) -> None:
    """On the Bitcoin stand-in, whose source decodes only the outputs paying watched scripts: a block
    pays index 123,456 of a revoked wpkh() tree (range 123,000-123,500, gap 50) and, in the same block,
    index 123,506, beyond the range until the first payment grows it. Both alert, naming their index:
    the follower grows the tree before committing the block, reloads the book and reads the block again."""
    async with BitcoinRegtestServer() as node, Receiver() as receiver:
        chain = node.chain
        chain.mine(101)
        text = f"wpkh({TPUB}/0/*)"
        wpkh = parse_tree("bitcoin", text)
        csv = tmp_path / "trees.csv"
        csv.write_text(
            "chain,descriptor,range,gap,status,label,owner,revoked_at,reason\n"
            f"btc,{text},123000-123500,50,revoked,hot,ops,2021-01-01T00:00:00Z,seed leaked\n"
        )
        config = await btc_config(tmp_path, f"sqlite:///{tmp_path}/state.db", node, receiver, csv)
        daemon = launch(config, tmp_path, 0)
        try:
            await daemon.notify.wait_for("READY=1")
            hit = chain.send([(key_at(wpkh, HIT), 50_000)])
            beyond = chain.send([(key_at(wpkh, HIT + 50), 40_000)])
            chain.mine(1)
            for txid, index in ((hit.txid, HIT), (beyond.txid, HIT + 50)):
                body = await alert_for(receiver, txid)
                assert (body["kind"], body["tree"]["index"]) == ("revoked_incoming", index), body
                assert body["block"]["height"] == chain.height, body
            listing = await run_depositwatch("--config", str(config), "addresses", "list", "--format", "json")
            [row] = [json.loads(line) for line in listing.splitlines() if "descriptor" in line]
            assert row["range"] == f"123000-{HIT + 100}"  # grown again by the second payment
            assert await stop(daemon) == 0, daemon.output()
        finally:
            reap([daemon])


async def test_tron_tree_alerts_for_trx_and_usdt_and_grows_within_one_block(tmp_path: Path) -> None:
    """The daemon on the TRON test node with a revoked TRON tree (indexes 0-9, gap 5): one block pays TRX
    to index 8, which grows the range to 13, and USDT to index 12. Both alert, naming the tree and
    their index."""
    from depositwatch.chains.tron_wire import tx_id
    from tests.daemon.test_daemon import Setup
    from tests.tronnode.chain import TronChain, account, trc20, trx
    from tests.tronnode.server import TronNodeServer

    text = f"[d34db33f/44h/195h/0h]{XPUB}/0/*"
    tree = parse_tree("tron", text)
    customer, usdt = account(1), account(500)
    async with TronNodeServer(TronChain()) as node, Receiver() as receiver:
        chain = node.chain
        csv = tmp_path / "trees.csv"
        csv.write_text(
            f"chain,descriptor,range,gap,status,label,owner,revoked_at,reason\n"
            f"tron,{text},0-9,5,revoked,hot,ops,2020-01-01T00:00:00Z,seed leaked\n"
        )
        config = tmp_path / "config.toml"
        config.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path}/state.db"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
            '[alerts]\npoll_interval = 0.05\n[[chains]]\nname = "tron"\nkind = "tron"\nnetwork = "testnode"\n'
            f'rpc_urls = ["{node.url}"]\npoll_interval = 0.1\nstart_height = {chain.tip + 1}\ninternal = false\n'
            f'tokens = [{{ symbol = "USDT", contract = "{address_text(tree, usdt)}", decimals = 6 }}]\n'
            + Setup.sink(receiver.url)
        )
        await run_depositwatch("--config", str(config), "addresses", "import", str(csv))
        daemon = launch(config, tmp_path, 0)
        try:
            await daemon.notify.wait_for("READY=1")
            hit, beyond = trx(customer, key_at(tree, 8), 5_000_000), trc20(customer, key_at(tree, 12), usdt, 250)
            hit.nonce, beyond.nonce = chain.next_nonce(), chain.next_nonce()
            chain.mine([hit, beyond], count=3)
            for tx, asset, index in ((hit, "TRX", 8), (beyond, "USDT", 12)):
                body = await alert_for(receiver, tx_id(tx.raw()).hex())
                assert (body["kind"], body["asset"]["symbol"], body["tree"]["index"]) == (
                    "revoked_incoming", asset, index
                ), body  # fmt: skip
                assert body["tree"]["descriptor"] == tree.descriptor
                assert body["address"]["address"] == address_text(tree, key_at(tree, index))
            assert await stop(daemon) == 0, daemon.output()
        finally:
            reap([daemon])
