"""systemd's notify protocol (READY, WATCHDOG, STATUS, STOPPING) with the standard library.

Sends datagrams to ``$NOTIFY_SOCKET`` when systemd gave one; does nothing otherwise, so the
agent runs the same under systemd, in a terminal and in tests. It decides nothing about when
to notify (agent.daemon does).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._addr = ""
        if address:
            # A leading "@" names a socket in the abstract namespace.
            self._addr = "\0" + address[1:] if address.startswith("@") else address
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError as err:
                log.warning("cannot create the systemd notify socket: %s", err)
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        if usec and usec.isdigit() and (pid is None or pid == str(os.getpid())):
            # Ping at half the timeout, as systemd recommends.
            self.watchdog_interval = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except OSError as err:
            log.debug("sd_notify %s failed: %s", fields, err)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def extend_start(self, seconds: float) -> None:
        """Before READY: systemd's start timeout ends ``seconds`` from now at the earliest."""
        self.notify(f"EXTEND_TIMEOUT_USEC={round(seconds * 1e6)}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
