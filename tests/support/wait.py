"""Waiting on a condition with a deadline: the tests' only way to wait (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Like wait_until, but return the predicate's first true value; a timeout fails the test,
    naming what was awaited."""
    found: list[T] = []

    def hit() -> bool:
        value = predicate()
        if value:
            found.append(value)
        return bool(value)

    if not wait_until(hit, timeout, interval=0.01):
        raise AssertionError(f"timed out waiting for {what}")
    return found[0]


class TestClock:
    """A monotonic clock for the part under test (its ``clock`` argument) that moves only when
    the test moves it: a state that lasts "down_after seconds" holds, however late a loaded
    machine lets the test look, until the test lets the time pass (``advance``, or
    ``passing`` inside a wait that needs time to go by)."""

    __test__ = False  # not a test class for pytest

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def passing(self, predicate: Callable[[], T], step: float = 0.05) -> Callable[[], T]:
        """``predicate`` for wait_for, with ``step`` seconds passing at each look."""

        def look() -> T:
            self.now += step
            return predicate()

        return look
