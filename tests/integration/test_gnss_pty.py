"""The NMEA source over a real pseudo-terminal: mixed talkers, bad checksums, a gap, privacy."""

from __future__ import annotations

import os
import tty

from agent.policy.geo import Fix, distance_m
from agent.policy.privacy import PrivacyFilter
from agent.policy.track import TrackPolicy, TrackSampler
from agent.sources.gnss import NmeaSource
from tests.support.nmea import HOME, assert_private_drive, epoch, open_on, position
from tests.support.wait import TestClock, wait_for

TALKERS = ("GP", "GN", "GL", "GA", "GB", "BD")


def _lines(src: NmeaSource) -> int:
    """The lines the source has read: each one is a sentence, or counted as bad or ignored."""
    c = src.reader.counters
    return c["sentences"] + c["checksum"] + c["malformed"] + c["ignored"]


def test_a_drive_over_a_pty_gives_private_sampled_fixes_and_reports_the_gap(
    pty: tuple[int, str],
) -> None:
    master, path = pty
    clock = TestClock()
    src = NmeaSource(
        path,
        track=TrackSampler(TrackPolicy(tolerance=5.0)),
        privacy=PrivacyFilter(zones=(HOME,), trip_end_radius=500.0),
        down_after=0.5,
        clock=clock,
    )
    src.start()
    try:
        # opening the port flushes its input: write only once it is open
        wait_for(lambda: src.opens == 1, 10, "the port open")
        sent = 0
        for i in range(200):
            data = epoch(TALKERS[i % len(TALKERS)], i, *position(i))
            if i % 17 == 0:
                data = data.replace(b",A,", b",V,", 1)  # a checksum error: the RMC is lost
            if i % 23 == 0:
                data = b"\x00\xffnoise$GPR" + data
            os.write(master, data)
            sent += 1
            if i == 100:
                # Two lines an epoch (the noise is part of a line): read up to here.
                wait_for(lambda: _lines(src) == 2 * 101, 10, "the drive read so far")
                wait_for(lambda: src.state in ("fix", "in privacy zone"), 10, "a fix")
                # the gap: the receiver says nothing for longer than down_after
                clock.advance(1.0)
                wait_for(lambda: src.state == "gnss down", 10, "gnss down")
        wait_for(lambda: src.reader.counters["sentences"] >= 2 * sent - 40, 20, "all read")
        assert src.reader.counters["checksum"] >= 10
    finally:
        src.stop()
    assert_private_drive(src)


def test_a_port_that_dies_turns_a_fix_into_gnss_down() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    clock = TestClock()
    src = NmeaSource(os.ttyname(slave), down_after=0.5, clock=clock)
    src.start()
    try:
        wait_for(lambda: src.opens == 1, 10, "the port open")
        for i in range(3):
            os.write(master, epoch("GN", i, *position(i)))
        wait_for(lambda: _lines(src) == 6, 10, "the epochs read")
        wait_for(lambda: src.state == "fix", 10, "a fix")
        os.close(master)  # the receiver's end goes away: reads fail
        # The thread waiting to reopen the port keeps the state current.
        clock.advance(1.0)
        wait_for(lambda: src.state == "gnss down", 10, "gnss down")
    finally:
        src.stop()
        os.close(slave)


def _private_trip(fixes: list[Fix], first: int, last: int) -> None:
    """Fixes of the drive's seconds first..last: in order, none within 500 m of either end."""
    assert fixes and [f.t for f in fixes] == sorted(f.t for f in fixes)
    for f in fixes:
        assert first * 1000 <= f.t % 86_400_000 <= last * 1000
        assert distance_m(*position(first), f.lat, f.lon) > 500
        assert distance_m(*position(last), f.lat, f.lon) > 500


def test_a_paused_receiver_closes_its_port_ends_the_trip_and_resumes_with_a_new_one(
    pty: tuple[int, str],
) -> None:
    master, path = pty
    every = TrackPolicy(mode="rules", min_interval=0.0, max_interval=0.0)
    src = NmeaSource(
        path,
        track=TrackSampler(every),
        privacy=PrivacyFilter(trip_end_radius=500.0),
        down_after=0.5,
        clock=TestClock(),
    )
    src.start()
    try:
        wait_for(lambda: src.opens == 1, 10, "the port open")
        assert open_on(path) == 2  # the fixture's end and the source's
        for i in range(60):
            os.write(master, epoch("GN", i, *position(i)))
        wait_for(lambda: src.reader.counters["fixes"] == 60, 20, "the first trip read")
        wait_for(lambda: src.state == "fix", 10, "a fix")  # set once the read is handled
        assert src.pause("parked")
        assert (src.state, src.paused) == ("paused", "parked")
        assert open_on(path) == 1  # the port is closed
        # The parked car's trip ended: its trailing fixes, near where it stopped, are dropped.
        assert src.privacy.counters["trip_end"] > 0
        _private_trip(src.take(), 0, 59)
        # What the receiver says while parked is never read (discarded at the reopening).
        for i in range(60, 70):
            os.write(master, epoch("GN", i, *position(i)))
        src.resume()
        wait_for(lambda: src.opens == 2, 10, "the port open again")
        assert src.paused is None
        for i in range(100, 160):
            os.write(master, epoch("GN", i, *position(i)))
        wait_for(lambda: src.reader.counters["fixes"] == 120, 20, "the second trip read")
        wait_for(lambda: src.state == "fix", 10, "a fix")
    finally:
        src.stop()
    # A new trip from the wake: its start is withheld around where the car woke.
    _private_trip(src.take(), 100, 159)


def test_a_zone_added_while_fixes_wait_in_the_receiver_takes_them_back(
    pty: tuple[int, str],
) -> None:
    master, path = pty
    # Every fix kept by the sampler, trip ends held within 500 m: fixes wait in the queue
    # (nobody takes them) and in the trip-end hold when the zone comes.
    keep_all = TrackPolicy(mode="rules", min_interval=0.0, distance=0.0)
    src = NmeaSource(
        path, track=TrackSampler(keep_all), privacy=PrivacyFilter(trip_end_radius=500.0)
    )
    src.start()
    try:
        wait_for(lambda: src.opens == 1, 10, "the port open")
        for i in range(130):  # up to 250 m past the middle of HOME
            os.write(master, epoch("GN", i, *position(i)))
        # The fix at 110 (2750 m north, inside HOME) is released once one lies 500 m on.
        wait_for(lambda: src.reader.counters["sentences"] >= 260, 20, "all read")
        withheld = src.set_zones((HOME,))
        assert withheld >= 20  # queued and held fixes inside HOME
        for i in range(130, 200):
            os.write(master, epoch("GN", i, *position(i)))
        wait_for(lambda: src.reader.counters["sentences"] >= 400, 20, "all read")
    finally:
        src.stop()
    fixes = src.take()
    inside = [f for f in fixes if distance_m(HOME.lat, HOME.lon, f.lat, f.lon) <= HOME.radius]
    assert inside == []
    # Nothing else was lost: every fix past the trip start and before the trip end is there.
    start, end = position(0), position(199)
    wanted = [
        i
        for i in range(200)
        if distance_m(*start, *position(i)) > 500
        and distance_m(*position(i), *end) > 500
        and distance_m(HOME.lat, HOME.lon, *position(i)) > HOME.radius
    ]
    assert [round(f.t / 1000) % 86400 for f in fixes] == wanted
