"""Which fixes of a drive are sent: tracker rules, or curve logging within a tolerance.

Pure: no I/O, no clock. Decisions use the fixes' own times (receiver UTC, ms), so a recorded
drive replayed at any speed keeps the same fixes. The caller offers fixes in time order and
calls ``flush`` when the stream stops (trip end, receiver down, shutdown).

Two modes (``TrackPolicy.mode``):

* ``curve`` (default): streaming simplification. The last kept fix is the anchor; a fix is
  dropped while every fix since the anchor lies within ``tolerance`` metres of the straight
  segment from the anchor to the newest fix. When one would not, the previous fix is kept and
  becomes the anchor. So a backend that joins the kept fixes with straight lines (linear in
  time) has every dropped fix within ``tolerance`` of that line. A fix within ``tolerance`` of
  the anchor is within tolerance of every segment from it and need not be stored, which bounds
  memory while parked. Besides the shape: a fix is kept at the latest ``max_delay`` seconds
  after the anchor while moving, ``parked_interval`` while parked (speed below ``parked_speed``
  and within ``tolerance`` of the anchor), and ``max_points`` bounds the fixes held.
* ``rules``: what trackers do. A fix is kept, at most once per ``min_interval``, when it moved
  ``distance`` metres from the last kept one, turned ``heading`` degrees, changed speed by
  ``speed_change`` km/h, or ``max_interval`` passed (``parked_interval`` while parked).

It does not read receivers (agent.sources) nor withhold private places (agent.policy.privacy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agent.policy.geo import Fix, distance_m, segment_distance_m

Mode = Literal["curve", "rules"]


@dataclass(frozen=True)
class TrackPolicy:
    mode: Mode = "curve"
    tolerance: float = 10.0  # metres (curve)
    max_delay: float = 30.0  # seconds a fix may wait for the decision (curve)
    max_points: int = 600  # fixes held for the decision (curve)
    min_interval: float = 1.0  # seconds (rules)
    max_interval: float = 60.0  # seconds, heartbeat while moving (rules)
    parked_interval: float = 3600.0  # seconds, heartbeat while parked (both)
    parked_speed: float = 3.0  # km/h
    distance: float = 100.0  # metres (rules)
    heading: float = 10.0  # degrees (rules)
    speed_change: float = 10.0  # km/h (rules)


def _turn(a: float, b: float) -> float:
    return abs((b - a + 180.0) % 360.0 - 180.0)


@dataclass
class TrackSampler:
    """Keeps the fixes worth sending (see the module docstring)."""

    policy: TrackPolicy = field(default_factory=TrackPolicy)
    counters: dict[str, int] = field(default_factory=lambda: {"kept": 0, "dropped": 0})
    _anchor: Fix | None = None
    _held: list[Fix] = field(default_factory=list)  # farther than tolerance from the anchor
    _last: Fix | None = None  # newest fix offered and not kept

    def offer(self, fix: Fix) -> list[Fix]:
        """Takes the next fix; returns the fixes kept by it (older ones first)."""
        a = self._anchor
        if a is None:
            return self._keep(fix)
        if self.policy.mode == "rules":
            return self._keep(fix) if self._rules(a, fix) else self._drop(fix)
        return self._curve(a, fix)

    def flush(self) -> list[Fix]:
        """The stream stopped: keeps the newest fix not yet kept; the next fix starts afresh."""
        out = [] if self._last is None else [self._last]
        self.counters["kept"] += len(out)
        self.counters["dropped"] -= len(out)
        self._anchor, self._held, self._last = None, [], None
        return out

    def forget(self, private: Callable[[Fix], bool]) -> int:
        """Drops the fix waiting for the decision (the only one ``flush`` or a later keep could
        still hand out) when ``private`` says so: a privacy zone was added. The number dropped."""
        if self._last is None or not private(self._last):
            return 0
        self._last = None
        return 1

    def _keep(self, fix: Fix) -> list[Fix]:
        self._anchor, self._held, self._last = fix, [], None
        self.counters["kept"] += 1
        return [fix]

    def _drop(self, fix: Fix) -> list[Fix]:
        self._last = fix
        self.counters["dropped"] += 1
        return []

    def _parked(self, a: Fix, fix: Fix) -> bool:
        slow = fix.speed is None or fix.speed < self.policy.parked_speed
        return slow and distance_m(a.lat, a.lon, fix.lat, fix.lon) <= self.policy.tolerance

    def _rules(self, a: Fix, fix: Fix) -> bool:
        p = self.policy
        age = (fix.t - a.t) / 1000
        if age < p.min_interval:
            return False
        if self._parked(a, fix):
            return age >= p.parked_interval
        if age >= p.max_interval or distance_m(a.lat, a.lon, fix.lat, fix.lon) >= p.distance:
            return True
        turned = a.heading is not None and fix.heading is not None
        if turned and _turn(a.heading, fix.heading) >= p.heading:  # type: ignore[arg-type]
            return True
        if a.speed is not None and fix.speed is not None:
            return abs(fix.speed - a.speed) >= p.speed_change
        return False

    def _curve(self, a: Fix, fix: Fix) -> list[Fix]:
        p = self.policy
        prev = self._last
        age = (fix.t - a.t) / 1000
        parked = self._parked(a, fix)
        if parked and not self._held:
            if age >= p.parked_interval:
                return self._keep(fix)
            return self._drop(fix)
        straight = all(segment_distance_m(a, fix, h) <= p.tolerance for h in self._held)
        if straight and age <= p.max_delay and len(self._held) < p.max_points:
            if distance_m(a.lat, a.lon, fix.lat, fix.lon) > p.tolerance:
                self._held.append(fix)
            return self._drop(fix)
        if prev is None:
            return self._keep(fix)
        # keep the previous fix: everything since the anchor lay within tolerance of a-prev
        self.counters["dropped"] -= 1
        out = self._keep(prev)
        return out + self.offer(fix)
