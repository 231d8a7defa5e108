"""Reports of the MQTT link going up and down: once per change of state or reason, never per
attempt.

The first failure and every new reason are logged and told to ``on_link`` (the daemon hands a
failure to the modem manager as a data-path failure); repeats of the same reason are counted
and summed up when the reason changes or the link comes back. It does not connect or retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.uplink.stats import Counters

log = logging.getLogger("agent.uplink")


class LinkReport:
    def __init__(
        self,
        where: str,
        retry_range: tuple[float, float],
        counters: Counters,
        on_link: Callable[[bool, str], None] | None,
        count_error: Callable[[str, BaseException], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._where = where
        self._retry = retry_range
        self._counters = counters
        self._on_link = on_link
        self._count_error = count_error
        self._clock = clock
        self._up: bool | None = None
        self._reason: str | None = None
        self._down_since = 0.0
        self._repeats = 0  # failures with the same reason since it was logged

    def down(self, reason: str) -> None:
        self._counters.set(state="disconnected", last_error=reason)
        if self._up is False and reason == self._reason:
            self._repeats += 1
            return
        if self._up is not False:
            self._down_since = self._clock()
        elif self._repeats:
            log.info("MQTT: %d more failed attempts with the previous reason", self._repeats)
        self._up, self._reason, self._repeats = False, reason, 0
        log.warning(
            "MQTT link down: %s (retrying every %.1f-%.1f s with jitter)", reason, *self._retry
        )
        self._tell(False, reason)

    def up(self, details: str) -> None:
        self._counters.add(connects=1)
        self._counters.set(state="connected")
        outage = ""
        if self._up is False:
            outage = f" after an outage of {self._clock() - self._down_since:.1f} s"
            if self._repeats:
                outage += f" ({self._repeats} more failed attempts)"
        self._up, self._reason, self._repeats = True, None, 0
        log.info("MQTT connected to %s (%s)%s", self._where, details, outage)
        self._tell(True, "connected")

    def _tell(self, up: bool, reason: str) -> None:
        if self._on_link is None:
            return
        try:
            self._on_link(up, reason)
        except Exception as err:
            self._count_error("on_link", err)
