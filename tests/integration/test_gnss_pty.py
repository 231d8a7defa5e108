"""The NMEA source over a real pseudo-terminal: mixed talkers, bad checksums, a gap, privacy."""

from __future__ import annotations

import os
import tty

from agent.policy.privacy import PrivacyFilter
from agent.policy.track import TrackPolicy, TrackSampler
from agent.sources.gnss import NmeaSource
from tests.support.nmea import HOME, assert_private_drive, epoch, position
from tests.support.wait import wait_for

TALKERS = ("GP", "GN", "GL", "GA", "GB", "BD")


def test_a_drive_over_a_pty_gives_private_sampled_fixes_and_reports_the_gap(
    pty: tuple[int, str],
) -> None:
    master, path = pty
    src = NmeaSource(
        path,
        track=TrackSampler(TrackPolicy(tolerance=5.0)),
        privacy=PrivacyFilter(zones=(HOME,), trip_end_radius=500.0),
        down_after=0.5,
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
                wait_for(lambda: src.state in ("fix", "in privacy zone"), 10, "a fix")
                # the gap: the receiver says nothing for longer than down_after
                wait_for(lambda: src.state == "gnss down", 10, "gnss down")
        wait_for(lambda: src.reader.counters["sentences"] >= 2 * sent - 40, 20, "all read")
        assert src.reader.counters["checksum"] >= 10
    finally:
        src.stop()
    assert_private_drive(src)


def test_a_port_that_dies_turns_a_fix_into_gnss_down() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    src = NmeaSource(os.ttyname(slave), down_after=0.5)
    src.start()
    try:
        wait_for(lambda: src.opens == 1, 10, "the port open")
        for i in range(3):
            os.write(master, epoch("GN", i, *position(i)))
        wait_for(lambda: src.state == "fix", 10, "a fix")
        os.close(master)  # the receiver's end goes away: reads fail
        wait_for(lambda: src.state == "gnss down", 10, "gnss down")
    finally:
        src.stop()
        os.close(slave)
