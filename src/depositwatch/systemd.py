"""sd_notify without a dependency: READY, STATUS, STOPPING and WATCHDOG over $NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends notifications to systemd; does nothing when not started by systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._address: str | None = None
        if address:
            # A leading @ names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given."""
        return self._sock is not None

    def send(self, **fields: str) -> None:
        """Send `KEY=value` lines; errors are ignored (systemd may be restarting)."""
        if self._sock is None or self._address is None:
            return
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        """Start-up is done."""
        self.send(ready="1", status=status)

    def status(self, status: str) -> None:
        """A one-line status for `systemctl status`."""
        self.send(status=status)

    def watchdog(self) -> None:
        """The main loop is alive."""
        self.send(watchdog="1")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.send(stopping="1", status="stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between pings systemd expects (half of WatchdogSec), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2
