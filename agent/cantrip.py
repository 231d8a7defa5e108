"""Trip-end withholding for positions decoded from CAN: location values that passed the privacy
zones wait here until the trip is known to have left the place of its start and to continue
past theirs, before anything reaches the sampler.

The trip's geometry is the GNSS receiver's: agent.policy.privacy's ``PrivacyFilter`` judges
points, each a position of the CAN pair (``move``: a new pair of coordinates, in a zone or not).
Location values (``add``: a frame's values that the zones let pass) ride on the point in force
when they passed, the first position at least as new as their frame; a point goes to the filter
when the next one comes, and the values of the points the filter lets out are ``released``
(with their own frames' times). A value whose frame came while the point before was still in
force goes with that point too when the filter dropped it as the trip's start.

A trip ends (``end``) at the park, at the wake, when the pair was silent for ``trip_gap`` (no
``[power]``) and at the end of the input: the values still held, near where the car stopped,
are dropped. At most ``MAX_HELD`` frames of values wait; the oldest beyond are dropped. Every
frame dropped is counted by why (``counters``). A new selection (reload) drops the values held
(they belong to the old selection's messages), not the trip.

It does not judge zones (agent.canposition) nor sample (agent.pipeline).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agent.policy.geo import Fix
from agent.policy.privacy import PrivacyFilter, Zone, zone_of

log = logging.getLogger(__name__)

# (the message's plan, its location values, the frame's time in ms)
Frame = tuple[Any, list[tuple[str, Any]], int]
MAX_HELD = 8192


@dataclass(frozen=True, eq=False)
class _Point(Fix):
    frames: list[Frame] = field(default_factory=list)
    # The point before this one was dropped as the trip's start.
    after_start: bool = False


class TripHold:
    """The trip of the CAN position and the location values it holds (module docstring)."""

    def __init__(self) -> None:
        self.filter = PrivacyFilter()
        self.gap: float | None = None  # seconds of silence that end a trip (None: [power])
        self.released: list[Frame] = []
        self.counters = dict.fromkeys(
            ("trip_start", "trip_end", "zone", "overflow", "reload", "released"), 0
        )
        self.held = 0  # frames held now
        self.trips = 0  # trips ended
        self._point: _Point | None = None
        self._heard: float | None = None  # scheduling time of the pair's latest frame

    @property
    def active(self) -> bool:
        return self.filter.trip_end_radius > 0

    def configure(self, zones: tuple[Zone, ...], radius: float, gap: float | None) -> None:
        """A new selection: its zones, radius and gap; the values held are dropped."""
        for p in self._points():
            self._drop(p, "reload")
        self.gap = gap
        self.filter.trip_end_radius = radius
        self.set_zones(zones)

    def set_zones(self, zones: tuple[Zone, ...]) -> None:
        """Zones from now on: values held at a point inside one of them are dropped."""
        before = self.held
        self.filter.set_zones(zones)
        kept = sum(len(p.frames) for p in self._points())
        p = self._point
        if p is not None and zone_of(zones, p.lat, p.lon) is not None:
            kept -= len(p.frames)
            p.frames.clear()
        self.held = kept
        self.counters["zone"] += before - kept

    def heard(self, now: float) -> None:
        """A frame of the pair at ``now`` (scheduling time): a trip silent for ``gap`` ends
        first."""
        if self.gap is not None and self._heard is not None and now - self._heard >= self.gap:
            self.end("the CAN position was silent")
        self._heard = now

    def tick(self, now: float) -> None:
        if self.gap is not None and self._heard is not None and now - self._heard >= self.gap:
            self.end("the CAN position was silent")

    def move(self, lat: float, lon: float, t_ms: int) -> None:
        """The pair's position of a frame at ``t_ms``: the point in force from now on."""
        prev = self._point
        if prev is not None and prev.lat == lat and prev.lon == lon:
            return
        started = False
        if prev is not None:
            started = self._offer(prev)
        self._point = _Point(t_ms, lat, lon, after_start=started)

    def add(self, frame: Frame) -> None:
        """Location values that passed the zones, to wait with the point in force."""
        p = self._point
        if p is None or (p.after_start and frame[2] < p.t):
            self.counters["trip_start"] += 1
            return
        p.frames.append(frame)
        self.held += 1
        if self.held > MAX_HELD:
            self._trim()

    def end(self, why: str) -> None:
        """The trip ended: the last point goes to the filter, then what it holds is dropped."""
        p = self._point
        if p is None and self._heard is None:
            return
        if p is not None:
            self._offer(p)
        dropped = 0
        for q in self._points():
            dropped += self._drop(q, "trip_end")
        self.filter.end_trip()
        self._point = None
        self._heard = None
        self.trips += 1
        log.info(
            "CAN position: trip ended (%s); %d frames of location values withheld", why, dropped
        )

    def take(self) -> list[Frame]:
        out, self.released = self.released, []
        return out

    def status(self) -> dict[str, int]:
        return {"trips": self.trips, "held": self.held, **self.counters}

    def _points(self) -> list[_Point]:
        held = [p for p in self.filter.held if isinstance(p, _Point)]
        if self._point is not None:
            held.append(self._point)
        return held

    def _offer(self, p: _Point) -> bool:
        """``p`` to the filter; True when it was dropped as the trip's start."""
        f = self.filter
        c = f.counters
        start, zone, overflow = c["trip_start"], c["zone"], c["overflow"]
        first = f.held[0] if f.held else None
        out = f.offer(p)
        for q in out:
            assert isinstance(q, _Point)
            self.released.extend(q.frames)
            self.counters["released"] += len(q.frames)
            self.held -= len(q.frames)
        if c["overflow"] > overflow and isinstance(first, _Point) and first not in out:
            self._drop(first, "overflow")
        if c["zone"] > zone:
            self._drop(p, "zone")
        if c["trip_start"] > start:
            self._drop(p, "trip_start")
            return True
        return False

    def _drop(self, p: _Point, why: str) -> int:
        n = len(p.frames)
        p.frames.clear()
        self.held -= n
        self.counters[why] += n
        return n

    def _trim(self) -> None:
        """Beyond MAX_HELD: the oldest frames go, down to seven eighths (so not at every add)."""
        for p in self._points():
            while p.frames and self.held > MAX_HELD * 7 // 8:
                p.frames.pop(0)
                self.held -= 1
                self.counters["overflow"] += 1
            if self.held <= MAX_HELD * 7 // 8:
                return
