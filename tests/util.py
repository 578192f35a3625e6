"""Utilities shared by the tests: the one polling helper, a free port, a loopback server, a notify socket
standing in for systemd.

A test waits on a state, never for a fixed time: `eventually(check, timeout, what)` polls `check`
(plain or async) until it holds and fails naming `what` when it never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web


async def within(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    *,
    every: float = 0.05,
    stop_if: Callable[[], str | None] | None = None,
) -> bool:
    """Whether `check` (plain or async) comes true within `timeout` seconds, polled every `every` seconds.
    False at once when `stop_if` gives a reason to stop waiting (the process under test has exited)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return True
        if (stop_if is not None and stop_if() is not None) or time.monotonic() > deadline:
            return False
        await asyncio.sleep(every)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    timeout: float = 30.0,
    what: str = "the condition",
    *,
    every: float = 0.05,
    stop_if: Callable[[], str | None] | None = None,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll `check` until it holds; AssertionError naming `what` after `timeout` seconds, or at once with
    the reason `stop_if` gives (a daemon that exited), followed by `detail()` (a log's tail, what was seen)."""
    if await within(check, timeout, every=every, stop_if=stop_if):
        return
    reason = stop_if() if stop_if is not None else None
    message = f"{reason} waiting for {what}" if reason else f"timed out after {timeout} s waiting for {what}"
    raise AssertionError(message + (f":\n{detail()}" if detail is not None else ""))


_HANDED_OUT: set[int] = set()


def _port_slice() -> range:
    """This process's ports: below the kernel's ephemeral range (where outgoing connections and port-0
    binds take theirs, so none can take one between a test choosing it and a daemon binding it), one slice
    for each pytest-xdist worker (so two workers never choose the same port)."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low, high = 10000, max(ephemeral, 12000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker) % count if worker.isdigit() else 0
    size = (high - low) // count
    return range(low + index * size, low + (index + 1) * size)


_PORTS = itertools.cycle(_port_slice())


async def serve(app: web.Application, port: int = 0, **options: Any) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1 (`port`, or a free one when 0; reused after a restart) with the tests' quiet
    runner (no access log, no signal handlers, a short shutdown: `options` change them); return the runner
    (clean it up to stop) and the port."""
    settings: dict[str, Any] = {"access_log": None, "handle_signals": False, "shutdown_timeout": 0.1, **options}
    runner = web.AppRunner(app, **settings)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner, runner.addresses[0][1]


def free_port() -> int:
    """A TCP port on 127.0.0.1, free a moment ago, from this process's slice (`_port_slice`) and not handed
    out before by it: two calls in a row (a daemon's HTTP port, then its API port) may otherwise get the
    same port, since the first is closed again before the daemon binds it."""
    for _ in range(len(_port_slice())):
        port = next(_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port left in {_port_slice()}")


class NotifySocket:
    """A notify socket the test owns, standing in for systemd: `messages` are (time read, text) pairs.

    Created inside a running event loop, it reads the messages as they come, as systemd does (so a
    message's time is when it arrived); `drain()` reads whatever is waiting in any case.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock.fileno(), self.drain)

    @property
    def texts(self) -> list[str]:
        """The messages' texts, in arrival order."""
        return [text for _, text in self.messages]

    def drain(self) -> list[tuple[float, str]]:
        """Read what is waiting; all messages so far."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def said(self, text: str) -> bool:
        """Whether some message so far contains `text`."""
        return any(text in m for _, m in self.drain())

    async def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Wait for a message containing `text`."""
        try:
            await eventually(lambda: self.said(text), timeout, f"{text!r} from the daemon")
        except AssertionError:
            raise AssertionError(f"no {text!r} from the daemon; got {self.texts[-5:]}") from None

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
