"""NMEA GNSS receiver on a serial port: reads it on its own thread, hands out private fixes.

Opens the port with ``serial.serial_for_url`` (a device, a pseudo-terminal, or a pyserial URL
such as ``socket://host:port``) and feeds the bytes to ``NmeaReader``. Fixes inside a privacy
zone are dropped first; the rest pass the track sampler, then the privacy filter (trip ends).
What comes out is queued (bounded: the oldest fix beyond ``queue_limit`` is dropped and
counted). State changes (``fix``, ``no fix``, ``gnss down``, ``in privacy zone``) are logged
and kept in ``state``. A port that fails is reopened with the agent's backoff. A trip ends when
the receiver stays down for ``trip_gap`` seconds or the source stops: the sampler's last fix
goes to the privacy filter, which then drops the trailing fixes it held.

It does not decide what is sent (agent.policy) nor turn fixes into schema signals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import serial

from agent.backoff import Backoff
from agent.policy.geo import Fix
from agent.policy.privacy import PrivacyFilter, zone_of
from agent.policy.track import TrackSampler
from agent.sources.nmea import NmeaReader

log = logging.getLogger(__name__)

_READ_SLICE = 0.1  # seconds one read may block: keeps state checks and stop responsive


class NmeaSource:
    """One receiver port and its thread (``start``/``stop``); fixes are taken with ``take``."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        track: TrackSampler | None = None,
        privacy: PrivacyFilter | None = None,
        down_after: float = 3.0,
        trip_gap: float = 300.0,
        queue_limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.baudrate = url, baudrate
        self.reader = NmeaReader(down_after=down_after)
        self.track = track or TrackSampler()
        self.privacy = privacy or PrivacyFilter()
        self.trip_gap = trip_gap
        self.state: str = "gnss down"
        self.dropped = 0
        self.opens = 0  # times the port was opened (pyserial discards what came before)
        self._queue: deque[Fix] = deque()
        self._limit = queue_limit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._in_trip = False
        self._in_zone = False

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
                self.privacy.counters["zone"] += 1
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
            log.info("gnss %s: %s -> %s", self.url, self.state, state)
            self.state = state

    def _run(self) -> None:
        backoff = Backoff(0.5, 30.0, stable_after=30.0)
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=_READ_SLICE)
            except (serial.SerialException, OSError, ValueError) as err:
                log.warning("gnss %s: cannot open: %s", self.url, err)
                self._pause(backoff.next_delay())
                continue
            self.opens += 1
            backoff.succeeded()
            try:
                while not self._stop.is_set():
                    data = port.read(max(1, port.in_waiting))
                    now = self._clock()
                    self._offer(self.reader.feed(bytes(data), now))
                    self._set_state(now)
                    if self.state == "gnss down":
                        down_since = now if down_since is None else down_since
                        if now - down_since >= self.trip_gap:
                            self._end_trip()
                    else:
                        down_since = None
            except (serial.SerialException, OSError, TypeError) as err:
                log.warning("gnss %s: read failed: %s", self.url, err)
            finally:
                port.close()
            self._pause(backoff.next_delay())

    def _pause(self, delay: float) -> None:
        """Waits for the retry, keeping the state current: a dead port turns into gnss down."""
        end = self._clock() + delay
        while not self._stop.is_set() and (left := end - self._clock()) > 0:
            self._stop.wait(min(left, _READ_SLICE))
            self._set_state(self._clock())
