"""The exec sink: run a configured program (no shell) with the alert JSON on stdin.

Exit 0 is a delivery; any other exit, or no exit within the sink's timeout, is a failure, retried
like any sink's. The program runs in a process group of its own, killed whole on timeout or shutdown,
so a helper it started cannot outlive the attempt. Its output (stdout and stderr together) is kept up
to OUTPUT_LIMIT bytes and logged; the rest is read and discarded, so a chatty program never blocks on
a full pipe. The environment is a small fixed one: the daemon's own variables may hold the secrets of
other sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import structlog

from depositwatch.alerts.routing import Routed
from depositwatch.alerts.sinks import Burst, DeliveryError
from depositwatch.config import SinkConfig
from depositwatch.jsonutil import dumps_bytes, loads
from depositwatch.messages import OutboxMessage

log = structlog.get_logger("depositwatch.alerts")

OUTPUT_LIMIT = 64 * 1024
READ_CHUNK = 16 * 1024
REASON_OUTPUT = 200  # characters of output quoted in a failure's reason
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class ExecSink(Routed):
    """Runs `command` per alert (and once per burst, with every alert of it)."""

    summarizes_bursts = True

    def __init__(self, config: SinkConfig) -> None:
        assert config.command
        super().__init__(config)
        self.command = list(config.command)

    async def send(self, message: OutboxMessage) -> None:
        """Run the command with the stored alert body on stdin."""
        await self.run(
            message.payload.encode(),
            {
                "DEPOSITWATCH_ALERT_ID": message.alert_id,
                "DEPOSITWATCH_IDEMPOTENCY_KEY": message.idempotency_key,
                "DEPOSITWATCH_EVENT": message.event,
                "DEPOSITWATCH_KIND": message.kind,
                "DEPOSITWATCH_SEVERITY": message.severity,
                "DEPOSITWATCH_CHAIN": message.chain,
            },
        )

    async def send_burst(self, burst: Burst) -> None:
        """Run the command once with `{"burst": true, ..., "alerts": [every body]}` on stdin."""
        document: dict[str, Any] = {
            "burst": True,
            "chain": burst.chain,
            "block_height": burst.block_height,
            "kind": burst.kind,
            "event": burst.event,
            "severity": burst.severity,
            "count": burst.count,
            "key": burst.dedup_key,
            "totals": burst.totals(),
            "alerts": [loads(m.payload) for m in burst.messages],
        }
        await self.run(
            dumps_bytes(document),
            {
                "DEPOSITWATCH_BURST_KEY": burst.dedup_key,
                "DEPOSITWATCH_EVENT": burst.event,
                "DEPOSITWATCH_KIND": burst.kind,
                "DEPOSITWATCH_SEVERITY": burst.severity,
                "DEPOSITWATCH_CHAIN": burst.chain,
            },
        )

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        """A fixed environment: PATH, locale and time zone from the daemon, the alert's identity."""
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env.update(extra)
        return env

    async def run(self, stdin: bytes, extra_env: dict[str, str]) -> None:
        """Run once; DeliveryError unless the program exits 0 within the timeout."""
        program = self.command[0]
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(extra_env),
                start_new_session=True,  # a process group of its own: killed whole
                close_fds=True,
            )
        except OSError as exc:
            raise DeliveryError(f"cannot run {program}: {exc.strerror or exc}") from None
        kept = bytearray()
        discarded = 0
        feeder = asyncio.create_task(_feed(process, stdin))
        try:
            async with asyncio.timeout(self.config.timeout):
                assert process.stdout is not None
                while chunk := await process.stdout.read(READ_CHUNK):
                    room = OUTPUT_LIMIT - len(kept)
                    kept += chunk[:room]
                    discarded += max(0, len(chunk) - room)
                status = await process.wait()
                await feeder
        except TimeoutError:
            _kill_group(process)
            await _reap(process)
            self._log_output(kept, discarded, None)
            raise DeliveryError(
                f"{program} did not finish within {self.config.timeout:g} s; its process group was killed",
                timed_out=True,
            ) from None
        finally:
            if process.returncode is None:  # cancelled (shutdown or the dispatcher's own timeout)
                _kill_group(process)
                await asyncio.shield(_reap(process))
            if not feeder.done():  # still writing to a program that is gone
                feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        self._log_output(kept, discarded, status)
        if status != 0:
            output = " ".join(bytes(kept).decode(errors="replace").split())
            tail = f"; output: {output[-REASON_OUTPUT:]}" if output else ""
            what = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
            raise DeliveryError(f"{program} {what}{tail}")

    def _log_output(self, kept: bytearray, discarded: int, status: int | None) -> None:
        if not kept and not discarded:
            return
        log.info(
            "exec sink output",
            sink=self.name,
            status=status,
            output=bytes(kept).decode(errors="replace"),
            discarded_bytes=discarded,
        )

    async def close(self) -> None:
        """Nothing is kept open between runs."""


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    """Write stdin and close it; a program that does not read it is not a failure of ours."""
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(data)
        await process.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.close()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _reap(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        await process.wait()
