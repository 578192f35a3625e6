"""`depositwatch alerts ...` end to end: real stores, real receivers, and a dispatcher killed mid-delivery."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from depositwatch.messages import OutboxMessage
from depositwatch.store import open_store
from tests.receivers import USDT, WEBHOOK_SECRET, AlertMaker, Receiver, always, ok, slow
from tests.store.rigs import _reset_logging, cli  # noqa: F401 (_reset_logging: an autouse fixture)

SECRET = WEBHOOK_SECRET


def write_config(tmp_path: Path, url: str, *, max_attempts: int = 20, concurrency: int = 4, timeout: float = 5) -> Path:
    path = tmp_path / "depositwatch.toml"
    path.write_text(
        f"""
[alerts]
poll_interval = 0.05
shutdown_grace = 5

[[sinks]]
name = "hook"
type = "webhook"
url = "{url}"
secret = {{ value = "{SECRET}" }}
concurrency = {concurrency}
timeout = {timeout}
retry = {{ max_attempts = {max_attempts}, initial_backoff = 0.01, max_backoff = 0.1 }}
"""
    )
    return path


@pytest.fixture
async def seeded(sqlite_url: str) -> tuple[str, list[OutboxMessage]]:
    """A SQLite store with six messages: two detected ETH alerts, one USDT alert, three confirmations."""
    store = await open_store(sqlite_url, migrate=True)
    maker = AlertMaker(store, confirmations=2)
    made = await maker.block([(1, 10**17), (2, 5)])
    made += await maker.block([(1, 3_000_000)], asset=USDT)
    made += await maker.block([])
    await store.close()
    return sqlite_url, made


async def test_list_shows_a_table_json_and_filters(
    capsys: pytest.CaptureFixture[str], seeded: tuple[str, list[OutboxMessage]]
) -> None:
    """`alerts list`: newest first, the documented columns; --json carries bodies; filters apply."""
    url, made = seeded
    code, stdout, _ = await cli(capsys, "alerts", "list", "--store", url)
    assert code == 0
    header, *rows = stdout.splitlines()
    assert header.split() == ["seq", "alert", "id", "rev", "event", "kind", "severity", "chain", "status", "created"]
    assert [int(r.split()[0]) for r in rows] == sorted((m.seq for m in made), reverse=True)
    first = rows[-1].split()
    assert first[1:8] == [made[0].alert_id, "1", "detected", "revoked_incoming", "critical", "eth", "new"]
    code, stdout, _ = await cli(capsys, "alerts", "list", "--store", url, "--json", "--limit", "2")
    records = json.loads(stdout)
    assert len(records) == 2 and records[0]["payload"]["idempotency_key"] == records[0]["idempotency_key"]
    assert records[0]["deliveries"] == []
    code, stdout, stderr = await cli(capsys, "alerts", "list", "--store", url, "--status", "dead")
    assert code == 0 and stdout == "" and "no messages" in stderr
    code, stdout, _ = await cli(capsys, "alerts", "list", "--store", url, "--kind", "deposit")
    assert stdout == ""
    with pytest.raises(SystemExit):
        await cli(capsys, "alerts", "list", "--store", url, "--status", "lost")


async def test_dead_alerts_are_listed_shown_and_redelivered(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, seeded: tuple[str, list[OutboxMessage]]
) -> None:
    """A refusing receiver makes every delivery dead; `list --status dead` and `show` say so;
    `redeliver SEQ` and `redeliver --dead` bring them back and the fixed receiver gets them all."""
    url, made = seeded
    async with Receiver(always(500, body="receiver broken")) as rx:
        config = str(write_config(tmp_path, rx.url, max_attempts=2))
        code, stdout, _ = await cli(capsys, "--config", config, "alerts", "deliver", "--until-empty", "--store", url)
        assert code == 0 and "6 dead" in stdout
        assert len(rx.requests) == 12
        code, stdout, _ = await cli(capsys, "alerts", "list", "--status", "dead", "--store", url)
        assert sorted(int(line.split()[0]) for line in stdout.splitlines()[1:]) == [m.seq for m in made]

        code, stdout, _ = await cli(capsys, "alerts", "show", made[0].alert_id, "--store", url)
        assert code == 0
        assert f"seq {made[0].seq}  alert {made[0].alert_id}  rev 1  detected" in stdout
        assert "hook  dead    2" in stdout and "HTTP 500: receiver broken" in stdout
        assert f'"idempotency_key": "{made[0].idempotency_key}"' in stdout
        assert "rev 2  confirmed" in stdout  # every message of the alert
        code, stdout, _ = await cli(capsys, "alerts", "show", str(made[1].seq), "--store", url, "--json")
        [record] = json.loads(stdout)
        assert record["seq"] == made[1].seq and record["deliveries"][0]["status"] == "dead"
        code, _, stderr = await cli(capsys, "alerts", "show", "nope", "--store", url)
        assert code == 1 and "no outbox message" in stderr

        rx.responder = ok()
        code, stdout, _ = await cli(capsys, "alerts", "redeliver", str(made[0].seq), "--store", url)
        assert code == 0 and stdout.startswith("1 dead delivery back in line")
        code, stdout, _ = await cli(capsys, "--config", config, "alerts", "deliver", "--until-empty", "--store", url)
        assert "1 delivered, 5 dead" in stdout
        code, stdout, _ = await cli(capsys, "alerts", "redeliver", "--dead", "--store", url)
        assert stdout.startswith("5 dead deliveries back in line")
        code, stdout, _ = await cli(capsys, "--config", config, "alerts", "deliver", "--until-empty", "--store", url)
        assert code == 0 and "6 delivered" in stdout
        code, stdout, _ = await cli(capsys, "alerts", "redeliver", "--dead", "--store", url)
        assert "nothing to redeliver" in stdout
        code, _, stderr = await cli(capsys, "alerts", "redeliver", "--store", url)
        assert code == 2 and "--dead" in stderr
    assert set(rx.accepted_keys) == {m.idempotency_key for m in made}


async def test_test_command_sends_a_marked_alert_and_reports_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, sqlite_url: str
) -> None:
    """`alerts test --sink` delivers a clearly marked test alert at once (exit 0), or says why not (exit 1)."""
    assert (await cli(capsys, "db", "migrate", "--store", sqlite_url))[0] == 0  # only db migrate creates a store
    async with Receiver() as rx:
        config = str(write_config(tmp_path, rx.url))
        code, stdout, _ = await cli(
            capsys, "--config", config, "alerts", "test", "--sink", "hook", "--store", sqlite_url
        )
        assert code == 0 and "delivered to hook" in stdout
        [request] = rx.accepted
        body = request.json()
        assert body["test"] is True and body["kind"] == "test" and body["id"].startswith("test-")
        assert "no funds moved" in body["message"]
        assert request.key == body["idempotency_key"]
        rx.responder = always(503, retry_after="5")
        code, _, stderr = await cli(
            capsys, "--config", config, "alerts", "test", "--sink", "hook", "--store", sqlite_url
        )
        assert code == 1 and "failed: HTTP 503" in stderr and "alerts redeliver" in stderr
        code, _, stderr = await cli(
            capsys, "--config", config, "alerts", "test", "--sink", "pager", "--store", sqlite_url
        )
        assert code == 2 and "configured: hook" in stderr
    code, stdout, _ = await cli(capsys, "alerts", "list", "--kind", "test", "--store", sqlite_url)
    assert [line.split()[7] for line in stdout.splitlines()[1:]] == ["dead", "delivered"]


def _deliver_command(config: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "depositwatch", "--config", str(config), "alerts", "deliver", "--store", url, *extra]


async def _spawn(argv: list[str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(*argv, stdout=sink, stderr=sink, env={**os.environ})


@pytest.mark.slow
async def test_crash_mid_delivery_loses_nothing(tmp_path: Path, store_url: str) -> None:
    """SIGKILL the dispatcher while deliveries are in flight, restart it with --until-empty: every
    idempotency key arrives at least once, and a repeat is the same message with the same key."""
    store = await open_store(store_url, migrate=True)
    maker = AlertMaker(store)
    made: list[OutboxMessage] = []
    for start in range(0, 120, 40):
        made += await maker.block([(start + i, 1 + i) for i in range(40)])
    log = tmp_path / "deliver.log"
    async with Receiver(slow(0.05)) as rx:
        config = write_config(tmp_path, rx.url, concurrency=8)
        first = await _spawn(_deliver_command(config, store_url), log)
        try:
            await rx.wait_until(lambda r: len(r.accepted) >= 30 and r.in_flight_total() > 0, timeout=60)
        finally:
            first.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(first.wait(), 30) == -signal.SIGKILL
        assert len(rx.requests) < len(made)
        again = await _spawn(_deliver_command(config, store_url, "--until-empty", "--timeout", "120"), log)
        assert await asyncio.wait_for(again.wait(), 150) == 0, log.read_text()[-3000:]
    expected = {m.idempotency_key: m for m in made}
    assert set(rx.accepted_keys) == set(expected)
    for request in rx.requests:
        message = expected[request.key]  # type: ignore[index]
        assert request.body == message.payload.encode()  # a repeat is the same message, same key
    assert (await store.outbox.counts())["delivered"] == len(made)
    await store.close()


@pytest.mark.slow
async def test_deliver_reloads_on_sighup_and_stops_cleanly_on_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    """`alerts deliver` runs until SIGTERM; SIGHUP reloads the sinks (pending messages follow the sink's new
    URL); SIGTERM lets the deliveries in flight finish and exits 0."""
    store = await open_store(sqlite_url, migrate=True)
    made = await AlertMaker(store).block([(i, 1) for i in range(40)])
    log = tmp_path / "deliver.log"
    async with Receiver(slow(0.2)) as old, Receiver(slow(0.2)) as new:
        config = write_config(tmp_path, old.url)
        process = await _spawn(_deliver_command(config, sqlite_url), log)
        await old.wait_until(lambda r: r.in_flight_total() > 0, timeout=60)
        write_config(tmp_path, new.url)
        process.send_signal(signal.SIGHUP)
        await new.wait_until(lambda r: r.in_flight_total() > 0, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0, log.read_text()[-3000:]
        answered = len(old.accepted) + len(new.accepted)
    counts = await store.outbox.counts()
    assert counts["delivered"] == answered and answered < len(made)
    assert counts["pending"] == len(made) - answered
    assert "reconfigured" in log.read_text()
    await store.close()


async def test_redeliver_refuses_unknown_messages_and_force_resends_delivered(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, seeded: tuple[str, list[OutboxMessage]]
) -> None:
    """`redeliver` of a seq or alert id that does not exist exits 1 and changes nothing; a delivered
    message is resent only with `--force`, with the same body under the same idempotency key."""
    url, made = seeded
    async with Receiver() as rx:
        config = str(write_config(tmp_path, rx.url))
        code, stdout, _ = await cli(capsys, "--config", config, "alerts", "deliver", "--until-empty", "--store", url)
        assert code == 0 and "6 delivered" in stdout
        code, stdout, stderr = await cli(capsys, "alerts", "redeliver", "9999", "--store", url)
        assert code == 1 and stdout == "" and "'9999'" in stderr and "nothing was redelivered" in stderr
        code, _, stderr = await cli(capsys, "alerts", "redeliver", str(made[0].seq), "no-such-alert", "--store", url)
        assert code == 1 and "'no-such-alert'" in stderr
        code, stdout, _ = await cli(capsys, "alerts", "redeliver", str(made[0].seq), "--store", url)
        assert code == 0 and "nothing to redeliver: no dead delivery" in stdout
        code, _, stderr = await cli(capsys, "alerts", "redeliver", "--dead", "--force", "--store", url)
        assert code == 2 and "named messages only" in stderr

        first = next(r for r in rx.accepted if r.key == made[0].idempotency_key)
        code, stdout, _ = await cli(capsys, "alerts", "redeliver", str(made[0].seq), "--force", "--store", url)
        assert code == 0 and stdout.startswith("1 dead or delivered delivery back in line")
        code, stdout, _ = await cli(capsys, "alerts", "list", "--status", "pending", "--store", url)
        assert [int(line.split()[0]) for line in stdout.splitlines()[1:]] == [made[0].seq]
        code, stdout, _ = await cli(capsys, "--config", config, "alerts", "deliver", "--until-empty", "--store", url)
        assert code == 0 and "6 delivered" in stdout
    again = [r for r in rx.accepted if r.key == made[0].idempotency_key]
    assert len(again) == 2 and again[1].json() == first.json()
    assert len(rx.accepted) == len(made) + 1
