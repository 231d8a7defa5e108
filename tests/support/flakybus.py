"""Test support: a python-can backend that opens fine and fails on its first read, the way a
USB CAN adapter that re-enumerates or a bus-off controller does. Registered under the interface
name ``spime-flaky`` by ``register()``; every open is recorded with its monotonic time.

A fake at the hardware edge only (this machine has no CAN hardware); the agent's Source uses it
through python-can's public ``can.Bus`` like any other backend.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import can
import can.interfaces

NAME = "spime-flaky"
_lock = threading.Lock()
_opens: list[float] = []


class FlakyBus(can.BusABC):
    def __init__(self, channel: Any = None, **kwargs: Any) -> None:
        super().__init__(channel=channel, **kwargs)
        self.channel_info = f"flaky {channel}"
        with _lock:
            _opens.append(time.monotonic())

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise can.CanOperationError("flaky bus: cannot send")

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        raise can.CanOperationError("flaky bus: controller went bus-off")


def register() -> None:
    can.interfaces.BACKENDS[NAME] = (__name__, "FlakyBus")


def opens() -> list[float]:
    with _lock:
        return list(_opens)


def reset() -> None:
    with _lock:
        _opens.clear()
