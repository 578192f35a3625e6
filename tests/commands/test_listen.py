"""`run --listen` and $DEPOSITWATCH_LISTEN: two instances on one host, each with its own endpoint; an
address in use is one clear line and a non-zero exit, not a traceback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.daemon.test_daemon import Setup, free_port, setup, stop, wait_until_async

__all__ = ["setup"]  # the daemon fixture (PostgreSQL: two instances share the store)


def run(config: Path, *extra: str, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "depositwatch", "--config", str(config), "--log-format", "json", "run", *extra],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )


async def exited(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    for _ in range(int(timeout / 0.05)):
        code = process.poll()
        if code is not None:
            return code
        await asyncio.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError("the daemon did not exit")


async def healthz(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
            return resp.status
    except aiohttp.ClientError:
        return None


async def test_a_second_instance_listens_where_told(setup: Setup, tmp_path: Path) -> None:
    """The leader on its config's port, a standby beside it on `--listen`; then one by the environment."""
    first = await setup.start(setup.config())
    config = setup.config()
    config.write_text(config.read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{free_port()}"'))
    port = free_port()
    second = run(config, "--listen", f"127.0.0.1:{port}", log=tmp_path / "second.log")
    try:
        await wait_until_async(lambda: healthz(f"http://127.0.0.1:{port}"), lambda status: status == 200)
        env_port = free_port()
        third = run(config, env={"DEPOSITWATCH_LISTEN": f"127.0.0.1:{env_port}"}, log=tmp_path / "third.log")
        try:
            await wait_until_async(lambda: healthz(f"http://127.0.0.1:{env_port}"), lambda status: status == 200)
        finally:
            third.terminate()
            assert await exited(third) == 0
    finally:
        second.terminate()
        assert await exited(second) == 0
    assert await stop(first) == 0


async def test_an_address_in_use_is_one_line_and_exit_2(setup: Setup, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "busy.log"
        process = run(setup.config(), "--listen", f"127.0.0.1:{port}", log=log)
        assert await exited(process) == 2
    output = log.read_text()
    assert "Traceback" not in output
    [line] = [text for text in output.splitlines() if text.startswith("depositwatch:")]
    assert line.startswith(f"depositwatch: http: cannot listen on 127.0.0.1:{port}: ") and "in use" in line


async def test_a_malformed_listen_address_is_refused(setup: Setup, tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    process = run(setup.config(), env={"DEPOSITWATCH_LISTEN": "localhost"}, log=log)
    assert await exited(process) == 2
    assert "DEPOSITWATCH_LISTEN: listen address 'localhost' is not HOST:PORT" in log.read_text()
