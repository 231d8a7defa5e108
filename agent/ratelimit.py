"""Rate-limited logging for the data path: the first occurrence of a problem is logged at once,
repeats at most once per interval with the count of those suppressed in between.

It does not configure logging (agent.cli does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: Any) -> None:
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return
        if last is None and len(self._seen) >= self.max_keys:
            self._seen.clear()  # bounded memory beats perfect suppression
        suppressed = last[1] if last else 0
        self._seen[key] = (now, 0)
        if suppressed:
            msg += f" (and {suppressed} more like it since last logged)"
        self.logger.log(level, msg, *args)

    def warning(self, key: Hashable, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, key, msg, *args)
