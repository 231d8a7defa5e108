"""NMEA GNSS receiver on a serial port: reads it on its own thread, hands out private fixes.

Opens the port with ``serial.serial_for_url`` (a device, a pseudo-terminal, or a pyserial URL
such as ``socket://host:port``) and feeds the bytes to ``NmeaReader``; privacy zones, sampling,
trip ends, the bounded queue and the state are ``FixSource``'s (agent.sources.fixsource). A
port that fails is reopened with the agent's backoff; paused, the port is closed (what the
receiver sends meanwhile is discarded when it is opened again at the resume).

It does not decide what is sent (agent.policy) nor turn fixes into schema signals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import serial

from agent.backoff import Backoff
from agent.policy.privacy import PrivacyFilter
from agent.policy.track import TrackSampler
from agent.sources.fixsource import SLICE, FixSource
from agent.sources.nmea import NmeaReader

log = logging.getLogger(__name__)


class NmeaSource(FixSource):
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
        super().__init__(
            url,
            track=track,
            privacy=privacy,
            trip_gap=trip_gap,
            queue_limit=queue_limit,
            clock=clock,
        )
        self.url, self.baudrate = url, baudrate
        self.reader: NmeaReader = NmeaReader(down_after=down_after)
        self.opens = 0  # times the port was opened (pyserial discards what came before)

    def _run(self) -> None:
        backoff = Backoff(0.5, 30.0, stable_after=30.0)
        while not self._halt.is_set():
            try:
                port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=SLICE)
            except (serial.SerialException, OSError, ValueError) as err:
                log.warning("gnss %s: cannot open: %s", self.url, err)
                self._pause(backoff.next_delay())
                continue
            self.opens += 1
            backoff.succeeded()
            try:
                while not self._halt.is_set():
                    data = port.read(max(1, port.in_waiting))
                    now = self._clock()
                    self._offer(self.reader.feed(bytes(data), now))
                    self._tick(now)
            except (serial.SerialException, OSError, TypeError) as err:
                log.warning("gnss %s: read failed: %s", self.url, err)
            finally:
                port.close()
            self._pause(backoff.next_delay())
