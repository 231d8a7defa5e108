"""What every GNSS source shares: the receiver's state, and the path from fixes to the queue.

``Liveness`` is the state of a receiver whose protocol reports epochs one by one (gpsd's TPV
reports, a modem's AT answers): ``gnss down`` when nothing valid came for ``down_after``
seconds, ``no fix`` when the last epoch had no position or is older than ``down_after``, ``fix``
otherwise. The NMEA reader feeds it from its sentences and epochs.

``FixSource`` is the life of a source's thread and of its fixes: a fix inside a privacy zone is
dropped first; the rest pass the track sampler, then the privacy filter (trip ends); what comes
out is queued (bounded: the oldest fix beyond ``queue_limit`` is dropped and counted) and handed
out by ``take``. State changes (``fix``, ``no fix``, ``gnss down``, ``in privacy zone``) are
logged and kept in ``state``. A trip ends when the receiver stays down for ``trip_gap`` seconds
or the source stops: the sampler's last fix goes to the privacy filter, which then drops the
trailing fixes it held. Subclasses read their receiver in ``_run`` and call ``_offer`` and
``_tick``; they do not decide what is sent (agent.policy) nor turn fixes into schema signals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, Protocol

from agent.policy.geo import Fix
from agent.policy.privacy import PrivacyFilter, zone_of
from agent.policy.track import TrackSampler

log = logging.getLogger(__name__)

GnssState = Literal["fix", "no fix", "gnss down"]
# seconds one wait may last: keeps state checks and stop responsive
SLICE = 0.1


class Liveness:
    """The three receiver states from "something valid came" and "an epoch ended" events."""

    def __init__(self, down_after: float) -> None:
        self.down_after = down_after
        self._heard: float | None = None
        self._epoch_at: float | None = None
        self._epoch_fix = False

    def heard(self, now: float) -> None:
        """A valid message that says the receiver is alive (not necessarily a new epoch)."""
        self._heard = now

    def epoch(self, now: float, fix: bool) -> None:
        self._heard = self._epoch_at = now
        self._epoch_fix = fix

    def forget(self) -> None:
        """The link to the receiver went away: nothing heard before counts any more."""
        self._heard = self._epoch_at = None
        self._epoch_fix = False

    def state(self, now: float) -> GnssState:
        if self._heard is None or now - self._heard > self.down_after:
            return "gnss down"
        fresh = self._epoch_at is not None and now - self._epoch_at <= self.down_after
        if self._epoch_fix and fresh:
            return "fix"
        return "no fix"


class _Reader(Protocol):
    def state(self, now: float) -> GnssState: ...


class FixSource:
    """One receiver and its thread (``start``/``stop``); fixes are taken with ``take``."""

    reader: _Reader

    def __init__(
        self,
        name: str,
        *,
        track: TrackSampler | None = None,
        privacy: PrivacyFilter | None = None,
        trip_gap: float = 300.0,
        queue_limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.track = track or TrackSampler()
        self.privacy = privacy or PrivacyFilter()
        self.trip_gap = trip_gap
        self.state: str = "gnss down"
        self.dropped = 0
        self._queue: deque[Fix] = deque()
        self._limit = queue_limit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._in_trip = False
        self._in_zone = False
        self._down_since: float | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gnss", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._end_trip()

    def take(self) -> list[Fix]:
        """The fixes released since the last call, oldest first."""
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
        return out

    def _run(self) -> None:
        raise NotImplementedError

    def _put(self, fixes: list[Fix]) -> None:
        with self._lock:
            for f in fixes:
                if len(self._queue) >= self._limit:
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(f)

    def _offer(self, fixes: list[Fix]) -> None:
        for fix in fixes:
            self._in_trip = True
            # Zones first: a fix inside one never reaches the sampler, not even as an anchor.
            self._in_zone = zone_of(self.privacy.zones, fix.lat, fix.lon) is not None
            if self._in_zone:
                # The privacy filter still sees it (and drops it): a trip that starts in a zone
                # starts there, and its first fixes outside are withheld around that place.
                self.privacy.offer(fix)
                continue
            for kept in self.track.offer(fix):
                self._put(self.privacy.offer(kept))

    def _end_trip(self) -> None:
        if not self._in_trip:
            return
        self._in_trip = False
        for kept in self.track.flush():
            self._put(self.privacy.offer(kept))
        dropped = self.privacy.end_trip()
        log.info("gnss: trip ended; %d trailing fixes withheld", dropped)

    def _set_state(self, now: float) -> None:
        state: str = self.reader.state(now)
        if state == "fix" and self._in_zone:
            state = "in privacy zone"
        if state != self.state:
            log.info("gnss %s: %s -> %s", self.name, self.state, state)
            self.state = state

    def _tick(self, now: float) -> None:
        """The state at ``now``; a receiver down for ``trip_gap`` ends the trip."""
        self._set_state(now)
        if self.state == "gnss down":
            self._down_since = now if self._down_since is None else self._down_since
            if now - self._down_since >= self.trip_gap:
                self._end_trip()
        else:
            self._down_since = None

    def _pause(self, delay: float) -> None:
        """Waits for a retry, keeping the state current: a dead link turns into gnss down."""
        end = self._clock() + delay
        while not self._stop.is_set() and (left := end - self._clock()) > 0:
            self._stop.wait(min(left, SLICE))
            self._tick(self._clock())
