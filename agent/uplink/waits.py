"""The uplink worker's waits between connections: reconnect delays, the pause, and the stop.

``Waits`` owns what ends a wait early (``kick``: stop, pause, resume and reconnect requests),
the stop and its deadline, and the reconnect delays (agent.backoff), shown in the stats while
they last. It lives as long as the uplink. It does not connect or decide when a connection was
healthy (agent.uplink.uplink does, and calls ``reset_backoff``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.backoff import Backoff
from agent.uplink.stats import Counters

log = logging.getLogger("agent.uplink")


class Waits:
    def __init__(self, reconnect_min: float, reconnect_max: float, counters: Counters) -> None:
        self._counters = counters
        # Reset when a connection proved healthy, not by time.
        self._backoff = Backoff(reconnect_min, reconnect_max)
        # Ends the waits between attempts and while paused.
        self._kick = threading.Event()
        self._stop = threading.Event()
        self.stop_deadline = float("inf")

    # ---- any thread ---------------------------------------------------------------------------

    def kick(self) -> None:
        """End the wait going on (or the next one) at once."""
        self._kick.set()

    def stop(self, timeout: float) -> None:
        """Stop: the worker may go on publishing for ``timeout`` seconds."""
        self.stop_deadline = time.monotonic() + timeout
        self._stop.set()
        self._kick.set()

    # ---- the worker ---------------------------------------------------------------------------

    @property
    def stop_event(self) -> threading.Event:
        return self._stop

    def stopping(self) -> bool:
        return self._stop.is_set()

    def stopping_done(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self.stop_deadline

    def clear_kick(self) -> None:
        """Any kick so far is answered by the attempt about to begin."""
        self._kick.clear()

    def retry_wait(self) -> None:
        """One backoff delay before the next attempt, shown in the stats while it lasts."""
        delay = self._backoff.next_delay()
        self._counters.set(retries=self._backoff.attempts, retry_delay=round(delay, 3))
        self._sleep(delay)
        self._counters.set(retry_delay=None)

    def reset_backoff(self) -> None:
        self._backoff.reset()
        self._counters.set(retries=0)

    def _sleep(self, seconds: float) -> None:
        """Wait before the next attempt; a kick (stop, pause, resume, reconnect) ends it."""
        until = min(time.monotonic() + seconds, self.stop_deadline)
        while not self.stopping_done():
            left = until - time.monotonic()
            if left <= 0 or self._kick.wait(left):
                return

    def paused(self, reason_now: Callable[[], str | None], where: str) -> bool:
        """Disconnected and paused: block (no timer) until the pause ends (``reason_now()``
        None) or a stop; False on stop. ``where``: the broker, for the log line."""
        reason = reason_now()
        log.info("MQTT paused (%s): no connection until resumed", reason)
        while reason is not None:
            self._counters.set(paused=reason, state="paused", closed_for=reason)
            if self._stop.is_set():
                return False
            self._kick.wait()
            self._kick.clear()
            reason = reason_now()
        self._counters.set(paused=None, state="disconnected", closed_for=None)
        # The radio was off, not the broker failing: the first attempt goes at once, and the
        # delays after it start from the shortest.
        self.reset_backoff()
        log.info("MQTT resumed: connecting to %s", where)
        return True
