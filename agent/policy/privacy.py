"""Location privacy on the box: privacy zones and trip-end withholding, before anything is stored.

Pure: no I/O, no clock. The caller offers fixes in time order and says when a trip ends; what
comes out may be stored and sent, nothing else.

* Zones: circles (centre, radius in metres). A fix inside any zone never comes out, neither
  exact nor coarse (coarsening happens later, on what comes out); the state is then
  ``in privacy zone``.
* Trip start: the first fix of a trip is its origin. Fixes within ``trip_end_radius`` of the
  origin are withheld and dropped for the whole trip: they never come out, whether or not the
  car leaves (a loop back past the start reveals it no more than the start itself).
* Trip end: every later fix is held until the trip is known to continue past it, that is until
  a newer fix lies farther than ``trip_end_radius`` from it; held fixes come out in time order
  (a held fix waits for the ones before it). ``end_trip`` drops what is still held: the fixes
  near where the car stopped. Holding is bounded by ``max_held``: the oldest held fix beyond it
  is dropped (never released early), and counted.

Counters: ``zone`` (inside a zone), ``trip_start``, ``trip_end``, ``overflow`` (dropped fixes).

It does not decide which fixes are worth sending (agent.policy.track) nor coarsen positions
(agent.pipeline's ``coarse_location``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.policy.geo import Fix, distance_m

PrivacyState = Literal["ok", "in privacy zone"]
DEFAULT_TRIP_END_RADIUS = 500.0
DEFAULT_MAX_HELD = 7200


@dataclass(frozen=True)
class Zone:
    name: str
    lat: float
    lon: float
    radius: float  # metres


def zone_of(zones: tuple[Zone, ...], lat: float, lon: float) -> Zone | None:
    """The first zone that contains (lat, lon), or None; the border counts as inside."""
    for z in zones:
        if distance_m(z.lat, z.lon, lat, lon) <= z.radius:
            return z
    return None


@dataclass
class _Trip:
    origin: Fix | None = None
    held: deque[Fix] = field(default_factory=deque)


@dataclass
class PrivacyFilter:
    """Zones and trip ends over a stream of fixes (see the module docstring)."""

    zones: tuple[Zone, ...] = ()
    trip_end_radius: float = DEFAULT_TRIP_END_RADIUS
    max_held: int = DEFAULT_MAX_HELD
    state: PrivacyState = "ok"
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("zone", "trip_start", "trip_end", "overflow"), 0)
    )
    _trip: _Trip = field(default_factory=_Trip)

    def offer(self, fix: Fix) -> list[Fix]:
        """Takes the next fix; returns the fixes that may now be stored and sent, in order."""
        trip = self._trip
        if trip.origin is None:
            trip.origin = fix
        if zone_of(self.zones, fix.lat, fix.lon) is not None:
            self.state = "in privacy zone"
            self.counters["zone"] += 1
            return []
        self.state = "ok"
        radius = self.trip_end_radius
        if radius <= 0:
            return [fix]
        if distance_m(trip.origin.lat, trip.origin.lon, fix.lat, fix.lon) <= radius:
            self.counters["trip_start"] += 1
            return []
        out: list[Fix] = []
        held = trip.held
        while held and distance_m(held[0].lat, held[0].lon, fix.lat, fix.lon) > radius:
            out.append(held.popleft())
        held.append(fix)
        if len(held) > self.max_held:
            held.popleft()
            self.counters["overflow"] += 1
        return out

    @property
    def held(self) -> Sequence[Fix]:
        """The fixes held for the trip's end, oldest first (to read, not to change)."""
        return self._trip.held

    def set_zones(self, zones: tuple[Zone, ...]) -> int:
        """Zones from now on; held fixes inside one of them are dropped (counted as ``zone``):
        a zone added while a fix waits here must not let it out later. The number dropped."""
        self.zones = zones
        held = self._trip.held
        kept = deque(f for f in held if zone_of(zones, f.lat, f.lon) is None)
        dropped = len(held) - len(kept)
        self._trip.held = kept
        self.counters["zone"] += dropped
        return dropped

    def end_trip(self) -> int:
        """The trip ended: drops the held trailing fixes; the next fix starts a new trip."""
        dropped = len(self._trip.held)
        self.counters["trip_end"] += dropped
        self._trip = _Trip()
        return dropped
