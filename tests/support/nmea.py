"""NMEA test data: sentences with their checksums, a drive as RMC/GGA epochs, and a 1 Hz drive
with turns, stops and a motorway part (for tests, scripts/bench and scripts/demo)."""

from __future__ import annotations

import datetime as dt
import functools
import math
import operator
from dataclasses import dataclass

M_LAT = 111_195.0


def sentence(body: str) -> bytes:
    """``$body*hh`` + CRLF, hh the XOR of the bytes of body."""
    cs = functools.reduce(operator.xor, body.encode(), 0)
    return f"${body}*{cs:02X}\r\n".encode()


def _ddmm(value: float, width: int) -> str:
    deg = int(abs(value))
    return f"{deg:0{width}d}{(abs(value) - deg) * 60:07.4f}"


def epoch(
    talker: str,
    second: int,
    lat: float,
    lon: float,
    speed_kmh: float = 50.0,
    heading: float = 0.0,
    day: dt.date = dt.date(2026, 1, 1),
) -> bytes:
    """One receiver epoch (RMC + GGA) at 00:00:00 UTC of ``day`` + ``second``."""
    hh, mm, ss = second // 3600 % 24, second // 60 % 60, second % 60
    tod = f"{hh:02d}{mm:02d}{ss:02d}.00"
    date = (day + dt.timedelta(days=second // 86400)).strftime("%d%m%y")
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    pos = f"{_ddmm(lat, 2)},{ns},{_ddmm(lon, 3)},{ew}"
    knots = speed_kmh / 1.852
    rmc = sentence(f"{talker}RMC,{tod},A,{pos},{knots:.1f},{heading:.1f},{date},,")
    gga = sentence(f"{talker}GGA,{tod},{pos},1,09,0.8,520.0,M,47.0,M,,")
    return rmc + gga


def north_of(lat0: float, metres: float) -> float:
    return lat0 + metres / M_LAT


def wiggle(i: int) -> float:
    """Metres east of a straight road: a bend now and then, so curve logging keeps fixes."""
    return 60.0 * math.sin(i / 15.0)


@dataclass(frozen=True)
class Point:
    """One second of a drive: position, speed over ground, course."""

    lat: float
    lon: float
    speed_kmh: float
    heading: float


def drive(lat0: float, lon0: float) -> list[Point]:
    """1 Hz from (lat0, lon0): a parked minute, town with right-angle turns, a red light, a
    roundabout, motorway with gentle bends, and a parked minute at the end (1368 seconds)."""
    m_lon = M_LAT * math.cos(math.radians(lat0))
    out: list[Point] = []
    x = y = heading = 0.0

    def step(v_ms: float, turn_deg: float = 0.0) -> None:
        nonlocal x, y, heading
        heading = (heading + turn_deg) % 360
        x += v_ms * math.sin(math.radians(heading))
        y += v_ms * math.cos(math.radians(heading))
        out.append(Point(lat0 + y / M_LAT, lon0 + x / m_lon, v_ms * 3.6, heading))

    for _ in range(60):
        step(0)
    for _ in range(4):
        for _ in range(60):
            step(12)
        for _ in range(6):
            step(6, 15)
    for _ in range(60):  # a red light
        step(0)
    for _ in range(24):  # a roundabout
        step(8, 15)
    for i in range(900):  # motorway, gentle bends
        step(33, 0.3 * math.sin(i / 60))
    for _ in range(60):
        step(0)
    return out
