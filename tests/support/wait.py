"""Waiting on a condition with a deadline: the tests' only way to wait (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Like wait_until, but a timeout fails the test, naming what was awaited."""
    if not wait_until(predicate, timeout, interval=0.01):
        raise AssertionError(f"timed out waiting for {what}")
