"""Set-up of the tests in which privacy takes back what is stored (zones added while updates
wait, zones or consent changed while the agent is stopped, a purge cut short).

For the agent with an NMEA receiver: zones centred on the test drive (tests/support/nmea's
``position``, 1 Hz), whether a fix of the drive lies in one, and the GNSS samples of decoded
updates. For an outbox written directly: a three-signal schema (coolant, latitude, longitude),
the boot its updates carry, a home zone and raw latitudes north of it.

It holds no expectations: what must be taken back or kept is for each test to say.
"""

from __future__ import annotations

from typing import Any

from agent.policy.geo import distance_m
from agent.policy.privacy import Zone
from agent.spime import Schema, SignalDef
from tests.support.e2e import Key
from tests.support.nmea import north_of, position

T0 = 1767225600  # 2026-01-01T00:00:00Z: the epochs' day
FIXES = 200  # 1 Hz, 25 m apart northwards
GNSS = "Vehicle.CurrentLocation."
LAT, STATE = f"{GNSS}Latitude", f"{GNSS}State"


def drive_zone(name: str, second: int, radius: float) -> dict[str, Any]:
    """A zone of ``radius`` metres around the drive's fix of ``second``."""
    lat, lon = position(second)
    return {"name": name, "lat": lat, "lon": lon, "radius": radius}


def inside(zones: list[dict[str, Any]], t: float) -> bool:
    """Whether the fix of time ``t`` (a GNSS sample's time is its fix's) lies in a zone."""
    second = round(t - T0)
    assert 0 <= second < FIXES, t
    lat, lon = position(second)
    return any(distance_m(z["lat"], z["lon"], lat, lon) <= z["radius"] for z in zones)


def is_gnss(sample: dict[str, Any]) -> bool:
    """A sample of the receiver's position (its state is not one)."""
    return bool(sample["signal"].startswith(GNSS) and sample["signal"] != STATE)


def lat_seconds(docs: dict[Key, dict[str, Any]]) -> set[int]:
    """The drive's seconds whose latitude the updates hold."""
    return {round(s["t"] - T0) for d in docs.values() for s in d["samples"] if s["signal"] == LAT}


BOOT = bytes.fromhex("0123456789abcdef")
HOME = Zone("home", 48.0, 11.0, 300.0)
SCHEMA = Schema.build(
    [
        SignalDef(id=0, name="Health.Coolant", category="vehicle_health"),
        SignalDef(id=1, name="Loc.Lat", scale=1e-7, source="gnss:lat", category="location"),
        SignalDef(id=2, name="Loc.Lon", scale=1e-7, source="gnss:lon", category="location"),
    ]
)
LON = round(HOME.lon / 1e-7)  # the raw longitude of HOME's centre


def north(metres: float) -> int:
    """The raw latitude ``metres`` north of HOME's centre."""
    return round(north_of(HOME.lat, metres) / 1e-7)
