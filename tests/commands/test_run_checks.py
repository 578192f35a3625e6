"""`run` checks what it can before touching anything: every secret (named by key path) before the
store and the nodes; each sink is tried once, a warning naming it when unreachable."""

from __future__ import annotations

import json
from pathlib import Path

from tests.commands.test_listen import exited, run
from tests.daemon.test_daemon import Setup, free_port, sqlite_setup, stop

__all__ = ["sqlite_setup"]


async def test_a_missing_secret_is_named_before_the_store_is_touched(sqlite_setup: Setup, tmp_path: Path) -> None:
    store = tmp_path / "never" / "state.db"
    sinks = (
        '[[sinks]]\nname = "soc"\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
        'secret = { env = "DW_WEBHOOK_SECRET_UNSET" }\n'
    )
    config = sqlite_setup.config(sinks=sinks)
    config.write_text(config.read_text().replace(sqlite_setup.store_url, f"sqlite:///{store}"))
    log = tmp_path / "run.log"
    assert await exited(run(config, log=log)) == 2
    lines = [line for line in log.read_text().splitlines() if line.startswith("depositwatch:")]
    assert lines == ["depositwatch: sinks.soc.secret: environment variable DW_WEBHOOK_SECRET_UNSET is not set"]
    assert not store.parent.exists()


async def test_an_unreachable_sink_is_a_warning_naming_it(sqlite_setup: Setup) -> None:
    closed = free_port()
    config = sqlite_setup.config(sinks=Setup.sink(f"http://127.0.0.1:{closed}/hook", name="pager-soc"))
    daemon = await sqlite_setup.start(config)  # READY: not fatal
    warnings = [
        json.loads(line) for line in daemon.output().splitlines() if line.startswith("{") and "sink unreachable" in line
    ]
    assert [(w["sink"], w["level"]) for w in warnings] == [("pager-soc", "warning")]
    assert f"127.0.0.1:{closed}" in warnings[0]["error"]
    assert await stop(daemon) == 0
