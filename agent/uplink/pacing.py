"""Publishing policy of the uplink: how fast a backlog drains and what a PUBLISH costs.

Pure: no paho, no I/O; the clock is passed in. The session (agent.uplink.session) asks the
bucket before each telemetry publish (events are never held back by it) and the refusal pause
before publishing any data row.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.backoff import Backoff
from agent.spime.codec import uvarint_len


class TokenBucket:
    """Messages per second with a one-second burst; rate 0 means unlimited.

    It lives as long as the uplink, not one connection: a link that flaps must not reset the
    pace and flood the cell with a burst on every reconnect.
    """

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._last = clock()

    def available(self) -> float:
        if not self.rate:
            return float("inf")
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens

    def take(self) -> None:
        if self.rate:
            self._tokens -= 1.0

    def time_to_token(self) -> float:
        return 0.0 if not self.rate else max(0.0, (1.0 - self._tokens) / self.rate)


def publish_size(topic_len: int, payload_len: int, v5: bool) -> int:
    """Estimated bytes of one QoS 1 PUBLISH on the wire (TLS and TCP overhead not counted):
    fixed header byte + remaining-length varint + 2-byte topic length + topic + 2-byte packet id
    + (MQTT 5) 1-byte empty property length + payload."""
    remaining = 2 + topic_len + 2 + (1 if v5 else 0) + payload_len
    return 1 + uvarint_len(remaining) + remaining


class RefusalPause:
    """After a refused data publish, data waits: refusals (e.g. an ACL) usually hit every row,
    so all data pauses for a backoff delay, growing while refusals go on and starting over
    after an accepted publish; never a hot loop. One per connection."""

    def __init__(self, shortest: float, longest: float) -> None:
        self._backoff = Backoff(shortest, longest)
        self._until = 0.0

    def left(self, now: float) -> float:
        """Seconds data must still wait (0 or less: none)."""
        return self._until - now

    def refused(self, now: float) -> None:
        if now >= self._until:
            self._until = now + self._backoff.next_delay()

    def accepted(self) -> None:
        self._backoff.reset()
