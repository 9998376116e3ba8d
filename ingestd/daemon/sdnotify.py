"""The systemd notify protocol, in the standard library: READY, STATUS, WATCHDOG, STOPPING.

A datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (an abstract
socket when it starts with ``@``). Without that variable every call is a
no-op, so the daemon runs the same under systemd, in a container or by hand.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from ingestd.logs import get_logger

log = get_logger("ingestd.daemon.sdnotify")


class Notifier:
    """Sends state changes to systemd, if it is listening."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, message: str) -> bool:
        """Send one notify message (``KEY=VALUE`` lines); False if it could not be sent."""
        if not self.address:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message.encode(), self.address)
            return True
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sdnotify.failed", error=exc.strerror or str(exc))
            return False

    def ready(self, status: str) -> bool:
        return self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.send(f"STOPPING=1\nSTATUS={status}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings systemd expects (``WatchdogSec=``), or None."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None
