"""Privacy zones and trip-end withholding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy.geo import Fix, distance_m
from agent.policy.privacy import PrivacyFilter, Zone, zone_of

LAT0, LON0 = 48.0, 11.0
M_PER_DEG_LAT = 111_195.0  # on the sphere the module uses


def at(north_m: float, t: int = 0, east_m: float = 0.0) -> Fix:
    lon = LON0 + east_m / (M_PER_DEG_LAT * 0.6691306)  # cos(48 deg)
    return Fix(t=t, lat=LAT0 + north_m / M_PER_DEG_LAT, lon=lon)


def run(p: PrivacyFilter, fixes: list[Fix]) -> list[Fix]:
    return [out for f in fixes for out in p.offer(f)]


@pytest.mark.parametrize(
    ("north_m", "inside"), [(0, True), (99, True), (100.5, False), (-99, True), (250, False)]
)
def test_zone_is_a_circle_in_metres(north_m: float, inside: bool) -> None:
    z = Zone("home", LAT0, LON0, 100.0)
    f = at(north_m)
    assert (zone_of((z,), f.lat, f.lon) is z) is inside


def test_distance_is_metres_on_the_sphere() -> None:
    assert distance_m(LAT0, LON0, LAT0 + 1, LON0) == pytest.approx(M_PER_DEG_LAT, rel=1e-4)
    assert distance_m(0, 179.9999, 0, -179.9999) == pytest.approx(22.2, abs=0.1)


def test_a_straight_drive_loses_its_start_and_its_end() -> None:
    p = PrivacyFilter(trip_end_radius=505.0)
    drive = [at(10.0 * i, t=i) for i in range(501)]  # 0 .. 5000 m north
    out = run(p, drive)
    assert p.end_trip() > 0
    metres = [round((f.lat - LAT0) * M_PER_DEG_LAT) for f in out]
    assert metres[0] == 510 and metres[-1] == 4490
    assert metres == sorted(metres) and len(metres) == len(set(metres))
    assert p.counters["trip_start"] == 51  # 0 .. 500 m
    assert p.counters["trip_end"] == 51  # 4500 .. 5000 m


def test_a_fix_inside_a_zone_is_dropped_and_the_state_says_so() -> None:
    p = PrivacyFilter(zones=(Zone("work", LAT0 + 2000 / M_PER_DEG_LAT, LON0, 200.0),))
    drive = [at(5 + 10.0 * i, t=i) for i in range(401)]
    out = run(p, drive[:200])
    assert p.state == "in privacy zone"
    out += run(p, drive[200:])
    assert p.state == "ok"
    assert all(not 1800 <= (f.lat - LAT0) * M_PER_DEG_LAT <= 2200 for f in out)
    assert p.counters["zone"] == 40


def test_a_new_trip_after_the_end_starts_withholding_again() -> None:
    p = PrivacyFilter(trip_end_radius=300.0)
    run(p, [at(10.0 * i, t=i) for i in range(100)])
    p.end_trip()
    assert run(p, [at(1000 + 10.0 * i, t=100 + i) for i in range(30)]) == []  # 0 .. 290 m


def test_held_fixes_are_bounded_and_the_oldest_is_dropped_not_released() -> None:
    p = PrivacyFilter(trip_end_radius=100.0, max_held=10)
    run(p, [at(0), at(200, 1)])  # left the start
    out = run(p, [at(200 + i * 0.1, t=2 + i) for i in range(50)])  # crawling: all held
    assert out == [] and p.counters["overflow"] == 41


def test_zero_radius_turns_trip_ends_off() -> None:
    p = PrivacyFilter(trip_end_radius=0.0)
    assert len(run(p, [at(i, t=i) for i in range(5)])) == 5


coords = st.floats(-300.0, 300.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(coords, coords), min_size=1, max_size=60),
    st.lists(st.tuples(coords, coords, st.floats(1.0, 200.0)), max_size=3),
    st.floats(0.0, 150.0),
)
def test_what_comes_out_is_outside_zones_away_from_the_start_and_known_to_continue(
    path: list[tuple[float, float]], zone_spec: list[tuple[float, float, float]], radius: float
) -> None:
    fixes = [at(n * 10, t=i, east_m=e * 10) for i, (n, e) in enumerate(path)]
    zones = tuple(
        Zone(f"z{i}", at(n * 10).lat, at(0, east_m=e * 10).lon, r)
        for i, (n, e, r) in enumerate(zone_spec)
    )
    p = PrivacyFilter(zones=zones, trip_end_radius=radius)
    out = run(p, fixes)
    p.end_trip()
    assert [f.t for f in out] == sorted({f.t for f in out})
    for f in out:
        assert zone_of(zones, f.lat, f.lon) is None
        if radius > 0:
            assert distance_m(fixes[0].lat, fixes[0].lon, f.lat, f.lon) > radius
            later = fixes[f.t + 1 :]
            assert any(distance_m(g.lat, g.lon, f.lat, f.lon) > radius for g in later)
