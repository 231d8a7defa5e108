"""What every GNSS source shares: the receiver's state, and the path from fixes to the queue.

``Liveness`` is the state of a receiver whose protocol reports epochs one by one (gpsd's TPV
reports, a modem's AT answers): ``gnss down`` when nothing valid came for ``down_after``
seconds, ``no fix`` when the last epoch had no position or is older than ``down_after``, ``fix``
otherwise. The NMEA reader feeds it from its sentences and epochs.

``FixSource`` is the life of a source's thread and of its fixes: a fix inside a privacy zone is
dropped first; the rest pass the track sampler, then the privacy filter (trip ends); what comes
out goes into ``fixes`` (an agent.feed.Feed: the oldest fix beyond ``queue_limit`` is dropped
and counted; its ``wake`` is the pipeline's) and is handed out by ``take``. State changes
(``fix``, ``no fix``, ``gnss down``, ``in privacy zone``) are logged and kept in ``state``. A
trip ends when the receiver stays down for ``trip_gap`` seconds, the source is paused or stops:
the sampler's last fix goes to the privacy filter, which then drops the trailing fixes it held.

``pause`` (the car parked) ends the reading: the subclass's ``_run`` returns, its port or
connection closed, ``_release`` switches the receiver off where the source switched it on, the
trip ends and the state is ``paused``; the thread then blocks without a timeout until
``resume`` or ``stop``, so nothing wakes for GNSS while parked. After ``resume`` the receiver is
read again from scratch (nothing heard before the pause counts) and the state stays ``paused``
until the receiver says something or ``down_after`` passes (then ``gnss down`` is the truth);
the first fixes start a new trip. Subclasses read their receiver in ``_run`` until ``_halt`` is
set and call ``_offer`` and ``_tick``; they do not decide what is sent (agent.policy) nor turn
fixes into schema signals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Literal, Protocol

from agent.feed import Feed
from agent.policy.geo import Fix
from agent.policy.privacy import PrivacyFilter, Zone, zone_of
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
    down_after: float

    def state(self, now: float) -> GnssState: ...

    def forget(self) -> None: ...


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
        self.fixes: Feed[Fix] = Feed(queue_limit)
        # Held by the receiver's thread while a fix passes zones, sampler and trip ends, and by
        # set_zones: new zones never meet a fix half way through.
        self._offer_lock = threading.Lock()
        self._stop = threading.Event()
        # Set by stop and pause: the reading loops of the subclasses end at it.
        self._halt = threading.Event()
        self._cond = threading.Condition()
        self._pause_reason: str | None = None  # paused for this (parked, low voltage)
        self._idle = False  # the thread is paused: receiver released, trip ended
        self._resumed_at: float | None = None
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._in_trip = False
        self._in_zone = False
        self._down_since: float | None = None

    def start(self) -> None:
        """Starts the thread; a source paused before its start starts paused."""
        self._thread = threading.Thread(target=self._main, name="gnss", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        self._end_trip()

    def pause(self, reason: str = "paused", timeout: float = 5.0) -> bool:
        """Stops reading the receiver (see the module docstring) and waits until it is done;
        False if ``timeout`` passed first (a read or a modem command still under way)."""
        with self._cond:
            self._pause_reason = reason
            self._halt.set()
            thread = self._thread
            if thread is None:
                return True
            return self._cond.wait_for(
                lambda: self._idle or self._pause_reason is None or not thread.is_alive(), timeout
            )

    def resume(self) -> None:
        """Reads the receiver again at once."""
        with self._cond:
            self._pause_reason = None
            if not self._stop.is_set():
                self._halt.clear()
            self._cond.notify_all()

    @property
    def paused(self) -> str | None:
        """Why the source is paused, or None."""
        return self._pause_reason

    def take(self) -> list[Fix]:
        """The fixes released since the last call, oldest first."""
        return self.fixes.take()

    def _main(self) -> None:
        while not self._stop.is_set():
            if not self._halt.is_set():
                self._run()
            if not self._stop.is_set():
                self._sleep()

    def set_zones(self, zones: tuple[Zone, ...]) -> int:
        """Thread-safe: privacy zones from now on. Fixes that passed the old zones but wait in
        the sampler, the trip-end hold or the queue are dropped when inside a new one (a zone
        added now covers them too); the number dropped."""

        def private(fix: Fix) -> bool:
            return zone_of(zones, fix.lat, fix.lon) is not None

        with self._offer_lock:
            dropped = self.privacy.set_zones(zones) + self.track.forget(private)
            dropped += self.fixes.discard(private)
        return dropped

    def _run(self) -> None:
        """Reads the receiver until ``_halt`` is set, its port or connection closed on return."""
        raise NotImplementedError

    def _release(self) -> None:
        """Paused: switches off what the source switched on (nothing for a port it only reads)."""

    def _sleep(self) -> None:
        """Paused: the receiver released and the trip ended, blocks until resumed or stopped."""
        self._release()
        self._end_trip()
        self._down_since = None
        if self.state != "paused":
            log.info("gnss %s: %s -> paused (%s)", self.name, self.state, self._pause_reason)
            self.state = "paused"
        with self._cond:
            self._idle = True
            self._cond.notify_all()
            # No timeout: nothing wakes this thread while paused.
            self._cond.wait_for(lambda: self._pause_reason is None or self._stop.is_set())
            self._idle = False
        if not self._stop.is_set():
            self.reader.forget()
            self._resumed_at = self._clock()
            log.info("gnss %s: resumed", self.name)

    def _offer(self, fixes: list[Fix]) -> None:
        with self._offer_lock:
            for fix in fixes:
                self._offer_one(fix)

    def _offer_one(self, fix: Fix) -> None:
        self._in_trip = True
        # Zones first: a fix inside one never reaches the sampler, not even as an anchor.
        self._in_zone = zone_of(self.privacy.zones, fix.lat, fix.lon) is not None
        if self._in_zone:
            # The privacy filter still sees it (and drops it): a trip that starts in a zone
            # starts there, and its first fixes outside are withheld around that place.
            self.privacy.offer(fix)
            return
        for kept in self.track.offer(fix):
            self.fixes.put(self.privacy.offer(kept))

    def _end_trip(self) -> None:
        if not self._in_trip:
            return
        self._in_trip = False
        with self._offer_lock:
            for kept in self.track.flush():
                self.fixes.put(self.privacy.offer(kept))
            dropped = self.privacy.end_trip()
        log.info("gnss: trip ended; %d trailing fixes withheld", dropped)

    def _set_state(self, now: float) -> None:
        state: str = self.reader.state(now)
        if state == "fix" and self._in_zone:
            state = "in privacy zone"
        if self._resumed_at is not None:
            # Just resumed: "gnss down" only once the receiver had down_after to speak.
            if state == "gnss down" and now - self._resumed_at < self.reader.down_after:
                state = "paused"
            else:
                self._resumed_at = None
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
        while not self._halt.is_set() and (left := end - self._clock()) > 0:
            self._halt.wait(min(left, SLICE))
            self._tick(self._clock())
