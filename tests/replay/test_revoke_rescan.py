"""`addresses revoke --rescan`: the revocation, then a replay from `--at` that sends what it finds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from depositwatch.jsonutil import loads
from depositwatch.store import open_store
from depositwatch.timeutil import iso
from tests.btcnode import BitcoinRegtestServer
from tests.replay.test_btc_replay import Scenario, address, config_text, configured, run_cli, scenario

__all__ = ["scenario"]


async def test_rescan_replays_from_the_revocation_and_alerts(
    scenario: tuple[BitcoinRegtestServer, Scenario],
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node, chain = scenario
    config = await configured(tmp_path, config_text(sqlite_url, node, 100), chain)
    leaked = tmp_path / "leaked.txt"
    victim = address(chain.active[0])
    leaked.write_text(victim + "\n")
    at = int(time.time())  # now: the scenario's blocks are dated a little ahead of it
    assert chain.chain.block_at(chain.first).header.time >= at  # the block that paid the victim is after
    capsys.readouterr()
    code = await run_cli(
        "--config", str(config), "addresses", "revoke", "--chain", "btc", "--file", str(leaked),
        "--at", str(at), "--reason", "leak", "--rescan",
    )  # fmt: skip
    captured = capsys.readouterr()
    said = captured.out
    assert code == 0, captured.err
    assert "btc: rescanning blocks " in said and f"(from {iso(at)})" in said
    assert f"..{chain.last} " in said
    store = await open_store(sqlite_url)
    try:
        alerts = [loads(m.payload) for m in await store.outbox.messages(kind="revoked_incoming", limit=100)]
    finally:
        await store.close()
    mine = [a for a in alerts if a["address"]["address"] == victim]
    assert [(a["mode"], a["block"]["height"], a["amount"]) for a in mine] == [("replay", chain.first, "100000")]
