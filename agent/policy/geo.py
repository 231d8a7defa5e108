"""Positions on the earth: the fix value, great-circle distance, distance to a segment.

Pure: plain arithmetic on degrees and metres. Distances use a sphere of the mean earth radius:
good to about 0.5 %, far below what privacy radii and track tolerances need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Fix:
    """One receiver epoch with a valid position; ``t`` is the receiver's UTC in Unix ms."""

    t: int
    lat: float
    lon: float
    altitude: float | None = None
    speed: float | None = None  # km/h over ground
    heading: float | None = None  # degrees from true north
    hdop: float | None = None
    quality: int = 1  # GGA quality indicator (1 GPS, 2 DGPS, 4 RTK fixed...), 1 from RMC alone
    satellites: int | None = None
    # HorizontalAccuracy in metres, where the receiver or an estimate gives one
    accuracy: float | None = None


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _local_xy(lat0: float, lon0: float, lat: float, lon: float) -> tuple[float, float]:
    """Metres east and north of (lat0, lon0), equirectangular: fine over a few kilometres."""
    dlon = (lon - lon0 + 540.0) % 360.0 - 180.0
    x = math.radians(dlon) * EARTH_RADIUS_M * math.cos(math.radians((lat + lat0) / 2))
    y = math.radians(lat - lat0) * EARTH_RADIUS_M
    return x, y


def segment_distance_m(a: Fix, b: Fix, p: Fix) -> float:
    """Distance in metres from ``p`` to the straight segment ``a``-``b``."""
    bx, by = _local_xy(a.lat, a.lon, b.lat, b.lon)
    px, py = _local_xy(a.lat, a.lon, p.lat, p.lon)
    seg2 = bx * bx + by * by
    u = 0.0 if seg2 == 0 else max(0.0, min(1.0, (px * bx + py * by) / seg2))
    return math.hypot(px - u * bx, py - u * by)
