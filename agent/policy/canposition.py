"""Where the car's CAN position lies: inside a privacy zone, outside every zone, or not known;
and when a location value of a given time may be judged.

Pure: no I/O, no clock. The caller hands in each decoded coordinate (degrees) of the one
latitude/longitude pair the config names, with its frame's data time; the guard keeps the
latest of each and says whether the position they form lies in a zone. A coordinate that is no
number (NaN, an infinity: a receiver's "invalid") makes the position unknown until a valid one
comes.

A location value of time ``t`` is judged by the positions around it: the one in force when its
frame arrived (``before``) and the first whose two coordinates both come from frames at or
after ``t`` (``ready``): it may pass only when both lie outside every zone (an unknown
``before``, at the start, counts as outside; an unknown ``after`` is not ready). So a heading
whose frame arrives just before the position frame that enters a zone, or a latitude whose
longitude comes in the next frame of another message, is judged with the position that
followed it. With both coordinates in one message, a frame's own position is both.

It does not decode frames nor hold values (agent.canposition), and knows nothing of the
GNSS receiver's fixes (agent.policy.privacy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.policy.privacy import Zone, zone_of

_NEVER = -(1 << 62)


@dataclass
class PositionGuard:
    zones: tuple[Zone, ...] = ()
    lat: float | None = None
    lon: float | None = None
    # Data times (ms) of the latest frames that carried each coordinate.
    lat_t: int = _NEVER
    lon_t: int = _NEVER
    # None: no position known; True: inside a zone; False: outside every zone.
    inside: bool | None = None

    @property
    def outside(self) -> bool:
        return self.inside is False

    def place(self, lat: float | None, lon: float | None, t_ms: int) -> bool:
        """The coordinates of a frame at ``t_ms`` (None: not in this frame); True when the
        position became known inside or outside, or crossed a zone's border."""
        if lat is not None:
            self.lat = lat if math.isfinite(lat) else None
            self.lat_t = max(self.lat_t, t_ms)
        if lon is not None:
            self.lon = lon if math.isfinite(lon) else None
            self.lon_t = max(self.lon_t, t_ms)
        return self._judge()

    def confirm(self, lat: bool, lon: bool, t_ms: int) -> None:
        """A frame at ``t_ms`` repeated the coordinates it carries (an unchanged payload)."""
        if lat:
            self.lat_t = max(self.lat_t, t_ms)
        if lon:
            self.lon_t = max(self.lon_t, t_ms)

    def ready(self, t_ms: int) -> bool:
        """Whether the position in force is at least as new as a value of time ``t_ms``."""
        return self.lat_t >= t_ms and self.lon_t >= t_ms

    def set_zones(self, zones: tuple[Zone, ...]) -> bool:
        """Zones from now on; True when that moved the known position in or out of a zone."""
        self.zones = zones
        return self._judge()

    def forget(self) -> None:
        """The pair is no longer decoded: where the car is is not known any more."""
        self.lat = self.lon = None
        self.lat_t = self.lon_t = _NEVER
        self.inside = None

    def _judge(self) -> bool:
        inside = None
        if self.lat is not None and self.lon is not None:
            inside = zone_of(self.zones, self.lat, self.lon) is not None
        crossed = inside is not None and inside != self.inside
        self.inside = inside
        return crossed
