"""`replay --send-alerts` over a range already replayed: it says the run was complete and never
passes for an alerting run whose alerts nobody was sent."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.btcnode import BitcoinRegtestServer
from tests.receivers import Receiver
from tests.replay.test_btc_replay import FIELDS, Scenario, config_text, configured, read_lines, run_cli, scenario

__all__ = ["scenario"]  # the fixture, shared with the replay tests


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


async def test_a_complete_run_is_named_and_unsent_alerts_fail_it(
    scenario: tuple[BitcoinRegtestServer, Scenario],
    tmp_path: Path,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node, chain = scenario
    alerts = 4  # two revoked_incoming and two revoked_outgoing
    async with Receiver() as receiver:
        config = await configured(tmp_path, config_text(sqlite_url, node, 100, receiver.url), chain)
        span = ["--from", str(chain.first), "--to", str(chain.last)]
        argv = ["--config", str(config), "replay", "--chain", "btc", *span]
        assert await run_cli(*argv, "--output", str(tmp_path / "first.jsonl")) == 0  # no alerts asked
        assert "already replayed" not in capsys.readouterr().err

        # The finished run again, now asked to send: nothing is sent, and it says so with exit 1.
        out = tmp_path / "again.jsonl"
        assert await run_cli(*argv, "--output", str(out), "--send-alerts") == 1
        said = capsys.readouterr().err
        assert f"had already replayed {chain.first}..{chain.last}" in said and "`--restart`" in said
        assert f"{alerts} alert(s) of that run were never sent" in said
        assert receiver.requests == []
        assert [{k: line[k] for k in FIELDS} for line in read_lines(out)] == chain.expected()

        # --restart replays the range and sends them.
        assert await run_cli(*argv, "--output", str(out), "--send-alerts", "--restart") == 0
        assert "already replayed" not in capsys.readouterr().err
        assert len(receiver.accepted) == alerts

        # Complete, and every alert was sent: exit 0, nothing sent twice, and still said.
        assert await run_cli(*argv, "--output", str(out), "--send-alerts") == 0
        said = capsys.readouterr().err
        assert "had already replayed" in said and "never sent" not in said
        assert len(receiver.requests) == alerts
