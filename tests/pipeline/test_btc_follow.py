"""Following Bitcoin end to end: the regtest stand-in, BitcoinSource, the real Follower with the
OutputTracker hook, the MempoolWatcher and the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from depositwatch.addresses import parse_bitcoin_address
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.commands import btc as btc_command
from depositwatch.config import AlertsConfig, ChainConfig
from depositwatch.follower import Follower
from depositwatch.mempool import MempoolWatcher
from depositwatch.models import AddressEntry, AddressStatus
from depositwatch.pipeline import make_policy
from depositwatch.registry import AddressRegistry
from depositwatch.store import Scope, SqlStore
from depositwatch.sweeps import OutputTracker
from tests.btcnode import BitcoinRegtestServer, p2pkh, p2sh, p2tr, p2wpkh, p2wsh, script_to_address
from tests.chains.test_btc_source import SCRIPT_MAKERS, btc_config, script_of, source_for
from tests.pipeline.rigs import live_follower
from tests.util import eventually

REVOKED_AT = int(time.time()) - 3600
OTHER = p2wpkh(b"\xee" * 20)


def entry(script: bytes, status: AddressStatus, label: str) -> AddressEntry:
    address = script_to_address(script, "regtest")
    assert address is not None
    parsed = parse_bitcoin_address(address, "regtest")
    assert parsed.key == script
    return AddressEntry(
        chain="btc",
        address=parsed.address,
        key=parsed.key,
        status=status,
        label=label,
        owner=f"owner-{label}",
        revoked_at=REVOKED_AT if status is AddressStatus.REVOKED else None,
        type=parsed.type,
    )


async def load_book(store: SqlStore, active: list[bytes], revoked: list[bytes]) -> AddressRegistry:
    entries = [entry(s, AddressStatus.ACTIVE, f"a{i}") for i, s in enumerate(active)]
    entries += [entry(s, AddressStatus.REVOKED, f"r{i}") for i, s in enumerate(revoked)]
    await store.import_addresses(list(enumerate(entries, 1)))
    return await AddressRegistry.load(store, ["btc"])


def grace(config: ChainConfig, seconds: float) -> ChainConfig:
    """The chain's config with another mempool drop grace."""
    return config.model_copy(update={"mempool_drop_grace": seconds})


class Clock:
    """A clock the test moves by hand (the mempool watcher's drop grace)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    """A follower (and a mempool watcher) on one regtest node and one store."""

    def __init__(self, node: BitcoinRegtestServer, store: SqlStore, registry: AddressRegistry, **config: Any) -> None:
        self.node = node
        self.store = store
        self.registry = registry
        self.config: ChainConfig = btc_config(node, **config)
        self.source: BitcoinSource | None = None
        self.follower: Follower | None = None

    async def start(self, *, start_height: int | None = None, watched: bool = True) -> Follower:
        self.source = source_for(self.config)
        await self.source.open()
        hook = OutputTracker("btc", "BTC", "regtest")
        if watched:
            self.source.watch(self.registry, hook)
        self.follower = live_follower(self.source, self.store, self.config, self.registry, start_height, hook)
        await self.follower.start()
        return self.follower

    def watcher(
        self, *, drop_grace: float | None = None, caught_up: Callable[[], bool] | None = None, **options: Any
    ) -> MempoolWatcher:
        """A mempool watcher on the rig's source; caught up when the follower is (by default)."""
        assert self.source is not None and self.follower is not None
        follower = self.follower
        return MempoolWatcher(
            self.source,
            self.store,
            self.registry,
            make_policy(self.config, AlertsConfig()),
            Scope.live(),
            self.config if drop_grace is None else grace(self.config, drop_grace),
            (lambda: follower.lag == 0) if caught_up is None else caught_up,
            **options,
        )

    async def drain(self) -> int:
        """Step until the cursor is the node's tip (a reorg step commits nothing but rewinds)."""
        assert self.follower is not None
        total = 0
        for _ in range(100):
            cursor = self.follower.cursor
            if cursor is not None and cursor.hash == self.node.chain.tip.hash:
                return total
            total += await self.follower.step()
        raise AssertionError("the follower does not reach the tip")

    async def stop(self) -> None:
        if self.source is not None:
            await self.source.close()
            self.source = None


@contextlib.asynccontextmanager
async def following(
    node: BitcoinRegtestServer,
    store: SqlStore,
    active: list[bytes],
    revoked: list[bytes],
    *,
    watched: bool = True,
    **config: Any,
) -> AsyncIterator[Rig]:
    """A rig on a book of `active` and `revoked` scripts, following from the block after the tip;
    stopped on leaving."""
    registry = await load_book(store, active, revoked)
    rig = Rig(node, store, registry, **config)
    await rig.start(start_height=node.chain.height + 1, watched=watched)
    try:
        yield rig
    finally:
        await rig.stop()


@pytest.fixture
async def node() -> AsyncIterator[BitcoinRegtestServer]:
    async with BitcoinRegtestServer() as server:
        server.chain.mine(110)
        yield server


async def events(store: SqlStore, alert_id: str) -> list[tuple[str, int, bool]]:
    """(event, confirmations, mempool) of an alert's messages, oldest first."""
    messages = sorted(
        (m for m in await store.outbox.messages(limit=1000) if m.alert_id == alert_id), key=lambda m: m.rev
    )
    out = []
    for m in messages:
        payload = json.loads(m.payload)
        out.append((m.event, payload["confirmations"], payload["mempool"]))
    return out


@pytest.mark.parametrize("watched", [True, False], ids=["watched-path", "full-blocks"])
async def test_deposits_of_every_script_type_are_recorded(
    node: BitcoinRegtestServer, store: SqlStore, watched: bool
) -> None:
    scripts = [script_of(kind, 3) for kind in SCRIPT_MAKERS]
    assert [s[:2] for s in scripts] == [p2pkh(bytes(20))[:2], p2sh(bytes(20))[:2], p2wpkh(bytes(20))[:2],
                                        p2wsh(bytes(32))[:2], p2tr(bytes(32))[:2]]  # fmt: skip
    async with following(node, store, scripts, [], watched=watched) as rig:
        tx = node.chain.send([(s, 20_000 + i) for i, s in enumerate(scripts)] + [(OTHER, 5_000)])
        (block,) = node.chain.mine()
        assert await rig.drain() == 1
        rows = await store.matches(Scope.live(), chain="btc")
        assert [(r["kind"], r["txid"], r["idx"], r["status"]) for r in rows] == [
            ("deposit", tx.txid, i, "seen") for i in range(5)
        ]
        for i, row in enumerate(rows):
            assert row["to_address"] == script_to_address(scripts[i], "regtest")
            assert row["amount"] == str(20_000 + i) and row["label"] == f"a{i}"
            assert (row["block_height"], row["block_hash"]) == (block.height, block.hash)
        node.chain.mine(2)
        assert await rig.drain() == 2
        rows = await store.matches(Scope.live(), chain="btc")
        assert {r["status"] for r in rows} == {"confirmed"}
        # a deposit is announced once, when final
        assert [m.event for m in await store.outbox.messages(limit=100, kind="deposit")] == ["confirmed"] * 5


async def test_revoked_incoming_in_the_mempool_then_mined_then_confirmed(
    node: BitcoinRegtestServer, store: SqlStore
) -> None:
    revoked = script_of("p2wpkh", 9)
    async with following(node, store, [], [revoked]) as rig:
        watcher = rig.watcher(drop_grace=0)
        tx = node.chain.send([(revoked, 70_000), (OTHER, 1_000)])
        assert await watcher.step() == 1
        (row,) = await store.matches(Scope.live())
        assert (row["kind"], row["status"], row["txid"], row["idx"]) == ("revoked_incoming", "mempool", tx.txid, 0)
        assert await events(store, row["id"]) == [("detected", 0, True)]
        assert await watcher.step() == 0  # nothing new
        node.chain.mine()
        assert await watcher.step() == 0  # gone from the mempool, but mined: the follower's business
        assert await rig.drain() == 1
        assert await events(store, row["id"]) == [("detected", 0, True), ("mined", 1, False)]
        node.chain.mine(2)
        await rig.drain()
        assert await watcher.step() == 0
        assert await events(store, row["id"]) == [("detected", 0, True), ("mined", 1, False), ("confirmed", 3, False)]
        (row,) = await store.matches(Scope.live())
        assert row["status"] == "confirmed"


async def test_sweeps_are_revoked_outgoing_in_the_mempool_and_in_blocks(
    node: BitcoinRegtestServer, store: SqlStore
) -> None:
    revoked = script_of("p2tr", 4)
    async with following(node, store, [], [revoked]) as rig:
        watcher = rig.watcher()
        funding = node.chain.send([(OTHER, 3_000), (revoked, 90_000)])
        node.chain.mine()
        await rig.drain()
        assert await watcher.step() == 0
        # the attacker sweeps it, with another coin as first input: the sweep's index is the input index
        other_coin = node.chain.send([(OTHER, 40_000)])
        node.chain.mine()
        await rig.drain()
        sweep = node.chain.spend([(other_coin.txid, 0), (funding.txid, 1)], [(OTHER, 129_000)])
        assert await watcher.step() == 1
        outgoing = await store.matches(Scope.live(), kind=None)
        (row,) = [r for r in outgoing if r["kind"] == "revoked_outgoing"]
        assert (row["txid"], row["idx"], row["amount"], row["status"]) == (sweep.txid, 1, "90000", "mempool")
        assert row["from_address"] == script_to_address(revoked, "regtest") and row["to_address"] is None
        node.chain.mine()
        await rig.drain()
        (row,) = [r for r in await store.matches(Scope.live()) if r["kind"] == "revoked_outgoing"]
        assert (row["status"], row["block_height"]) == ("seen", node.chain.height)
        assert [e[0] for e in await events(store, row["id"])] == ["detected", "mined"]
        assert await store.watched_outputs("btc") == []  # spent


async def test_a_deposit_and_its_sweep_both_in_the_mempool(node: BitcoinRegtestServer, store: SqlStore) -> None:
    revoked = script_of("p2pkh", 5)
    async with following(node, store, [], [revoked]) as rig:
        watcher = rig.watcher()
        pay = node.chain.send([(revoked, 50_000)])
        sweep = node.chain.spend([(pay.txid, 0)], [(OTHER, 49_000)])
        assert await watcher.step() == 2
        kinds = {(r["kind"], r["txid"]) for r in await store.matches(Scope.live())}
        assert kinds == {("revoked_incoming", pay.txid), ("revoked_outgoing", sweep.txid)}
        node.chain.mine()  # both in one block: the tracker sees the spend of an output of the same block
        await rig.drain()
        rows = await store.matches(Scope.live())
        assert {(r["kind"], r["status"]) for r in rows} == {("revoked_incoming", "seen"), ("revoked_outgoing", "seen")}


async def test_a_reorg_that_drops_a_match_retracts_it(node: BitcoinRegtestServer, store: SqlStore) -> None:
    revoked = script_of("p2sh", 6)
    active = script_of("p2wsh", 6)
    async with following(node, store, [active], [revoked], confirmations=1) as rig:
        tx = node.chain.send([(revoked, 11_000), (active, 12_000)])
        node.chain.mine()
        await rig.drain()
        rows = {r["kind"]: r for r in await store.matches(Scope.live())}
        assert rows["revoked_incoming"]["status"] == "confirmed" and rows["deposit"]["status"] == "confirmed"
        node.chain.reorg(1)  # a longer branch without the transaction (it waits in the mempool)
        assert tx.txid in node.chain.mempool
        await rig.drain()
        rows = {r["kind"]: r for r in await store.matches(Scope.live())}
        assert rows["revoked_incoming"]["status"] == "retracted" and rows["deposit"]["status"] == "retracted"
        assert [e[0] for e in await events(store, rows["revoked_incoming"]["id"])] == [
            "detected",
            "confirmed",
            "retracted",
        ]
        assert [e[0] for e in await events(store, rows["deposit"]["id"])] == ["confirmed", "retracted"]
        assert rig.follower is not None and rig.follower.cursor is not None
        assert rig.follower.cursor.hash == node.chain.tip.hash
        node.chain.mine()  # re-mined on the new branch: the same ids come back
        await rig.drain()
        rows = {r["kind"]: r for r in await store.matches(Scope.live())}
        assert rows["revoked_incoming"]["status"] == "confirmed"
        assert rows["revoked_incoming"]["block_hash"] == node.chain.tip.hash


async def test_a_replaced_mempool_transaction_is_retracted_after_the_grace_period_only_when_caught_up(
    node: BitcoinRegtestServer, store: SqlStore
) -> None:
    revoked = script_of("p2wsh", 7)
    async with following(node, store, [], [revoked]) as rig:
        caught_up = {"value": False}
        clock = Clock()
        watcher = rig.watcher(drop_grace=0.5, caught_up=lambda: caught_up["value"], clock=clock)
        original = node.chain.send([(revoked, 30_000)])
        assert await watcher.step() == 1
        (row,) = await store.matches(Scope.live())
        inputs = [(i.prev_txid_hex, i.prev_vout) for i in original.inputs]
        change = sum(node.chain.utxo[o].value for o in inputs) - 2_000
        replacement = node.chain.spend(inputs, [(OTHER, change)], submit=False)
        node.chain.replace_tx(original.txid, replacement)
        assert await watcher.step() == 0  # absent, but not for the grace period yet
        clock.now += 0.25
        assert await watcher.step() == 0  # still not
        clock.now += 0.25
        assert await watcher.step() == 0  # the follower is not caught up: wait
        caught_up["value"] = True
        assert await watcher.step() == 1
        (row,) = await store.matches(Scope.live())
        assert row["status"] == "retracted"
        assert [e[0] for e in await events(store, row["id"])] == ["detected", "retracted"]
        node.chain.mine()
        await rig.drain()
        assert (await store.matches(Scope.live()))[0]["status"] == "retracted"


async def test_a_mined_transaction_is_never_dropped(node: BitcoinRegtestServer, store: SqlStore) -> None:
    revoked = script_of("p2wpkh", 8)
    async with following(node, store, [], [revoked]) as rig:
        clock = Clock()
        watcher = rig.watcher(drop_grace=0.2, caught_up=lambda: True, clock=clock)
        node.chain.send([(revoked, 30_000)])
        assert await watcher.step() == 1
        node.chain.mine()  # mined, and the watcher sees it gone before the follower commits the block
        assert await watcher.step() == 0
        clock.now += 0.25  # past the grace period
        await rig.drain()  # the block commit wins
        assert await watcher.step() == 0
        (row,) = await store.matches(Scope.live())
        assert row["status"] == "seen"
        assert [e[0] for e in await events(store, row["id"])] == ["detected", "mined"]


async def test_a_restart_after_downtime_catches_up_with_no_gap(node: BitcoinRegtestServer, store: SqlStore) -> None:
    active = [script_of(k, 11) for k in SCRIPT_MAKERS]
    revoked = [script_of(k, 12) for k in SCRIPT_MAKERS]
    registry = await load_book(store, active, revoked)
    first = Rig(node, store, registry, batch_blocks=3)
    await first.start(start_height=node.chain.height + 1)
    paid: list[tuple[str, int]] = []
    for i in range(4):
        tx = node.chain.send([(active[i], 10_000 + i), (revoked[i], 20_000 + i)])
        paid += [(tx.txid, 0), (tx.txid, 1)]
        node.chain.mine()
    await first.drain()
    await first.stop()
    await node.go_down()  # the node restarts too while we are away, and blocks keep coming
    for i in range(10):
        tx = node.chain.send([(active[i % 5], 30_000 + i), (revoked[i % 5], 40_000 + i)])
        paid += [(tx.txid, 0), (tx.txid, 1)]
        node.chain.mine()
    await node.come_up()
    second = Rig(node, store, registry, batch_blocks=3)
    follower = await second.start(start_height=0)  # the stored cursor wins over the start height
    try:
        assert follower.cursor is not None and follower.cursor.height == node.chain.height - 10
        await second.drain()
        rows = await store.matches(Scope.live())
        assert sorted((r["txid"], r["idx"]) for r in rows) == sorted(paid)
        assert len({r["id"] for r in rows}) == len(paid) == 28
        heights = sorted({r["block_height"] for r in rows})
        assert heights == list(range(heights[0], heights[0] + 14))
    finally:
        await second.stop()


async def test_the_follower_rides_out_a_node_outage(node: BitcoinRegtestServer, store: SqlStore) -> None:
    revoked = script_of("p2pkh", 13)
    async with following(node, store, [], [revoked]) as rig:
        follower = rig.follower
        assert follower is not None
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(follower.run())
            try:
                await node.go_down()
                for _ in range(3):
                    node.chain.send([(revoked, 15_000)])
                    node.chain.mine()
                await eventually(lambda: follower.failures >= 1, 10, "the follower failing while the node is down")
                await node.come_up()
                await eventually(
                    lambda: follower.cursor is not None and follower.cursor.height == node.chain.height,
                    10,
                    "the follower at the node's tip",
                )
            finally:
                follower.stop()
                await asyncio.wait_for(running, 10)
    assert follower.cursor is not None and follower.cursor.height == node.chain.height
    assert len(await store.matches(Scope.live())) == 3
    names = [e["event"] for e in logs]
    assert "bitcoin node trouble, retrying" in names and "connection restored" in names


async def test_the_mempool_watcher_runs_until_cancelled(node: BitcoinRegtestServer, store: SqlStore) -> None:
    revoked = script_of("p2wsh", 14)
    async with following(node, store, [], [revoked]) as rig:
        watcher = rig.watcher()
        task = asyncio.create_task(watcher.run())
        try:
            await node.go_down()
            await eventually(lambda: rig.source.rpc.failures >= 1, 10, "the watcher meeting the node down")
            node.chain.send([(revoked, 15_000)])
            await node.come_up()

            async def sighted() -> bool:
                return bool(await store.matches(Scope.live()))

            await eventually(sighted, 10, "the payment sighted in the mempool")
            assert [r["status"] for r in await store.matches(Scope.live())] == ["mempool"]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    off = MempoolWatcher(  # the rig stopped: no source, and none is needed
        rig.source, store, rig.registry, make_policy(rig.config, AlertsConfig()), Scope.live(),  # type: ignore[arg-type]
        rig.config.model_copy(update={"mempool": False}), lambda: True,
    )  # fmt: skip
    await asyncio.wait_for(off.run(), 1)  # mempool = false: returns at once


async def test_a_revocation_makes_the_watcher_look_at_the_mempool_again(
    node: BitcoinRegtestServer, store: SqlStore
) -> None:
    script = script_of("p2sh", 15)
    async with following(node, store, [script], [OTHER]) as rig:
        watcher = rig.watcher()
        node.chain.send([(script, 15_000)])
        assert await watcher.step() == 0  # a deposit: not recorded from the mempool
        await store.revoke(["btc"], [script], REVOKED_AT, "breach")
        assert await rig.registry.reload(store, ["btc"])
        assert await watcher.step() == 1


async def test_scan_revoked_finds_old_coins_so_their_sweep_is_caught(
    node: BitcoinRegtestServer, store: SqlStore, store_url: str, tmp_path: Path
) -> None:
    revoked = [script_of("p2wpkh", 16), script_of("p2pkh", 16)]
    old = node.chain.send([(revoked[0], 21_000), (revoked[1], 22_000), (OTHER, 5_000)])
    node.chain.mine(3)  # paid before the follower started: it never sees these outputs
    await load_book(store, [], revoked)
    config = tmp_path / "depositwatch.toml"
    config.write_text(
        f'[store]\nurl = "{store_url}"\n\n[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
        f'rpc_urls = ["{node.url}"]\nrpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
    )
    parser = argparse.ArgumentParser()
    for option in ("--config", "--log-level", "--log-format"):
        parser.add_argument(option)
    btc_command.register(parser.add_subparsers())
    args = parser.parse_args(["--config", str(config), "btc", "scan-revoked", "--chain", "btc", "--dry-run"])
    assert await args.handler(args) == 0
    assert await store.watched_outputs("btc") == []
    args = parser.parse_args(["--config", str(config), "btc", "scan-revoked", "--chain", "btc"])
    assert await args.handler(args) == 0
    found = sorted((o.txid, o.vout, o.amount, o.script, o.height) for o in await store.watched_outputs("btc"))
    assert found == [(old.txid, 0, 21_000, revoked[0], None), (old.txid, 1, 22_000, revoked[1], None)]
    assert await args.handler(args) == 0  # again: nothing new, no duplicates
    assert len(await store.watched_outputs("btc")) == 2

    registry = await AddressRegistry.load(store, ["btc"])
    rig = Rig(node, store, registry)
    await rig.start(start_height=node.chain.height + 1)
    try:
        sweep = node.chain.spend([(old.txid, 1)], [(OTHER, 21_500)])
        node.chain.mine()
        await rig.drain()
        (row,) = await store.matches(Scope.live())
        assert (row["kind"], row["txid"], row["idx"], row["amount"]) == ("revoked_outgoing", sweep.txid, 0, "22000")
    finally:
        await rig.stop()


async def test_a_restarted_watcher_drops_nothing_before_it_has_looked_at_the_whole_mempool(
    node: BitcoinRegtestServer, store: SqlStore
) -> None:
    revoked = script_of("p2tr", 17)
    async with following(node, store, [], [revoked]) as rig:
        for i in range(3):
            node.chain.send([(script_of("p2wpkh", 30 + i), 5_000)])
        node.chain.send([(revoked, 8_000)])  # last in getrawmempool's order
        assert await rig.watcher().step() == 1
        # a big mempool, worked through one transaction a step
        restarted = rig.watcher(drop_grace=0, caught_up=lambda: True, max_new=1)
        for _ in range(4):
            assert await restarted.step() == 0
            assert [r["status"] for r in await store.matches(Scope.live())] == ["mempool"]
        assert len(restarted.known) == 4
