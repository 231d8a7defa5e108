"""The gpsd source against a fake gpsd on a free port: a drive, garbage, silence, restarts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from agent.policy.privacy import PrivacyFilter
from agent.policy.track import TrackPolicy, TrackSampler
from agent.sources.gpsd import GpsdSource
from tests.support.fake_gpsd import FakeGpsd, sky, tpv
from tests.support.nmea import HOME, assert_private_drive, position
from tests.support.wait import TestClock, wait_for


def every_fix() -> dict[str, object]:
    """Sampling and trip ends off: every fix the source reads comes out."""
    return {
        "track": TrackSampler(TrackPolicy(mode="rules", min_interval=0.0, max_interval=0.0)),
        "privacy": PrivacyFilter(trip_end_radius=0.0),
    }


@pytest.fixture
def gpsd() -> Iterator[FakeGpsd]:
    with FakeGpsd() as g:
        yield g


def test_a_drive_through_gpsd_gives_private_sampled_fixes(gpsd: FakeGpsd) -> None:
    src = GpsdSource(
        "127.0.0.1",
        gpsd.port,
        track=TrackSampler(TrackPolicy(tolerance=5.0)),
        privacy=PrivacyFilter(zones=(HOME,), trip_end_radius=500.0),
        down_after=0.5,
    )
    src.start()
    try:
        wait_for(lambda: gpsd.watching == 1, 10, "the watch request")
        assert gpsd.watches == [{"enable": True, "json": True}]
        for i in range(200):
            gpsd.send(tpv(i, *position(i)), sky())
            if i % 23 == 0:
                gpsd.send(b"\x00\xffnoise\r\n", b'{"class":"TPV","mode":3,"lat":"x"}\n')
        wait_for(lambda: src.reader.counters["fixes"] == 200, 20, "all fixes read")
    finally:
        src.stop()
    assert src.reader.counters["malformed"] == 2 * 9
    assert_private_drive(src)


@contextmanager
def fixed(gpsd: FakeGpsd) -> Iterator[tuple[GpsdSource, TestClock]]:
    """A source watching ``gpsd``, its first fix read; its time passes only when the test
    says (each state holds until the test looks), ``down_after`` 0.5 s. Stopped on exit."""
    clock = TestClock()
    src = GpsdSource(
        "127.0.0.1",
        gpsd.port,
        down_after=0.5,
        clock=clock,
        **every_fix(),  # type: ignore[arg-type]
    )
    src.start()
    try:
        wait_for(lambda: gpsd.watching == 1, 10, "the watch request")
        gpsd.send(tpv(1, *position(1)))
        wait_for(lambda: src.state == "fix", 10, "a fix")
        yield src, clock
    finally:
        src.stop()


def test_a_gpsd_that_stops_talking_is_gnss_down_until_it_talks_again(gpsd: FakeGpsd) -> None:
    with fixed(gpsd) as (src, clock):
        clock.advance(1.0)
        wait_for(lambda: src.state == "gnss down", 10, "gnss down while gpsd is silent")
        gpsd.send(tpv(2, None, None, mode=1))
        wait_for(lambda: src.state == "no fix", 10, "no fix")
        gpsd.send(tpv(3, *position(3)))
        wait_for(lambda: src.state == "fix", 10, "a fix again")
        assert gpsd.connections == 1
    assert [f.t % 100_000 for f in src.take()] == [1000, 3000]


def test_gpsd_closing_the_connection_is_gnss_down_then_a_reconnect(gpsd: FakeGpsd) -> None:
    # Time passes only while the test waits for what needs it (down_after, the reconnect's
    # backoff).
    with fixed(gpsd) as (src, clock):
        gpsd.drop()
        wait_for(clock.passing(lambda: src.state == "gnss down"), 10, "gnss down")
        wait_for(clock.passing(lambda: gpsd.watching == 1), 20, "a new watch after the reconnect")
        assert src.connects == 2
        gpsd.send(tpv(2, *position(2)))
        wait_for(lambda: src.state == "fix", 10, "a fix after the reconnect")
    assert len(src.take()) == 2


def test_a_silent_connection_is_given_up_and_no_gpsd_at_all_is_gnss_down(gpsd: FakeGpsd) -> None:
    src = GpsdSource(
        "127.0.0.1",
        gpsd.port,
        down_after=0.3,
        idle_reconnect=0.5,
        **every_fix(),  # type: ignore[arg-type]
    )
    src.start()
    try:
        # gpsd answers the watch, then says nothing (no receiver): the source tries again
        wait_for(lambda: gpsd.connections >= 2, 20, "a reconnect after the silence")
        assert src.state == "gnss down"
        gpsd.close()
        with socket.socket() as probe:  # nothing listens on the port any more
            assert probe.connect_ex(("127.0.0.1", gpsd.port)) != 0
        wait_for(lambda: src.connect_failures >= 1, 20, "a refused connection")
        assert src.state == "gnss down"
    finally:
        src.stop()
    assert src.take() == []


def test_a_paused_source_ends_its_watch_and_watches_again_at_the_resume(gpsd: FakeGpsd) -> None:
    # The source's time stands still: after the resume the state stays the paused one (until
    # the receiver says something or down_after passes).
    src = GpsdSource(
        "127.0.0.1",
        gpsd.port,
        down_after=0.5,
        clock=TestClock(),
        **every_fix(),  # type: ignore[arg-type]
    )
    src.start()
    try:
        wait_for(lambda: gpsd.watching == 1, 10, "the watch request")
        gpsd.send(tpv(1, *position(1)))
        wait_for(lambda: src.state == "fix", 10, "a fix")
        assert src.pause("parked")
        assert src.state == "paused"
        # The watch is switched off, then the connection closed.
        wait_for(lambda: gpsd.watches[-1] == {"enable": False}, 10, "the watch switched off")
        wait_for(lambda: gpsd.watching == 0, 10, "no client watching")
        gpsd.send(tpv(2, *position(2)))  # nobody reads it
        src.resume()
        wait_for(lambda: gpsd.watching == 1, 10, "a new watch after the resume")
        assert (gpsd.connections, src.connects) == (2, 2)
        assert src.state == "paused"  # until the receiver says something (or down_after passes)
        gpsd.send(tpv(3, *position(3)))
        wait_for(lambda: src.state == "fix", 10, "a fix after the resume")
    finally:
        src.stop()
    assert [f.t % 100_000 for f in src.take()] == [1000, 3000]
