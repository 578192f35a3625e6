"""The exec sink with real programs: stdin, exit status, timeout killing the process group, bounded
output, a fixed environment; through the real dispatcher and store."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from depositwatch.alerts.dispatcher import Dispatcher
from depositwatch.alerts.execsink import OUTPUT_LIMIT, ExecSink
from depositwatch.alerts.factory import build_sinks
from depositwatch.alerts.sinks import DeliveryError
from depositwatch.config import AlertsConfig, RetryConfig, SinkConfig
from depositwatch.store import SqlStore
from tests.alerts.test_sinks import message
from tests.receivers import AlertMaker, eventually

FAST = RetryConfig(max_attempts=20, initial_backoff=0.01, max_backoff=0.1)
ALERTS = AlertsConfig(poll_interval=0.05, shutdown_grace=5)

# Writes its stdin and environment to OUT/<n>.json; fails (exit 3) while OUT/fail-<n> files remain.
# The dispatcher runs deliveries side by side, so each run claims a failure by removing its file (one
# remover wins) and a record's number by creating its file exclusively.
RECORDER = """
import json, os, sys
out = sys.argv[1]
data = sys.stdin.buffer.read()
for name in sorted(f for f in os.listdir(out) if f.startswith("fail-")):
    try:
        os.remove(os.path.join(out, name))
    except FileNotFoundError:
        continue
    print("relay refused the request", flush=True)
    sys.exit(3)
n = 0
while True:
    try:
        fd = os.open(os.path.join(out, f"{n}.json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        break
    except FileExistsError:
        n += 1
with os.fdopen(fd, "w") as f:
    json.dump({"stdin": data.decode(), "env": dict(os.environ)}, f)
"""

# Starts a helper of its own that records its pid, then hangs: the timeout must kill both.
HANGER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(sys.argv[1], "w") as f:
    f.write(str(child.pid))
time.sleep(600)
"""

CHATTY = "import sys; sys.stdout.write('x' * (200 * 1024)); sys.stdout.flush()"


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def exec_config(command: list[str], **extra: Any) -> SinkConfig:
    fields: dict[str, Any] = {"name": "respond", "type": "exec", "command": command, "timeout": 10.0, "retry": FAST}
    fields.update(extra)
    return SinkConfig.model_validate(fields)


def recorded(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / f"{n}.json").read_text()) for n in range(len(list(out.glob("*.json"))))]


def gone(pid: int) -> bool:
    """No such process, or only its zombie left."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def test_alert_json_on_stdin_failures_retried_and_a_burst_once(
    sqlite_store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the dispatcher: each alert's stored JSON on stdin with its identity in the environment;
    two failing runs (exit 3) retried; a 30-alert block runs the command once with every alert; the
    daemon's own environment (other sinks' secrets) is not passed on."""
    monkeypatch.setenv("OTHER_SINK_SECRET", "must-not-leak")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fail-1").touch()
    (out / "fail-2").touch()
    maker = AlertMaker(sqlite_store)
    quiet = await maker.block([(1, 10**18)])
    burst = await maker.block([(100 + i, 10**15) for i in range(30)])
    recorder = script(tmp_path, "recorder.py", RECORDER)
    config = exec_config([sys.executable, recorder, str(out)], burst_threshold=10)
    dispatcher = Dispatcher(sqlite_store.outbox, build_sinks([config]), ALERTS)
    assert await dispatcher.drain(timeout=60)
    await dispatcher.stop()
    runs = recorded(out)
    assert len(runs) == 2
    [single] = [r for r in runs if "DEPOSITWATCH_ALERT_ID" in r["env"]]
    [summary] = [r for r in runs if "DEPOSITWATCH_BURST_KEY" in r["env"]]
    assert single["stdin"] == quiet[0].payload
    assert single["env"]["DEPOSITWATCH_IDEMPOTENCY_KEY"] == quiet[0].idempotency_key
    assert single["env"]["DEPOSITWATCH_KIND"] == "revoked_incoming"
    assert single["env"]["DEPOSITWATCH_SEVERITY"] == "critical"
    document = json.loads(summary["stdin"])
    assert document["burst"] is True and document["count"] == 30 and len(document["alerts"]) == 30
    assert document["totals"] == ["0.03 ETH"]
    assert {a["id"] for a in document["alerts"]} == {m.alert_id for m in burst}
    assert summary["env"]["DEPOSITWATCH_BURST_KEY"] == "burst:eth:2:revoked_incoming"
    for run in runs:
        assert "OTHER_SINK_SECRET" not in run["env"]
        assert set(run["env"]) - {"PATH", "LANG", "LC_ALL", "TZ", "LC_CTYPE"} <= {
            k for k in run["env"] if k.startswith("DEPOSITWATCH_")
        }
    attempts = [(await sqlite_store.outbox.deliveries(m.seq))[0].attempts for m in quiet + burst]
    assert attempts[1:] == [attempts[1]] * 30  # the burst's messages share its attempts
    assert attempts[0] + attempts[1] == 4  # two failed runs, then one success each
    assert not list(out.glob("fail-*"))


async def test_the_recorder_counts_runs_side_by_side_exactly(tmp_path: Path) -> None:
    """The recorder itself, as the dispatcher runs it: twelve runs at once over five failures give five
    refusals and seven records, each run's stdin in its own record."""
    out = tmp_path / "out"
    out.mkdir()
    for n in range(5):
        (out / f"fail-{n}").touch()
    recorder = script(tmp_path, "recorder.py", RECORDER)

    # Every run waits on its stdin until all have started, then all go at once.
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, recorder, str(out), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
        )
        for _ in range(12)
    ]
    for n, process in enumerate(processes):
        assert process.stdin is not None
        process.stdin.write(str(n).encode())
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
    statuses = [await process.wait() for process in processes]
    assert sorted(statuses) == [0] * 7 + [3] * 5
    assert len({r["stdin"] for r in recorded(out)}) == 7
    assert not list(out.glob("fail-*"))


async def test_non_zero_exit_is_a_failure_with_its_output(tmp_path: Path) -> None:
    """Exit 3: DeliveryError naming the program, the status and the end of its output."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "fail-1").touch()
    sink = ExecSink(exec_config([sys.executable, script(tmp_path, "r.py", RECORDER), str(out)]))
    with pytest.raises(DeliveryError) as failure:
        await sink.send(message())
    assert failure.value.reason == f"{sys.executable} exited with status 3; output: relay refused the request"
    assert not failure.value.timed_out


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    """A program that hangs (and started a helper): a timed-out failure, and both are killed."""
    pid_file = tmp_path / "child.pid"
    sink = ExecSink(exec_config([sys.executable, script(tmp_path, "hang.py", HANGER), str(pid_file)], timeout=2.0))
    with pytest.raises(DeliveryError, match="did not finish within 2 s; its process group was killed") as failure:
        await sink.send(message())
    assert failure.value.timed_out
    child = int(pid_file.read_text())
    await eventually(lambda: gone(child), timeout=10)


async def test_output_is_bounded_and_the_excess_noted(tmp_path: Path) -> None:
    """200 KiB of output: 64 KiB kept and logged, the rest read, discarded and counted; exit 0 delivers."""
    sink = ExecSink(exec_config([sys.executable, "-c", CHATTY]))
    with capture_logs() as logs:
        await sink.send(message())
    [entry] = [e for e in logs if e["event"] == "exec sink output"]
    assert len(entry["output"]) == OUTPUT_LIMIT == 64 * 1024
    assert entry["discarded_bytes"] == 200 * 1024 - OUTPUT_LIMIT
    assert entry["status"] == 0


async def test_missing_program_is_a_failure(tmp_path: Path) -> None:
    """A command that cannot start: a retryable DeliveryError, not a crash of the dispatcher."""
    sink = ExecSink(exec_config([str(tmp_path / "no-such-program")]))
    with pytest.raises(DeliveryError, match="cannot run"):
        await sink.send(message())


async def test_a_program_that_ignores_stdin_still_counts(tmp_path: Path) -> None:
    """`true` does not read its stdin: exit 0 is a delivery even when the pipe breaks."""
    sink = ExecSink(exec_config(["/bin/true"]))
    await sink.send(message(label="x" * 200_000))  # more than a pipe holds: `true` exits before reading
