"""Rate limiting on the monotonic clock: one interval gate, and rate-limited log lines built on it.

``Interval`` says whether something may happen now (at most once per interval); the modem
recovery steps and ``RateLimitedLog`` both use it. ``RateLimitedLog`` logs the first occurrence
of a problem at once and repeats at most once per interval, with the count of those suppressed
in between. Neither configures logging (agent.cli does) nor reads wall time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

Clock = Callable[[], float]


class Interval:
    """A gate that opens at most once per ``seconds``; the first call always opens it.

    ``allow(now)`` takes the time from the caller (so one reading serves several decisions);
    without it the injected clock is read. Not thread-safe: one owner.
    """

    def __init__(self, seconds: float, clock: Clock = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._last: float | None = None

    def ready(self, now: float | None = None) -> bool:
        """Would ``allow`` open now? (Does not consume the opening.)"""
        t = self.clock() if now is None else now
        return self._last is None or t - self._last >= self.seconds

    def allow(self, now: float | None = None) -> bool:
        """Open (and start a new interval) if the last opening is at least ``seconds`` ago."""
        t = self.clock() if now is None else now
        if self._last is not None and t - self._last < self.seconds:
            return False
        self._last = t
        return True


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Clock = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[Hashable, tuple[Interval, int]] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: Any) -> None:
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self.max_keys:
                self._seen.clear()  # bounded memory beats perfect suppression
            seen = (Interval(self.interval, self.clock), 0)
        gate, suppressed = seen
        if not gate.allow(now):
            self._seen[key] = (gate, suppressed + 1)
            return
        self._seen[key] = (gate, 0)
        if suppressed:
            msg += f" (and {suppressed} more like it since last logged)"
        self.logger.log(level, msg, *args)

    def warning(self, key: Hashable, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, key, msg, *args)
