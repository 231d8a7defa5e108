"""The trigger engine on an injected clock: edges, min_interval, windows around the firing,
rings bounded by age and count, and a property: a capture holds exactly the changes in its
window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy.expr import parse
from agent.policy.trigger import Capture, TriggerEngine, TriggerSpec


def _engine(
    edge: str = "rising",
    min_interval: float = 0.0,
    before: float = 1.0,
    after: float = 1.0,
    **kw: int,
) -> TriggerEngine:
    spec = TriggerSpec(
        "hard_brake",
        parse("Decel > 5"),
        edge,
        min_interval,
        before,
        after,
        capture=(7,),  # type: ignore[arg-type]
    )
    return TriggerEngine([spec], ["Decel"], **kw)


def _drive(
    engine: TriggerEngine, steps: list[tuple[int, float | None, float | None]]
) -> list[Capture]:
    """Each step: (t_ms, Decel or None, captured raw or None); the scheduling clock is the data
    time, as in a replay."""
    out: list[Capture] = []
    for t, decel, raw in steps:
        now = t / 1000
        out += engine.close(t, now)
        if raw is not None:
            engine.record(7, t, raw)
        if decel is not None:
            engine.set_value(0, decel)
        engine.evaluate(t, now)
    return out + engine.close_all()


def test_rising_edge_fires_once_per_crossing() -> None:
    e = _engine(before=0, after=0)
    caps = _drive(e, [(0, 1, None), (100, 6, None), (200, 7, None), (300, 2, None), (400, 9, None)])
    assert [c.t_ms for c in caps] == [100, 400]
    assert e.stats.fired == 2


def test_level_fires_while_true_but_not_within_min_interval() -> None:
    e = _engine(edge="level", min_interval=1.0, before=0, after=0)
    steps = [(t, 6.0 if t < 2500 else 0.0, None) for t in range(0, 3001, 100)]
    caps = _drive(e, steps)
    assert [c.t_ms for c in caps] == [0, 1000, 2000]


def test_min_interval_suppresses_and_counts_rising_edges() -> None:
    e = _engine(min_interval=2.0, before=0, after=0)
    caps = _drive(
        e, [(0, 6, None), (500, 0, None), (1000, 6, None), (1500, 0, None), (2500, 6, None)]
    )
    assert [c.t_ms for c in caps] == [0, 2500]
    assert e.stats.suppressed == 1


def test_window_holds_every_change_in_before_and_after() -> None:
    e = _engine(before=1.0, after=1.0)
    steps: list[tuple[int, float | None, float | None]] = [
        (0, 0, 10),
        (500, None, 10),
        (1500, None, 11),
        (2000, None, 12),  # 500 repeats: no change
        (2500, 6, 13),
        (3000, None, 14),
        (3500, None, 15),
        (3600, None, 16),
        (4000, 0, 17),
    ]
    (cap,) = _drive(e, steps)
    assert cap.trigger == "hard_brake" and cap.t_ms == 2500
    # The value in force at the window's start (10, since 0 ms) comes first, with its own time.
    assert cap.samples == [
        (t, 7, v) for t, v in [(0, 10), (1500, 11), (2000, 12), (2500, 13), (3000, 14), (3500, 15)]
    ]


def test_a_silent_bus_closes_the_window_on_the_scheduling_clock() -> None:
    e = _engine(before=0, after=2.0)
    e.set_value(0, 9)
    e.evaluate(1000, now=50.0)
    assert e.close(None, now=52.0) == []
    assert e.next_deadline() is not None and 52.0 < e.next_deadline() < 52.1  # type: ignore[operator]
    (cap,) = e.close(None, now=52.1)
    assert cap.t_ms == 1000


def test_ring_is_bounded_by_count_and_counts_its_drops() -> None:
    e = _engine(before=100.0, after=0, ring_samples=5)
    steps: list[tuple[int, float | None, float | None]] = [(t, 0, t) for t in range(0, 100, 10)]
    steps.append((100, 6, 100))
    (cap,) = _drive(e, steps)
    assert [s[0] for s in cap.samples] == [60, 70, 80, 90, 100]
    assert e.stats.ring_dropped == 6


def test_window_is_bounded_and_counts_its_drops() -> None:
    e = _engine(before=0, after=10.0, window_samples=3)
    steps: list[tuple[int, float | None, float | None]] = [(0, 6, 0)]
    steps += [(t, None, t) for t in range(10, 100, 10)]
    (cap,) = _drive(e, steps)
    assert len(cap.samples) == 3 and cap.dropped == 7
    assert e.stats.window_dropped == 7


def test_unknown_inputs_never_fire() -> None:
    spec = TriggerSpec("t", parse("a > 1 or b > 1"), capture=())
    e = TriggerEngine([spec], ["a", "b"])
    e.set_value(0, 0)
    e.evaluate(0, 0.0)
    assert e.stats.fired == 0
    e.set_value(1, 5)
    e.evaluate(10, 0.01)
    assert e.stats.fired == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 300), st.integers(0, 3), st.booleans()), min_size=1, max_size=80
    ),
    st.integers(0, 800),
    st.integers(0, 800),
)
def test_capture_is_exactly_the_changes_in_its_window(
    steps: list[tuple[int, int, bool]], before_ms: int, after_ms: int
) -> None:
    e = _engine(before=before_ms / 1000, after=after_ms / 1000)
    t = 0
    timeline: list[tuple[int, float | None, float | None]] = []
    for dt, raw, brake in steps:
        t += dt
        timeline.append((t, 9.0 if brake else 0.0, raw))
    caps = _drive(e, timeline)
    changes, last = [], None
    for t, _, raw in timeline:
        if raw != last:
            changes.append((t, 7, raw))
            last = raw
    for cap in caps:
        lo, hi = cap.t_ms - before_ms, cap.t_ms + after_ms
        held = [c for c in changes if c[0] < lo][-1:]
        assert cap.samples == held + [c for c in changes if lo <= c[0] <= hi]
