"""The in-flight window of one MQTT connection, and its PUBACK watchdog.

``Window`` holds the publishes waiting for a PUBACK (data rows by message id, control messages),
the window's size (``max_inflight``, lowered by the broker's Receive Maximum) and when the last
PUBACK came. The watchdog: while anything is in flight, a PUBACK must arrive within
``ack_timeout`` seconds of the last one (or of the window filling from empty); a cellular link
that dies without a FIN would otherwise be noticed only by keepalive, about two keepalives
later.

Part of one session (agent.uplink.session), made fresh with it, used on the worker thread only.
It does not publish or ack rows.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.uplink.stats import Counters


class Window:
    def __init__(
        self, size: int, ack_timeout: float, counters: Counters, clock: Callable[[], float]
    ) -> None:
        self.size = size
        self.rows: dict[int, int] = {}  # message id -> outbox row id
        self.ctrl: set[int] = set()  # message ids of control messages
        self._ack_timeout = ack_timeout
        self._counters = counters
        self._clock = clock
        self._progress_at = clock()
        self._reported = 0

    def free(self) -> int:
        return self.size - len(self.rows) - len(self.ctrl)

    def busy(self) -> bool:
        return bool(self.rows or self.ctrl)

    def progress(self) -> None:
        """A PUBACK came."""
        self._progress_at = self._clock()

    def dead(self) -> str | None:
        """Why the link is presumed dead (no PUBACK in time while busy), else None."""
        now = self._clock()
        if not self.busy():
            self._progress_at = now
            return None
        limit = self._ack_timeout
        if limit and now - self._progress_at > limit:
            n = len(self.rows) + len(self.ctrl)
            return f"no PUBACK for {limit:g} s with {n} in flight: link presumed dead"
        return None

    def report(self) -> None:
        """The data rows in flight to the counters: once per turn, not per PUBLISH or PUBACK
        (the counters sit behind a lock)."""
        n = len(self.rows)
        if n != self._reported:
            self._reported = n
            self._counters.set(in_flight=n)

    def clear(self) -> None:
        """The connection is gone: nothing is in flight any more."""
        self.rows.clear()
        self.ctrl.clear()
        self._reported = 0
        self._counters.set(in_flight=0)
