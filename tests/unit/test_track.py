"""Track sampling: curve logging keeps the shape within the tolerance; tracker rules."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy.geo import Fix, segment_distance_m
from agent.policy.track import TrackPolicy, TrackSampler

LAT0, LON0 = 48.0, 11.0
M_LAT = 111_195.0
M_LON = M_LAT * math.cos(math.radians(LAT0))


def at(
    t_s: float, x: float, y: float, speed: float | None = None, heading: float | None = None
) -> Fix:
    return Fix(
        t=int(t_s * 1000), lat=LAT0 + y / M_LAT, lon=LON0 + x / M_LON, speed=speed, heading=heading
    )


def run(s: TrackSampler, fixes: list[Fix]) -> list[Fix]:
    return [k for f in fixes for k in s.offer(f)] + s.flush()


def worst_miss(fixes: list[Fix], kept: list[Fix]) -> float:
    """The largest distance of a fix from the kept fixes joined by straight lines."""
    times = [k.t for k in kept]
    worst = 0.0
    for f in fixes:
        i = max(j for j, t in enumerate(times) if t <= f.t)
        if times[i] == f.t:
            continue
        worst = max(worst, segment_distance_m(kept[i], kept[i + 1], f))
    return worst


def drive() -> list[Fix]:
    """1 Hz: town with right-angle turns and a stop, a roundabout, then motorway with bends."""
    out: list[Fix] = []
    x = y = 0.0
    t = 0.0
    heading = 0.0

    def step(v_ms: float, turn_deg: float = 0.0) -> None:
        nonlocal x, y, t, heading
        heading = (heading + turn_deg) % 360
        x += v_ms * math.sin(math.radians(heading))
        y += v_ms * math.cos(math.radians(heading))
        t += 1
        out.append(at(t, x, y, speed=v_ms * 3.6, heading=heading))

    for _ in range(4):
        for _ in range(60):
            step(12)
        for _ in range(6):
            step(6, 15)
    for _ in range(120):  # a red light and a parked minute
        step(0)
    for _ in range(24):
        step(8, 15)
    for _ in range(900):  # motorway, gentle bends
        step(33, 0.3 * math.sin(t / 60))
    return out


def test_curve_logging_keeps_under_a_fifth_of_a_drive_within_ten_metres() -> None:
    fixes = drive()
    s = TrackSampler(TrackPolicy(tolerance=10.0, max_delay=60.0))
    kept = run(s, fixes)
    assert len(kept) <= 0.2 * len(fixes)
    assert worst_miss(fixes, kept) <= 10.0
    assert s.counters == {"kept": len(kept), "dropped": len(fixes) - len(kept)}


def test_a_straight_line_is_kept_every_max_delay_and_parked_every_parked_interval() -> None:
    s = TrackSampler(TrackPolicy(max_delay=30.0, parked_interval=600.0))
    moving = [at(i, 0, 20.0 * i, speed=72) for i in range(91)]
    assert [k.t // 1000 for k in run(s, moving)] == [0, 30, 60, 90]
    parked = [at(i, 0, 0, speed=0) for i in range(1201)]
    assert [k.t // 1000 for k in run(s, parked)] == [0, 600, 1200]


def test_a_corner_is_kept() -> None:
    s = TrackSampler(TrackPolicy(tolerance=5.0))
    fixes = [at(i, 0, 10.0 * i) for i in range(11)] + [
        at(11 + i, 10.0 * (i + 1), 100) for i in range(10)
    ]
    kept = run(s, fixes)
    assert [(k.t // 1000) for k in kept] == [0, 10, 20]


@pytest.mark.parametrize(
    ("second", "kept"),
    [
        (at(0.5, 0, 500, speed=50, heading=0), False),  # min_interval
        (at(5, 0, 50, speed=50, heading=0), False),  # nothing changed enough
        (at(5, 0, 100, speed=50, heading=0), True),  # distance
        (at(5, 0, 50, speed=50, heading=12), True),  # heading
        (at(5, 0, 50, speed=50, heading=355), False),  # 5 degrees across north
        (at(5, 0, 50, speed=61, heading=0), True),  # speed change
        (at(60, 0, 50, speed=50, heading=0), True),  # max_interval
        (at(600, 0, 1, speed=0), False),  # parked: waits for parked_interval
        (at(3600, 0, 1, speed=0), True),
    ],
)
def test_rules(second: Fix, kept: bool) -> None:
    s = TrackSampler(TrackPolicy(mode="rules"))
    first = at(0, 0, 0, speed=50, heading=0) if second.speed else at(0, 0, 0, speed=0)
    assert s.offer(first) == [first]
    assert s.offer(second) == ([second] if kept else [])


steps = st.lists(
    st.tuples(st.floats(0, 40), st.floats(-90, 90), st.integers(1, 5)), min_size=2, max_size=150
)


@settings(max_examples=150, deadline=None)
@given(steps, st.floats(1.0, 30.0), st.floats(1.0, 120.0))
def test_every_dropped_fix_lies_within_tolerance_of_the_kept_track(
    path: list[tuple[float, float, int]], tolerance: float, max_delay: float
) -> None:
    fixes: list[Fix] = []
    x = y = t = heading = 0.0
    for v, turn, dt in path:
        heading += turn
        x += v * math.sin(math.radians(heading))
        y += v * math.cos(math.radians(heading))
        t += dt
        fixes.append(at(t, x, y, speed=v * 3.6 / dt))
    s = TrackSampler(TrackPolicy(tolerance=tolerance, max_delay=max_delay, max_points=20))
    kept = run(s, fixes)
    assert kept[0] == fixes[0] and kept[-1] == fixes[-1]
    assert [k.t for k in kept] == sorted({k.t for k in kept})
    assert worst_miss(fixes, kept) <= tolerance + 1e-6
