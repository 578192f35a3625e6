"""`depositwatch replay` over Bitcoin against the regtest stand-in: ad hoc (`--rpc-url` with the
credentials in it, `--watch FILE.csv`) and with a config; exactly the expected JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from depositwatch.addressbook import ChainDirectory, ChainInfo, read_import_csv
from depositwatch.addresses import parse_bitcoin_address
from depositwatch.chains.bitcoin import BitcoinSource
from depositwatch.chains.btc_prevouts import prevouts_paying
from depositwatch.cli import main
from depositwatch.replay import replay, run_id
from depositwatch.store import Scope, open_store
from depositwatch.timeutil import iso
from tests.btcnode import BitcoinRegtestServer, RegtestChain, p2wpkh, script_to_address
from tests.chains.test_btc_source import btc_config, script_of
from tests.receivers import WEBHOOK_SECRET

FIELDS = (
    "kind", "chain", "asset", "amount", "amount_decimal", "from", "to", "txid", "index", "block_height", "block_hash",
    "label", "owner",
)  # fmt: skip
OTHER = p2wpkh(b"\xee" * 20)


def address(script: bytes) -> str:
    text = script_to_address(script, "regtest")
    assert text is not None
    return parse_bitcoin_address(text, "regtest").address


class Scenario:
    """A regtest chain with deposits, revoked payments before and after the revocation, and a sweep."""

    def __init__(self, chain: RegtestChain) -> None:
        self.chain = chain
        chain.mine(101)
        base = chain.tip.header.time + 1_000
        self.active = [script_of("p2pkh", 21), script_of("p2wsh", 21), script_of("p2tr", 21)]
        self.revoked = script_of("p2sh", 22)
        self.late = script_of("p2wpkh", 23)  # revoked in the middle of the range
        self.late_revoked_at = base + 50
        self.revoked_at = base - 10_000
        self.first = chain.height + 1
        self.pay_active = chain.send([(s, 100_000 + i) for i, s in enumerate(self.active)] + [(OTHER, 1)])
        self.pay_late_early = chain.send([(self.late, 55_555)])
        chain.mine(time=base)  # before `late` was revoked: a deposit
        chain.mine(time=base + 10)  # an empty block
        self.pay_revoked = chain.send([(OTHER, 7), (self.revoked, 123_456_789)])
        self.pay_late = chain.send([(self.late, 66_666)])
        chain.mine(time=base + 100)  # after: revoked_incoming for both
        self.sweep = chain.spend([(self.pay_late.txid, 0), (self.pay_revoked.txid, 1)], [(OTHER, 123_000_000)])
        chain.mine(time=base + 200)
        self.last = chain.height

    def csv(self) -> str:
        lines = ["chain,address,status,label,owner,revoked_at,reason"]
        lines += [f"btc,{address(s)},active,deposit-{i},user-{i},," for i, s in enumerate(self.active)]
        lines.append(f"btc,{address(self.revoked)},revoked,hot-1,ops,{iso(self.revoked_at)},breach")
        lines.append(f"btc,{address(self.late)},revoked,hot-2,ops,{iso(self.late_revoked_at)},breach")
        return "\n".join(lines) + "\n"

    def expected(self) -> list[dict[str, Any]]:
        chain = self.chain

        def block_of(height: int) -> dict[str, Any]:
            return {"block_height": height, "block_hash": chain.block_at(height).hash}

        def line(kind: str, amount: int, decimal: str, txid: str, index: int, height: int, **rest: Any) -> Any:
            return {
                "kind": kind, "chain": "btc", "asset": "BTC", "amount": str(amount), "amount_decimal": decimal,
                "from": None, "txid": txid, "index": index, **block_of(height), **rest,
            }  # fmt: skip

        first = self.first
        deposits = [
            line("deposit", 100_000 + i, f"0.00{100_000 + i:06d}".rstrip("0"), self.pay_active.txid, i, first,
                 to=address(s), label=f"deposit-{i}", owner=f"user-{i}")
            for i, s in enumerate(self.active)
        ]  # fmt: skip
        early = line("deposit", 55_555, "0.00055555", self.pay_late_early.txid, 0, first, to=address(self.late),
                     label="hot-2", owner="ops")  # fmt: skip
        block_one = sorted([*deposits, early], key=lambda r: (r["txid"], r["index"]))
        incoming = sorted(
            [
                line("revoked_incoming", 123_456_789, "1.23456789", self.pay_revoked.txid, 1, first + 2,
                     to=address(self.revoked), label="hot-1", owner="ops"),
                line("revoked_incoming", 66_666, "0.00066666", self.pay_late.txid, 0, first + 2,
                     to=address(self.late), label="hot-2", owner="ops"),
            ],
            key=lambda r: (r["txid"], r["index"]),
        )  # fmt: skip
        sweeps = [
            line("revoked_outgoing", 66_666, "0.00066666", self.sweep.txid, 0, first + 3, to=None,
                 label="hot-2", owner="ops", **{"from": address(self.late)}),
            line("revoked_outgoing", 123_456_789, "1.23456789", self.sweep.txid, 1, first + 3, to=None,
                 label="hot-1", owner="ops", **{"from": address(self.revoked)}),
        ]  # fmt: skip
        return block_one + incoming + sweeps


@pytest.fixture
async def scenario() -> AsyncIterator[tuple[BitcoinRegtestServer, Scenario]]:
    async with BitcoinRegtestServer() as node:
        yield node, Scenario(node.chain)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(text) for text in path.read_text().splitlines()]


async def run_cli(*argv: str) -> int:
    # The CLI runs its own event loop; the stand-in keeps serving from this one meanwhile.
    return await asyncio.to_thread(main, list(argv))


def config_text(
    store_url: str, node: BitcoinRegtestServer, confirmations: int, sink_url: str | None = None, extra: str = ""
) -> str:
    """A config of the stand-in's `btc` chain (batch_blocks 2), and a webhook sink at `sink_url` if any."""
    text = (
        f'[store]\nurl = "{store_url}"\n\n[[chains]]\nname = "btc"\nkind = "bitcoin"\nnetwork = "regtest"\n'
        f'rpc_urls = ["{node.url}"]\nrpc_user = "{node.user}"\nrpc_password = {{ value = "{node.password}" }}\n'
        f"batch_blocks = 2\nconfirmations = {confirmations}\n"
    )
    if sink_url is not None:
        text += (
            f'\n[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{sink_url}"\n'
            f'secret = {{ value = "{WEBHOOK_SECRET}" }}\n'
        )
    return text + extra


async def configured(tmp_path: Path, text: str, chain: Scenario) -> Path:
    """The config file written with `text`, and the scenario's watch list imported into its store."""
    config = tmp_path / "depositwatch.toml"
    config.write_text(text)
    watch = tmp_path / "watch.csv"
    watch.write_text(chain.csv())
    assert await run_cli("--config", str(config), "addresses", "import", str(watch)) == 0
    return config


async def test_ad_hoc_replay_prints_exactly_the_expected_lines(
    scenario: tuple[BitcoinRegtestServer, Scenario], tmp_path: Path
) -> None:
    node, chain = scenario
    watch = tmp_path / "watch.csv"
    watch.write_text(chain.csv())
    out = tmp_path / "out.jsonl"
    url = node.url.replace("http://", f"http://{node.user}:{node.password}@")
    code = await run_cli(
        "replay", "--chain", "btc", "--from", str(chain.first), "--to", str(chain.last), "--rpc-url", url,
        "--network", "regtest", "--watch", str(watch), "--output", str(out),
    )  # fmt: skip
    assert code == 0
    lines = read_lines(out)
    assert [{k: line[k] for k in FIELDS} for line in lines] == chain.expected()
    for line in lines:
        assert line["asset_decimals"] == 8 and line["asset_contract"] is None and line["chain_id"] is None
        assert line["status"] == "confirmed" or line["block_height"] == chain.last
        assert line["block_time"] == iso(node.chain.block_at(line["block_height"]).header.time)
    assert {line["revoked_at"] for line in lines if line["label"] == "hot-2"} == {iso(chain.late_revoked_at)}


async def test_replay_with_a_config_and_a_store(
    scenario: tuple[BitcoinRegtestServer, Scenario], tmp_path: Path, sqlite_url: str
) -> None:
    node, chain = scenario
    config = await configured(tmp_path, config_text(sqlite_url, node, 2), chain)
    out = tmp_path / "out.jsonl"
    argv = ["--config", str(config), "replay", "--chain", "btc", "--from", str(chain.first), "--to", str(chain.last)]
    assert await run_cli(*argv, "--output", str(out)) == 0
    assert [{k: line[k] for k in FIELDS} for line in read_lines(out)] == chain.expected()
    # the same range again resumes the finished run: the whole output again, nothing new in the store
    again = tmp_path / "again.jsonl"
    assert await run_cli(*argv, "--output", str(again)) == 0
    assert read_lines(again) == read_lines(out)
    store = await open_store(sqlite_url)
    try:
        assert await store.watched_outputs("btc") == []  # replays keep their own scope
    finally:
        await store.close()


async def test_ad_hoc_replay_refuses_a_node_on_another_network(
    scenario: tuple[BitcoinRegtestServer, Scenario], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI exits non-zero with a message naming both networks, not a traceback."""
    node, _ = scenario
    watch = tmp_path / "watch.csv"
    watch.write_text("chain,address,status\n")
    url = node.url.replace("http://", f"http://{node.user}:{node.password}@")
    code = await run_cli(
        "replay", "--chain", "btc", "--from", "1", "--to", "2", "--rpc-url", url, "--network", "signet",
        "--watch", str(watch),
    )  # fmt: skip
    assert code == 1
    message = capsys.readouterr().err
    assert "follows Bitcoin 'regtest'" in message and "Traceback" not in message


async def test_prevouts_let_a_replay_see_the_sweep_of_an_output_paid_before_its_range(
    scenario: tuple[BitcoinRegtestServer, Scenario], tmp_path: Path
) -> None:
    """The revoked outputs are paid in block `first + 2` and swept in `first + 3`; a replay of
    `first + 3` alone sees only the sweep's inputs. With the spent outputs found by `getblock HASH 3`
    stored in the run's scope first, it reports the sweep."""
    node, chain = scenario
    config = btc_config(node, confirmations=1)
    start = stop = chain.first + 3
    source = BitcoinSource(config)
    await source.open()
    try:
        identity = await source.identity()
        revoked = {chain.revoked, chain.late}
        found = await prevouts_paying(source, start, stop + 1, revoked)
        assert await prevouts_paying(source, chain.first + 2, stop + 1, revoked) == []  # paid inside the range
    finally:
        await source.close()
    assert sorted((o.txid, o.vout, o.amount, o.script, o.height) for o in found) == sorted(
        [
            (chain.pay_late.txid, 0, 66_666, chain.late, chain.first + 2),
            (chain.pay_revoked.txid, 1, 123_456_789, chain.revoked, chain.first + 2),
        ]
    )
    outputs: dict[bool, list[dict[str, Any]]] = {}
    for prevouts in (False, True):
        store = await open_store(f"sqlite:///{tmp_path}/prevouts-{prevouts}.db", migrate=True)
        try:
            directory = ChainDirectory({"btc": ChainInfo("bitcoin", "regtest")})
            await store.import_addresses(read_import_csv(chain.csv(), directory))
            if prevouts:
                scope = Scope.replay(run_id("btc", start, stop, identity), False)
                assert await store.add_watched_outputs("btc", found, scope) == 2
            out = io.StringIO()
            await replay(chain=config, store=store, start=start, stop=stop, output=out)
            outputs[prevouts] = [json.loads(line) for line in out.getvalue().splitlines()]
        finally:
            await store.close()
    assert outputs[False] == []  # the sweep spends outputs this range never saw paid
    assert [{k: line[k] for k in FIELDS} for line in outputs[True]] == chain.expected()[-2:]


async def test_send_alerts_says_so_and_exits_1_when_alerts_are_left_pending(
    scenario: tuple[BitcoinRegtestServer, Scenario],
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A receiver refusing everything: the range is done and its output whole, but the command exits 1 and says
    how many alerts are still pending (they stay in the outbox). Once a receiver takes them, the same command
    (the finished run again) delivers them and exits 0."""
    from depositwatch.commands import replay as replay_command
    from tests.receivers import Receiver, always, ok

    monkeypatch.setattr(replay_command, "DRAIN_SECONDS", 1.0)
    node, chain = scenario
    config = tmp_path / "depositwatch.toml"
    watch = tmp_path / "watch.csv"
    watch.write_text(chain.csv())
    argv = ["--config", str(config), "replay", "--chain", "btc", "--from", str(chain.first), "--to", str(chain.last)]
    alerts = 4  # two revoked_incoming and two revoked_outgoing; deposits do not alert
    for responder, code in ((always(500), 1), (ok(), 0)):
        async with Receiver(responder) as receiver:
            retry = "retry = { initial_backoff = 0.3, max_backoff = 1.0 }\n"  # a few attempts a second: none dies
            config.write_text(config_text(sqlite_url, node, 100, receiver.url, retry))
            if code:
                assert await run_cli("--config", str(config), "addresses", "import", str(watch)) == 0
            out = tmp_path / f"out-{code}.jsonl"
            capsys.readouterr()
            assert await run_cli(*argv, "--output", str(out), "--send-alerts") == code
            said = capsys.readouterr().err
            assert [{k: line[k] for k in FIELDS} for line in read_lines(out)] == chain.expected()
            if code:
                store = await open_store(sqlite_url)
                try:
                    counts = await store.outbox.counts()
                finally:
                    await store.close()
                assert counts["pending"] == alerts and counts["dead"] == 0, counts
                assert receiver.requests and not receiver.accepted
                assert f"{alerts} still pending in the outbox" in said, said
            else:
                assert len({r.json()["id"] for r in receiver.accepted}) == alerts
                assert "still pending" not in said
    store = await open_store(sqlite_url)
    try:
        counts = await store.outbox.counts()
    finally:
        await store.close()
    assert counts["new"] + counts["pending"] == 0 and counts["delivered"] >= alerts
