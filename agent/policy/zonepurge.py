"""Which location samples of a stored update a privacy zone added later takes back.

Pure: no I/O, no clock. ``OutsideZones`` is a ``keep`` for agent.purge: given an update's schema,
header and raw samples, it returns the samples that may still be sent once ``zones`` are in
force.

How a sample is placed: the values of one GNSS fix share the fix's receiver time stamp
(agent.gnss_wiring offers them so), and each is sent only when it changed since it was last
sent. So, per time stamp of an update, the position is that update's ``gnss:lat``/``gnss:lon``
at that time stamp, and a coordinate missing there is the last one sent before it (unchanged
since): earlier in the same update, or in the update before it (same boot, previous seq; an
update may close between two values of one fix) when that one was seen first. Then:

* GNSS samples (every ``gnss:*`` field but the state) at a time stamp whose position lies in a
  zone are dropped; so are those whose position is not known so (the update before was sent
  already): when in doubt, drop. With coarse positions (a schema with latitude and
  longitude only: ``coarse_location``) a grid point is dropped when any point of its grid cell
  could lie in a zone, since the zone applied to the exact fix before snapping.
* Other signals of category ``location`` or ``coarse_location`` (CAN positions, whose pairs
  the stored schema does not name) are kept only at a time stamp where the same update has a
  GNSS position outside every zone; otherwise dropped. The CAN position's own state
  (``in privacy zone``, ``fix``: agent.canposition) stays.
* The twin sees what the zone would have shown live: where a run of fixes is dropped, an
  ``in privacy zone`` state sample takes the place of its first fix, and ``fix`` comes back at
  the next position kept (in this or a later update; a state the receiver itself sent in
  between supersedes both). Values dropped only for want of a position add no state: they say
  nothing about where the car was. Nothing else of the update changes.

It does not read or write the outbox (agent.purge) nor filter live fixes (agent.policy.privacy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.locationschema import CAN_STATE_SOURCE, STATES
from agent.policy.geo import EARTH_RADIUS_M, distance_m
from agent.policy.privacy import Zone
from agent.spime import Header, Sample, Schema

LOCATION_CATEGORIES = frozenset({"location", "coarse_location"})
_IN_ZONE = STATES.index("in privacy zone")
_FIX = STATES.index("fix")
_M_PER_DEG = math.radians(1.0) * EARTH_RADIUS_M
_LAT, _LON, _STATE = "gnss:lat", "gnss:lon", "gnss:state"
_MAX_ENDS = 1024  # updates whose end position is remembered for their successor


@dataclass(frozen=True)
class _Roles:
    """What the purge needs to know of one schema's signals."""

    lat: int | None
    lon: int | None
    scale: tuple[float, float]  # degrees per raw unit of latitude, longitude
    state: int | None
    gnss: frozenset[int]  # GNSS fields dropped with their fix (not the state)
    other: frozenset[int]  # location signals of other sources (CAN)
    coarse: bool


def _roles(schema: Schema) -> _Roles:
    by_source = {s.source: s for s in schema.signals if s.source}
    lat, lon = by_source.get(_LAT), by_source.get(_LON)
    state = by_source.get(_STATE)
    gnss = frozenset(
        s.id for s in schema.signals if s.source.startswith("gnss:") and s.source != _STATE
    )
    other = frozenset(
        s.id
        for s in schema.signals
        if s.category in LOCATION_CATEGORIES
        and not s.source.startswith("gnss:")
        and s.source != CAN_STATE_SOURCE  # says where the car was not: never taken back
    )
    fields = {s.source for s in schema.signals if s.id in gnss}
    return _Roles(
        lat=None if lat is None else lat.id,
        lon=None if lon is None else lon.id,
        scale=(float(lat.scale) if lat else 0.0, float(lon.scale) if lon else 0.0),
        state=None if state is None else state.id,
        gnss=gnss,
        other=other,
        coarse=bool(fields) and fields <= {_LAT, _LON},
    )


class OutsideZones:
    """``keep(schema, head, samples)``: the samples of one update that may stay with
    ``zones`` in force (see the module docstring). Call it for the updates in the order they
    were written: the position an update ends at is where the next one (same boot, next seq)
    starts, and a ``fix`` state owed after a dropped run is added to a later update."""

    def __init__(self, zones: tuple[Zone, ...], coarse_grid: float) -> None:
        self.zones = zones
        self.coarse_grid = coarse_grid
        self.dropped = 0  # location samples dropped so far
        self._roles: dict[str, _Roles] = {}
        # An "in privacy zone" added here is the last state the twin saw: owed a "fix".
        self._hidden = False
        # (boot, seq) -> the position (degrees) an update ended at, for the next seq.
        self._ends: dict[tuple[str, int], tuple[float | None, float | None]] = {}

    def __call__(self, schema: Schema, head: Header, samples: list[Sample]) -> list[Sample]:
        roles = self._roles.get(schema.id)
        if roles is None:
            roles = self._roles[schema.id] = _roles(schema)
        if not (roles.gnss or roles.other):
            return samples
        start = self._ends.pop((head.boot, head.seq - 1), (None, None))
        inside, unknown, private_other, end = self._private_times(roles, samples, start)
        self._ends[(head.boot, head.seq)] = end
        if len(self._ends) > _MAX_ENDS:
            del self._ends[next(iter(self._ends))]
        out: list[Sample] = []
        for sample in samples:
            t, sid, _ = sample
            if sid == roles.state:
                self._hidden = False  # the receiver's own state supersedes what was added
            elif sid in roles.gnss:
                if t in inside or t in unknown:
                    self.dropped += 1
                    # Only a place known to be private is reported so: a value dropped for
                    # want of its position says nothing about where the car was.
                    if t in inside and roles.state is not None and not self._hidden:
                        out.append((t, roles.state, _IN_ZONE))
                        self._hidden = True
                    continue
                if self._hidden and roles.state is not None:
                    out.append((t, roles.state, _FIX))
                    self._hidden = False
            elif sid in roles.other and t in private_other:
                self.dropped += 1
                continue
            out.append(sample)
        return out

    def _private_times(
        self,
        roles: _Roles,
        samples: list[Sample],
        start: tuple[float | None, float | None],
    ) -> tuple[set[int], set[int], set[int], tuple[float | None, float | None]]:
        """Time stamps whose GNSS position lies in a zone, whose GNSS position is not known,
        and at which other location samples must go; and the position the update ends at."""
        lat_at: dict[int, float] = {}
        lon_at: dict[int, float] = {}
        times: dict[int, None] = {}  # location time stamps, in order of first appearance
        for t, sid, raw in samples:
            if sid == roles.lat:
                lat_at[t] = raw * roles.scale[0]
            elif sid == roles.lon:
                lon_at[t] = raw * roles.scale[1]
            if sid in roles.gnss or sid in roles.other:
                times.setdefault(t)
        inside: set[int] = set()
        unknown: set[int] = set()
        private_other: set[int] = set()
        lat, lon = start
        for t in times:
            lat, lon = lat_at.get(t, lat), lon_at.get(t, lon)
            if lat is None or lon is None:
                unknown.add(t)
            elif self._inside(roles, lat, lon):
                inside.add(t)
            if t not in lat_at or t not in lon_at or t in inside:
                private_other.add(t)
        return inside, unknown, private_other, (lat, lon)

    def _inside(self, roles: _Roles, lat: float, lon: float) -> bool:
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return True  # no place to check: when in doubt, drop
        slack = 0.0
        if roles.coarse:
            # The exact fix lay anywhere in the grid cell around the point sent.
            half = self.coarse_grid / 2 * _M_PER_DEG
            slack = math.hypot(half, half * math.cos(math.radians(lat)))
        return any(distance_m(z.lat, z.lon, lat, lon) <= z.radius + slack for z in self.zones)
