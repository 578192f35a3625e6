"""The incident report's example store, made through the real pipeline, and the report's figures on it
(SQLite and PostgreSQL).

The store is the one docs/report.md shows; it is built by

    .venv/bin/python -m tests.report.test_report_example sqlite:///report-example.db

Bitcoin (the regtest stand-in, its clock fixed so every txid and time is the same each run): the live
follower records two payments to revoked addresses and their sweep; a backdated revocation turns a
recorded deposit into a retro alert; the attacker then sweeps that output and pays a revoked address
again, which only a replay over the whole range (`depositwatch replay`) records. The replay sees the
live and retro transfers again: each is counted once. EVM (`tests.ledger`, the real matcher and store
commit): ETH and a token paid to a revoked address, part of the ETH swept out, a payment orphaned by
a reorg (retracted: not counted) and a retro alert.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from depositwatch.models import Asset, BlockRef
from depositwatch.registry import AddressRegistry
from depositwatch.report import Window, build_report
from depositwatch.store import Scope, open_store
from depositwatch.timeutil import iso
from tests.btcnode import BitcoinRegtestServer
from tests.ledger import T0, Ledger, key
from tests.pipeline.test_btc_follow import Rig
from tests.replay.test_btc_replay import OTHER, Scenario, address, run_cli
from tests.store.rigs import _reset_logging  # noqa: F401 (_reset_logging: an autouse fixture)

BTC_CLOCK = T0 + 7 * 86_400  # the stand-in's fixed clock: block times and so txids are the same every run
USDT = Asset("USDT", 6, "0xdAC17F958D2ee523a2206206994597C13D831ec7")


@dataclass(frozen=True, slots=True)
class Example:
    """What the example store holds, for the assertions."""

    btc: Scenario
    retro_sweep: str  # the txid that swept the retro output
    replay_only: str  # the txid of the payment only the replay saw
    first: int
    last: int


async def build_example(url: str, work: Path) -> Example:
    """Make the example store at `url` (it must be empty); `work` holds the config and the replay output."""
    await (await open_store(url, migrate=True)).close()
    async with BitcoinRegtestServer() as node:
        node.chain.set_time(BTC_CLOCK)
        chain = Scenario(node.chain)
        config = work / "depositwatch.toml"
        config.write_text(
            f'[store]\nurl = "{url}"\n\n[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
            f'rpc_urls = ["{node.url}"]\nrpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
            "batch_blocks = 2\nconfirmations = 3\n"
        )
        watch = work / "watch.csv"
        watch.write_text(chain.csv())
        assert await run_cli("--config", str(config), "addresses", "import", str(watch)) == 0

        store = await open_store(url)
        try:
            rig = Rig(node, store, await AddressRegistry.load(store, ["btc"]))
            await rig.start(start_height=chain.first)
            try:
                await rig.drain()
            finally:
                await rig.stop()
        finally:
            await store.close()

        # The deposit to user-0 in the first block: its key leaked before it landed.
        leaked = work / "leaked.txt"
        leaked.write_text(address(chain.active[0]) + "\n")
        at = iso(node.chain.block_at(chain.first).header.time - 5_000) or ""
        revoke = ["addresses", "revoke", "--chain", "btc", "--file", str(leaked), "--at", at, "--reason", "leak"]
        assert await run_cli("--config", str(config), *revoke) == 0

        # Later blocks the live daemon did not follow: the retro output swept, and a new payment.
        base = node.chain.tip.header.time
        sweep = node.chain.spend([(chain.pay_active.txid, 0)], [(OTHER, 99_000)])
        node.chain.mine(time=base + 100)
        late_pay = node.chain.send([(chain.revoked, 5_000_000)])
        node.chain.mine(time=base + 200)
        span = ["--from", str(chain.first), "--to", str(node.chain.height)]
        output = work / "replay.jsonl"
        assert await run_cli("--config", str(config), "replay", "--chain", "btc", *span, "--output", str(output)) == 0
        last = node.chain.height

    store = await open_store(url)
    try:
        ledger = Ledger(store)
        await ledger.book(active=[1, 2], revoked=[(5, T0 + 1000)])  # owners: 1 and 5 cust-1, 2 cust-0
        await ledger.block([(1, 10**18), (2, 3 * 10**17)])  # T0 + 600: deposits
        await ledger.block([(5, 2 * 10**18)])  # T0 + 1200: 2 ETH to the revoked address
        await ledger.block([(2, 4 * 10**17)], sends=[(5, 15 * 10**17)])  # T0 + 1800: 1.5 ETH swept out
        await ledger.block([(5, 250_000_000)], asset=USDT)  # T0 + 2400: 250 USDT, not swept
        block = await ledger.block([(5, 7 * 10**18)])  # T0 + 3000: orphaned by a reorg below
        assert block.height == 5
        ledger.cursor = await store.rewind(Scope.live(), ledger.cursor, ledger.policy, BlockRef(4, "h4"))
        await ledger.block([(1, 10**17)])  # T0 + 3000: the new block 5
        # Address 2 leaked at T0 + 1000: its deposit in block 3 becomes a retro alert.
        await store.revoke(["eth"], [key(2)], T0 + 1000, "leak")
    finally:
        await store.close()
    return Example(chain, sweep.txid, late_pay.txid, chain.first, last)


# -- the report on it -------------------------------------------------------------------------------------


async def test_the_example_counts_each_transfer_once_with_its_sources_and_sweeps(
    store_url: str, tmp_path: Path
) -> None:
    """Live, retro and replay records of one transfer are one landing; retracted ones are left out;
    sweeps follow the documented rules on both chain kinds."""
    example = await build_example(store_url, tmp_path)
    btc = example.btc
    store = await open_store(store_url)
    try:
        report = build_report(await store.reports.rows(), Window())
    finally:
        await store.close()
    found = {
        (g.owner, g.chain, g.asset.symbol): [
            (x.txid, x.index, x.amount, sorted(x.sources), x.swept, x.tracked) for x in g.landings
        ]
        for g in report.groups
    }
    assert found == {
        ("cust-0", "eth", "ETH"): [("0x" + f"{4:064x}", None, 4 * 10**17, ["retro"], 0, True)],
        ("cust-1", "eth", "ETH"): [("0x" + f"{3:064x}", None, 2 * 10**18, ["live"], 15 * 10**17, True)],
        ("cust-1", "eth", "USDT"): [("0x" + f"{6:064x}", 0, 250_000_000, ["live"], 0, True)],
        ("ops", "btc", "BTC"): [
            *sorted(
                [
                    (btc.pay_revoked.txid, 1, 123_456_789, ["live", "replay"], 123_456_789, True),
                    (btc.pay_late.txid, 0, 66_666, ["live", "replay"], 66_666, True),
                ],
                key=lambda x: (x[0], x[1]),
            ),
            (example.replay_only, 0, 5_000_000, ["replay"], 0, True),
        ],
        ("user-0", "btc", "BTC"): [(btc.pay_active.txid, 0, 100_000, ["replay", "retro"], 100_000, True)],
    }
    states = {(g.owner, g.chain, g.asset.symbol): g.swept_state for g in report.groups}
    assert states == {
        ("cust-0", "eth", "ETH"): "no",
        ("cust-1", "eth", "ETH"): "partly",
        ("cust-1", "eth", "USDT"): "no",
        ("ops", "btc", "BTC"): "partly",
        ("user-0", "btc", "BTC"): "yes",
    }
    [user0] = [g for g in report.groups if g.owner == "user-0"]
    assert user0.landings[0].sweep_txids == {example.retro_sweep}
    totals = {(t.chain, t.asset.symbol): (t.owners, t.count, t.amount, t.swept) for t in report.totals}
    assert totals == {
        ("btc", "BTC"): (2, 4, 123_456_789 + 66_666 + 5_000_000 + 100_000, 123_456_789 + 66_666 + 100_000),
        ("eth", "ETH"): (2, 2, 24 * 10**17, 15 * 10**17),
        ("eth", "USDT"): (1, 1, 250_000_000, 0),
    }


def main(argv: list[str]) -> int:
    """`python -m tests.report.test_report_example STORE_URL`: make the example store (it must not exist yet)."""
    if len(argv) != 1:
        print("usage: python -m tests.report.test_report_example STORE_URL", file=sys.stderr)
        return 2

    async def make() -> None:
        with tempfile.TemporaryDirectory() as work:
            await build_example(argv[0], Path(work))

    asyncio.run(make())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
