"""The uplink's counters and state as other threads read them, behind one condition variable.

The worker thread writes, anyone reads a consistent ``UplinkStats`` snapshot or waits for the
outbox to be seen drained. Nothing here calls paho, so the lock is never held across a paho
call (paho runs our callbacks while holding its own locks).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class UplinkStats:
    state: str  # "connecting", "connected", "disconnected", "paused", "stopped"
    last_error: str | None
    connects: int
    attempts: int  # connection attempts, successful or not
    published: int
    acked: int
    refused: int
    in_flight: int
    receive_maximum: int | None
    # Payload plus estimated MQTT framing per PUBLISH sent (see pacing.publish_size).
    bytes_sent: int
    errors: int  # exceptions caught in callbacks or in the worker loop
    dead_links: int  # connections given up because PUBACKs stopped coming (see ack_timeout)
    paused: str | None = None  # why the link is paused (Uplink.pause), else None
    # Failed attempts and connections that ended by themselves since the delays last started
    # over, and the delay being waited before the next attempt (None when not waiting).
    retries: int = 0
    retry_delay: float | None = None


class Counters:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.state = "disconnected"
        self.last_error: str | None = None
        self.connects = self.attempts = self.published = self.acked = self.refused = 0
        self.bytes_sent = self.errors = self.dead_links = 0
        self.in_flight = 0
        self.receive_maximum: int | None = None
        self.paused: str | None = None
        self.retries = 0
        self.retry_delay: float | None = None
        # The pause whose link is closed (its DISCONNECT sent): what Uplink.pause waits for.
        self.closed_for: str | None = None
        self._iteration = 0
        self._drained_iteration = -1

    def add(self, **deltas: int) -> None:
        with self.cond:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def set(self, **values: object) -> None:
        with self.cond:
            for name, value in values.items():
                setattr(self, name, value)
            if "state" in values or "closed_for" in values:
                self.cond.notify_all()

    def snapshot(self) -> UplinkStats:
        with self.cond:
            return UplinkStats(
                state=self.state,
                last_error=self.last_error,
                connects=self.connects,
                attempts=self.attempts,
                published=self.published,
                acked=self.acked,
                refused=self.refused,
                in_flight=self.in_flight,
                receive_maximum=self.receive_maximum,
                bytes_sent=self.bytes_sent,
                errors=self.errors,
                dead_links=self.dead_links,
                paused=self.paused,
                retries=self.retries,
                retry_delay=self.retry_delay,
            )

    def next_iteration(self) -> int:
        """One turn of the worker loop begins; returns its number."""
        with self.cond:
            self._iteration += 1
            return self._iteration

    def saw_drained(self, iteration: int) -> None:
        """The worker found no rows and nothing in flight during ``iteration``."""
        with self.cond:
            self._drained_iteration = iteration
            self.cond.notify_all()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the worker saw the outbox drained in a turn begun after this call."""
        with self.cond:
            start = self._iteration
            return self.cond.wait_for(lambda: self._drained_iteration > start, timeout)

    def wait_paused(self, reason: str, timeout: float) -> bool:
        """Wait until the worker closed the link for ``reason`` (or stopped)."""
        with self.cond:
            return self.cond.wait_for(
                lambda: self.state == "stopped" or self.closed_for == reason,
                timeout,
            )
