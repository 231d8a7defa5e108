"""Where the car's CAN position lies: inside a privacy zone, outside every zone, or not known.

Pure: no I/O, no clock. The caller hands in each decoded coordinate (degrees) of the one
latitude/longitude pair the config names; the guard keeps the latest of each and says whether
the position they form lies in a zone. Location values may pass only while the position is
known to be outside every zone (``outside``): before both coordinates were seen, and while
inside a zone, they are withheld (when in doubt, withhold).

A coordinate that is no number (NaN, an infinity: a receiver's "invalid") places the car
nowhere: it changes nothing here. With the two coordinates in different messages, a new value
of one is judged with the latest of the other.

It does not decode frames nor withhold values (agent.canposition), and knows nothing of the
GNSS receiver's fixes (agent.policy.privacy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.policy.privacy import Zone, zone_of


@dataclass
class PositionGuard:
    zones: tuple[Zone, ...] = ()
    lat: float | None = None
    lon: float | None = None
    # None: no position known yet; True: inside a zone; False: outside every zone.
    inside: bool | None = None

    @property
    def outside(self) -> bool:
        return self.inside is False

    def place(self, lat: float | None, lon: float | None) -> bool:
        """The latest decoded coordinates (None: not in this frame); True when the position
        crossed a zone's border (or became known)."""
        if lat is not None and math.isfinite(lat):
            self.lat = lat
        if lon is not None and math.isfinite(lon):
            self.lon = lon
        return self._judge()

    def set_zones(self, zones: tuple[Zone, ...]) -> bool:
        """Zones from now on; True when that moved the known position in or out of a zone."""
        self.zones = zones
        return self._judge()

    def _judge(self) -> bool:
        if self.lat is None or self.lon is None:
            return False
        inside = zone_of(self.zones, self.lat, self.lon) is not None
        changed = inside != self.inside
        self.inside = inside
        return changed
