"""Parallel replay of Bitcoin (`replay --workers N`): a sweep spends an output paid earlier, perhaps in
another shard, so before each shard is written the outputs of earlier shards not yet seen spent, less
those the node still holds unspent (`gettxout`), are looked for in it. The output is byte for byte the
single-worker run's, for sweeps one, two and three shards after their payment, of every script type.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from depositwatch.chains.base import BadNodeAnswer
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_prevouts import unspent_at_tip
from depositwatch.models import WatchedOutput
from depositwatch.pipeline import opened_source
from depositwatch.replay import range_run_id
from depositwatch.store import SqlStore, open_store
from depositwatch.store.shards import ShardStore
from depositwatch.timeutil import iso
from tests.btcnode import BitcoinRegtestServer, RegtestChain
from tests.chains.test_btc_source import btc_config, script_of
from tests.replay.test_btc_replay import OTHER, address
from tests.util import eventually

SHARD = 4  # blocks a shard


class Shards:
    """Blocks first.. in shards of four: payments to four revoked scripts in shard 0; one swept in shard 0,
    one in shard 1, one (taproot) in shard 3, one never; a second payment in shard 2, never swept; shard 4
    carries only outputs the node still holds unspent."""

    def __init__(self, chain: RegtestChain) -> None:
        self.chain = chain
        chain.mine(101)
        base = chain.tip.header.time + 1_000
        self.active = script_of("p2wpkh", 31)
        self.revoked = {kind: script_of(kind, 40 + n) for n, kind in enumerate(("p2tr", "p2wpkh", "p2sh", "p2pkh"))}
        self.revoked_at = base - 10_000
        self.first = chain.height + 1
        paid = chain.send([*((s, 100_000 * (n + 1)) for n, s in enumerate(self.revoked.values())), (self.active, 5)])
        self.block(base)  # shard 0: the payments
        chain.spend([(paid.txid, 3)], [(OTHER, 390_000)])
        self.block(base)  # the p2pkh one swept at once
        self.blocks(2, base)
        self.blocks(1, base)  # shard 1
        chain.spend([(paid.txid, 1)], [(OTHER, 190_000)])
        self.block(base)  # the p2wpkh one swept a shard later
        chain.send([(self.active, 6)])
        self.blocks(2, base)
        chain.send([(self.revoked["p2wpkh"], 77_777)])  # shard 2: paid again, never swept
        self.blocks(4, base)
        self.blocks(1, base)  # shard 3
        chain.spend([(paid.txid, 0)], [(OTHER, 90_000)])
        self.block(base)  # the taproot one swept three shards later
        self.blocks(2, base)
        self.blocks(4, base)  # shard 4: only outputs unspent at the tip before it
        self.last = chain.height
        assert self.last - self.first + 1 == 5 * SHARD

    def block(self, base: int) -> None:
        self.chain.mine(time=base + self.chain.height)

    def blocks(self, n: int, base: int) -> None:
        for _ in range(n):
            self.block(base)

    def csv(self) -> str:
        lines = ["chain,address,status,label,owner,revoked_at,reason", f"btc,{address(self.active)},active,dep,u,,"]
        lines += [
            f"btc,{address(s)},revoked,hot-{kind},ops,{iso(self.revoked_at)},breach" for kind, s in self.revoked.items()
        ]
        return "\n".join(lines) + "\n"


@pytest.fixture
async def shards() -> AsyncIterator[tuple[BitcoinRegtestServer, Shards]]:
    async with BitcoinRegtestServer() as node:
        yield node, Shards(node.chain)


async def depositwatch(*argv: str) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "depositwatch", "--log-level", "warning", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def test_parallel_bitcoin_replay_writes_what_one_worker_writes(
    shards: tuple[BitcoinRegtestServer, Shards], tmp_path: Path, sqlite_url: str
) -> None:
    node, chain = shards
    watch = tmp_path / "watch.csv"
    watch.write_text(chain.csv())
    url = node.url.replace("http://", f"http://{node.user}:{node.password}@")
    command = ["replay", "--chain", "btc", "--network", "regtest", "--rpc-url", url, "--watch", str(watch),
               "--from", str(chain.first), "--to", str(chain.last)]  # fmt: skip
    code, single, err = await depositwatch(*command)
    assert code == 0, err
    sweeps = [line for line in single.decode().splitlines() if '"revoked_outgoing"' in line]
    assert len(sweeps) == 3
    code, parallel, err = await depositwatch(*command, "--workers", "2", "--shard-blocks", str(SHARD))
    assert code == 0, err
    assert parallel == single

    # Shard 0, which pays the outputs, replayed last: shards 1 to 4 cannot have seen them, and the sweeps
    # are found only by carrying the outputs over. Another holder keeps shard 0's lease until the rest is done.
    store = await open_store(sqlite_url, migrate=True)
    try:
        async with opened_source(btc_config(node)) as source:
            run_id = await range_run_id(source, "btc", chain.first, chain.last)
        fence = await store.leases.acquire(f"replay:{run_id}:0", "elsewhere", 3600)
        assert fence is not None
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "depositwatch", "--log-level", "warning", *command, "--workers", "2",
            "--shard-blocks", str(SHARD), "--store", sqlite_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        communicated = asyncio.ensure_future(proc.communicate())

        async def rest_done() -> bool:
            listed = await ShardStore(store).shards(run_id)
            return len(listed) == 5 and all(s.done for s in listed[1:]) and not listed[0].done

        await eventually(rest_done, timeout=120)
        assert await store.leases.release(fence)
        parallel, err_bytes = await asyncio.wait_for(communicated, 120)
        carried = await names_of(store, "cursors", f"replay:{run_id}:%:carried")
        assert sorted(carried) == [f"replay:{run_id}:{shard}:carried" for shard in (1, 2, 3)]
        await ShardStore(store).delete_run(run_id)  # as --restart does: the carried cursors go too
        assert await names_of(store, "cursors", f"replay:{run_id}:%") == []
        assert await names_of(store, "leases", f"replay:{run_id}:%") == []
    finally:
        await store.close()
    err = err_bytes.decode()
    assert proc.returncode == 0, err
    assert parallel == single
    # Shards 1 to 3 carry the taproot output (spent at the tip); shard 4 carries only outputs still unspent there.
    assert "5 shards of 4 blocks (3 read again for earlier outputs' sweeps)" in err, err


async def names_of(store: SqlStore, table: str, like: str) -> list[str]:
    async with store.db.read() as conn:
        return [r[0] for r in await conn.fetch(f"SELECT name FROM {table} WHERE name LIKE $1", like)]


async def test_unspent_at_tip_asks_the_node_and_refuses_another_output(
    shards: tuple[BitcoinRegtestServer, Shards],
) -> None:
    node, chain = shards
    spent_at_tip, unspent = [], []
    for height in range(chain.first, chain.last + 1):
        for tx in chain.chain.block_at(height).txs[1:]:
            for vout, out in enumerate(tx.outputs):
                paid = WatchedOutput(tx.txid, vout, out.script, out.value, height)
                (unspent if (tx.txid, vout) in chain.chain.utxo else spent_at_tip).append(paid)
    assert spent_at_tip and unspent
    async with opened_source(btc_config(node)) as source:
        assert isinstance(source, BitcoinSource)
        assert await unspent_at_tip(source, spent_at_tip + unspent) == unspent
        other = unspent[0]
        for wrong in (
            WatchedOutput(other.txid, other.vout, other.script, other.amount + 1, other.height),
            WatchedOutput(other.txid, other.vout, OTHER, other.amount, other.height),
        ):
            with pytest.raises(BadNodeAnswer, match=rf"gettxout for {other.txid}:{other.vout}: the node describes"):
                await unspent_at_tip(source, [wrong])
