"""NMEA test data: sentences with their checksums, a drive as RMC/GGA epochs, a 1 Hz drive with
turns, stops and a motorway part (tests, scripts/bench), and a receiver on a pseudo-terminal
that replays the GNSS track of a demo drive's CAN log in real time or faster (scripts/demo)::

    python -m tests.support.nmea --link /tmp/gnss --log drive.log --dbc demo.dbc --speed 5
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import operator
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.policy.geo import distance_m
from agent.policy.privacy import Zone

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


def open_on(path: str) -> int:
    """How many file descriptors of this process are open on ``path`` (a receiver's pty: the
    test's own end, and the agent's while it reads the port)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            continue  # the listing's own descriptor, gone by now
    return n


def north_of(lat0: float, metres: float) -> float:
    return lat0 + metres / M_LAT


def wiggle(i: int) -> float:
    """Metres east of a straight road: a bend now and then, so curve logging keeps fixes."""
    return 60.0 * math.sin(i / 15.0)


# The receiver tests' drive: 200 fixes 25 m apart northwards, through a home zone 3 km north.
LAT0, LON0 = 48.1, 11.5
HOME = Zone("home", north_of(LAT0, 3000), LON0, 300.0)


def position(i: int) -> tuple[float, float]:
    east = wiggle(i)
    return north_of(LAT0, 25.0 * i), LON0 + east / (M_LAT * math.cos(math.radians(LAT0)))


def assert_private_drive(src: Any) -> None:
    """The fixes a source gave for that drive (read with curve logging, HOME as zone and 500 m
    trip ends): sampled, in order, none in the zone nor within 500 m of the drive's ends."""
    fixes = src.take()
    assert len(fixes) >= 5  # curve logging keeps the bends, privacy the middle
    assert [f.t for f in fixes] == sorted(f.t for f in fixes)
    start, end = position(0), position(199)
    for f in fixes:
        assert distance_m(HOME.lat, HOME.lon, f.lat, f.lon) > HOME.radius
        assert distance_m(*start, f.lat, f.lon) > 500
        assert distance_m(*end, f.lat, f.lon) > 500
    assert src.privacy.counters["zone"] > 0


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


def log_track(log: Path, dbc: Path) -> list[Point]:
    """1 Hz, from a CAN log of the demo vehicle: the GNSS_Position and GNSS_Course its GNSS
    module sent, the latest of each second of the log."""
    import can
    import cantools

    db = cantools.database.load_file(str(dbc))
    pos, course = db.get_message_by_name("GNSS_Position"), db.get_message_by_name("GNSS_Course")
    out: list[Point] = []
    lat = lon = None
    speed = heading = 0.0
    first: float | None = None
    with can.LogReader(str(log)) as reader:
        for msg in reader:
            first = msg.timestamp if first is None else first
            while lat is not None and lon is not None and msg.timestamp - first >= len(out) + 1:
                out.append(Point(lat, lon, speed, heading))
            if msg.arbitration_id == pos.frame_id:
                v = pos.decode(msg.data)
                lat, lon = float(v["Latitude"]), float(v["Longitude"])
            elif msg.arbitration_id == course.frame_id:
                v = course.decode(msg.data)
                speed, heading = float(v["GroundSpeed"]), float(v["Heading"]) % 360
    return out


def main(argv: list[str] | None = None) -> int:
    """A receiver on a pty (``--link`` points at its slave) replaying the GNSS track of a demo
    drive's CAN log from now, one epoch per ``1 / speed`` seconds (0: as fast as it is read);
    then silent until killed. With ``--wait`` the car stays parked at the start until the port
    is opened (opening it discards what came before; a serial open sets the line speed, which
    is what is watched)."""
    import argparse
    import os
    import signal
    import termios
    import time
    import tty

    from agent.atomicfile import replace_symlink

    p = argparse.ArgumentParser(prog="python -m tests.support.nmea")
    p.add_argument("--link", required=True, help="symlink to the receiver's pty")
    p.add_argument("--log", type=Path, required=True, help="CAN log of the demo vehicle")
    p.add_argument("--dbc", type=Path, required=True, help="dbc/demo_vehicle.dbc")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed (0: unpaced)")
    p.add_argument("--wait", action="store_true", help="parked until the port is opened")
    args = p.parse_args(argv)
    points = log_track(args.log, args.dbc)
    master, slave = os.openpty()  # the slave stays open: writes wait while nobody reads
    tty.setraw(slave)
    replace_symlink(args.link, os.ttyname(slave))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    now = dt.datetime.now(dt.UTC)
    day = now.date()
    first = now.hour * 3600 + now.minute * 60 + now.second
    start = time.monotonic()
    unopened = termios.tcgetattr(slave)[5]
    i = 0
    while args.wait and points and termios.tcgetattr(slave)[5] == unopened:
        time.sleep(max(0.0, start + i / max(args.speed, 1.0) - time.monotonic()))
        home = points[0]
        os.write(master, epoch("GN", first + i, home.lat, home.lon, 0.0, 0.0, day))
        i += 1
    for pt in points:
        if args.speed > 0:
            time.sleep(max(0.0, start + i / args.speed - time.monotonic()))
        os.write(master, epoch("GN", first + i, pt.lat, pt.lon, pt.speed_kmh, pt.heading, day))
        i += 1
    signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
