"""NMEA test data: sentences with their checksums, and a drive as RMC/GGA epochs."""

from __future__ import annotations

import functools
import math
import operator

M_LAT = 111_195.0


def sentence(body: str) -> bytes:
    """``$body*hh`` + CRLF, hh the XOR of the bytes of body."""
    cs = functools.reduce(operator.xor, body.encode(), 0)
    return f"${body}*{cs:02X}\r\n".encode()


def _ddmm(value: float, width: int) -> str:
    deg = int(abs(value))
    return f"{deg:0{width}d}{(abs(value) - deg) * 60:07.4f}"


def epoch(talker: str, second: int, lat: float, lon: float, speed_kmh: float = 50.0) -> bytes:
    """One receiver epoch (RMC + GGA) at 2026-01-01 00:00:00 UTC + ``second``."""
    hh, mm, ss = second // 3600 % 24, second // 60 % 60, second % 60
    tod = f"{hh:02d}{mm:02d}{ss:02d}.00"
    ns, ew = ("N" if lat >= 0 else "S"), ("E" if lon >= 0 else "W")
    pos = f"{_ddmm(lat, 2)},{ns},{_ddmm(lon, 3)},{ew}"
    knots = speed_kmh / 1.852
    rmc = sentence(f"{talker}RMC,{tod},A,{pos},{knots:.1f},0.0,010126,,")
    gga = sentence(f"{talker}GGA,{tod},{pos},1,09,0.8,520.0,M,47.0,M,,")
    return rmc + gga


def north_of(lat0: float, metres: float) -> float:
    return lat0 + metres / M_LAT


def wiggle(i: int) -> float:
    """Metres east of a straight road: a bend now and then, so curve logging keeps fixes."""
    return 60.0 * math.sin(i / 15.0)
