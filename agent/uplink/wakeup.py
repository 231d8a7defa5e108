"""A wake-up for the uplink's idle wait: a self-pipe that any thread can set, waited on together
with the MQTT socket.

With a downlink (subscriptions), an idle uplink must notice three things at once: a message on
the socket (a command), a message queued by another thread (its answer) and a new outbox row.
``wait`` selects on the socket and the pipe; ``set`` (from ``Uplink.publish`` and the outbox's
commit hook) writes one byte. It does not read the socket (paho does, on the worker thread).
The pipe lives as long as the uplink (one per process): never closed, so a late ``set`` can
never write into a reused file descriptor.
"""

from __future__ import annotations

import contextlib
import os
import select
from typing import Any


class Wakeup:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def set(self) -> None:
        """From any thread: make the current or the next ``wait`` return at once."""
        # A full pipe means a wake-up is pending anyway.
        with contextlib.suppress(OSError):
            os.write(self._w, b"\0")

    def wait(self, sock: Any, timeout: float) -> None:
        """Until ``sock`` is readable, ``set`` was called, or ``timeout`` seconds passed."""
        if sock is not None and getattr(sock, "pending", lambda: 0)():
            return  # TLS holds decrypted bytes select() cannot see
        watch = [self._r] if sock is None else [sock, self._r]
        try:
            select.select(watch, [], [], timeout)
        except (OSError, ValueError):
            return  # the socket closed under us: the next loop() reports it
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
