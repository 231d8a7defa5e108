"""gpsd's JSON reports -> fixes and states, bad reports counted (the pure reader)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.sources.gpsd import MAX_LINE, GpsdReader, watch_command
from tests.support.fake_gpsd import DEVICE, sky, tpv


def line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode() + b"\r\n"


def test_a_tpv_after_a_sky_is_a_fix_with_gpsd_units_turned_into_the_fix_units() -> None:
    r = GpsdReader(down_after=1.0)
    assert r.feed(line(sky(hdop=0.8, used=7)), 0.0) == []
    (fix,) = r.feed(line(tpv(5, 48.1, 11.5, speed=10.0)), 0.1)
    assert (fix.lat, fix.lon, fix.altitude, fix.heading) == (48.1, 11.5, 520.0, 12.5)
    assert fix.t == 1_767_225_605_000  # 2026-01-01T00:00:05Z in Unix ms
    assert fix.speed == 36.0  # 10 m/s in km/h
    assert (fix.hdop, fix.satellites, fix.accuracy, fix.quality) == (0.8, 7, 4.2, 1)
    assert r.state(0.5) == "fix"
    assert r.state(1.2) == "gnss down"  # nothing for longer than down_after


def test_accuracy_falls_back_to_epx_epy_then_to_hdop_and_altitude_needs_a_3d_fix() -> None:
    r = GpsdReader()
    a = tpv(1, 48.1, 11.5)
    del a["eph"]
    (f1,) = r.feed(line(a), 0.0)
    assert f1.accuracy == 4.2  # hypot(3, 3)
    b = tpv(2, 48.1, 11.5, mode=2)
    for key in ("eph", "epx", "epy"):
        del b[key]
    r.feed(line(sky(hdop=1.5)), 0.0)
    (f2,) = r.feed(line(b), 0.0)
    assert (f2.accuracy, f2.altitude) == (7.5, None)
    c = tpv(3, 48.1, 11.5, status=2)
    del c["altMSL"]
    (f3,) = r.feed(line(c), 0.0)
    assert (f3.altitude, f3.quality) == (520.0, 2)  # the older alt; DGPS


def test_mode_1_is_no_fix_and_a_stale_fix_is_never_fresh() -> None:
    r = GpsdReader(down_after=1.0)
    r.feed(line(tpv(1, 48.1, 11.5)), 0.0)
    assert r.state(0.0) == "fix"
    assert r.feed(line(tpv(2, None, None, mode=1)), 0.5) == []
    assert r.state(0.5) == "no fix"
    r.feed(line(tpv(3, 48.1, 11.5)), 1.0)
    r.feed(line(sky()), 2.5)  # the receiver talks, but the last position is 1.5 s old
    assert r.state(2.5) == "no fix"


def test_gpsd_alone_is_not_a_receiver() -> None:
    r = GpsdReader()
    r.feed(line({"class": "VERSION", "release": "3.25", "proto_major": 3}), 0.0)
    r.feed(line({"class": "DEVICES", "devices": []}), 0.0)
    assert r.state(0.0) == "gnss down"
    assert r.version == "3.25" and r.counters["ignored"] == 2


@pytest.mark.parametrize(
    "bad",
    [
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'{"no": "class"}\n',
        b'{"class": "TPV", "mode": "3"}\n',  # strict enough: a string is not a mode
        b'{"class": "TPV", "mode": 7}\n',
        b'{"class": "TPV", "mode": 3, "lat": 91.0, "lon": 0, "time": "2026-01-01T00:00:00Z"}\n',
        b'{"class": "TPV", "mode": 3, "lat": NaN, "lon": 0, "time": "2026-01-01T00:00:00Z"}\n',
        b'{"class": "TPV", "mode": 3, "lat": 1, "lon": 2, "time": "yesterday"}\n',
        b'{"class": "TPV", "mode": 3, "lat": 1, "lon": 2, "time": "2026-01-01T00:00:00"}\n',
        b'{"class": "SKY", "hdop": -1}\n',
        b"[" * 5000 + b"\n",
        b"\xff\xfe\x00garbage\n",
    ],
)
def test_a_bad_report_is_counted_and_the_stream_goes_on(bad: bytes) -> None:
    r = GpsdReader()
    assert r.feed(bad, 0.0) == []
    assert r.counters["malformed"] == 1
    assert len(r.feed(line(tpv(1, 48.1, 11.5)), 0.0)) == 1


def test_overlong_lines_are_dropped_up_to_their_end_even_across_chunks() -> None:
    r = GpsdReader()
    junk = b'{"class": "SKY", "x": "' + b"a" * MAX_LINE
    r.feed(junk[:9000], 0.0)
    r.feed(junk[9000:], 0.0)
    fixes = r.feed(b'"}\n' + line(tpv(1, 48.1, 11.5)), 0.0)
    assert len(fixes) == 1 and r.counters["overlong"] == 1
    assert r.counters["malformed"] == 0


def test_split_reports_repeats_and_other_devices() -> None:
    r = GpsdReader(device=DEVICE)
    data = line(tpv(1, 48.1, 11.5)) + line(tpv(1, 48.1, 11.5)) + line(tpv(2, 48.2, 11.5))
    fixes = [f for i in range(len(data)) for f in r.feed(data[i : i + 1], 0.0)]
    assert [f.lat for f in fixes] == [48.1, 48.2]
    assert r.counters["repeated"] == 1
    other = tpv(3, 1.0, 2.0, device="/dev/other")
    assert r.feed(line(other), 0.0) == []
    assert r.counters["ignored"] == 1


def test_the_watch_command_is_gpsd_json() -> None:
    cmd = watch_command("/dev/ttyUSB1")
    assert cmd.startswith(b"?WATCH=") and cmd.endswith(b";\n")
    assert json.loads(cmd[7:-2]) == {"enable": True, "json": True, "device": "/dev/ttyUSB1"}
