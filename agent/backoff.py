"""The one retry-delay policy of the agent: exponential backoff with full jitter.

Used wherever something is retried after a failure (the MQTT uplink's reconnects and refused
publishes, a CAN bus reopened after it failed, ``listen``'s reconnects). Delay n (n = 1, 2, ...)
is drawn uniformly between ``low`` and ``min(high, low * 2**n)``: the jitter starts with the
first retry, so a fleet that lost its broker at the same moment does not come back in
lock-step, and the floor ``low`` keeps a failing peer from being hammered in a tight loop.

A success does not end the backoff at once: ``succeeded()`` marks the start of a good period,
and only a good period that lasted ``stable_after`` seconds resets the delays. A bus that opens
and fails at once, or a broker that accepts and then drops every connection, keeps backing off.

It does not sleep (callers wait on their own stop events) and does not log.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        low: float,
        high: float,
        *,
        stable_after: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if not 0 < low <= high:
            raise ValueError(f"backoff needs 0 < low <= high, got {low}, {high}")
        self.low, self.high = low, high
        self.stable_after = stable_after
        self._clock = clock
        self._uniform = uniform
        self._attempts = 0
        self._good_since: float | None = None

    @property
    def attempts(self) -> int:
        """Failures counted since the last reset."""
        return self._attempts

    def next_delay(self) -> float:
        """Count one failure and return how long to wait before the next try."""
        if self._good_since is not None:
            if self._clock() - self._good_since >= self.stable_after:
                self._attempts = 0
            self._good_since = None
        self._attempts += 1
        # Past 2**64 the cap is `high` anyway: keep the exponent small.
        cap = min(self.high, self.low * 2.0 ** min(self._attempts, 64))
        return self._uniform(self.low, cap)

    def succeeded(self) -> None:
        """A success began; the delays reset once it has lasted ``stable_after`` seconds."""
        if self._good_since is None:
            self._good_since = self._clock()

    def reset(self) -> None:
        """Start over at once (a success that needs no proving period)."""
        self._attempts = 0
        self._good_since = None
