"""Sampling policies, with an explicit clock."""

from __future__ import annotations

import math

import pytest

from agent.catalog import Policy
from agent.sampling import Group, Sampler, SignalState, grid_snapper


def _state(policy: Policy, scale: float = 1.0, sid: int = 0) -> tuple[SignalState, Group]:
    g = Group()
    return SignalState(sid, policy, scale, g), g


def _feed(sampler: Sampler, st: SignalState, g: Group, seq: list[tuple[float, int | float]]):
    for now, raw in seq:
        t = int(now * 1000)
        g.last_t = t
        sampler.tick(now)
        sampler.offer(st, raw, t, now)
    return sampler.take()[0]


def test_on_change_sends_first_value_and_each_change_only() -> None:
    s = Sampler()
    st, g = _state(Policy())
    out = _feed(s, st, g, [(0.0, 1), (0.1, 1), (0.2, 2), (0.3, 2), (0.4, 1)])
    assert [(t, v) for t, _, v in out] == [(0, 1), (200, 2), (400, 1)]


def test_deadband_is_in_physical_units() -> None:
    s = Sampler()
    st, g = _state(Policy(deadband=1.0), scale=0.1)  # 1.0 physical = 10 raw
    out = _feed(s, st, g, [(0, 100), (1, 105), (2, 109), (3, 110), (4, 101), (5, 99)])
    assert [v for _, _, v in out] == [100, 110, 99]


def test_min_interval_sends_the_latest_value_when_the_interval_ends() -> None:
    s = Sampler()
    st, g = _state(Policy(min_interval=1.0))
    out = _feed(s, st, g, [(0.0, 1), (0.2, 2), (0.5, 3), (0.7, 4)])
    assert [v for _, _, v in out] == [1]  # 2, 3, 4 held
    s.tick(0.99)
    assert s.take()[0] == []
    s.tick(1.0)
    ((t, _, v),) = s.take()[0]
    assert (t, v) == (700, 4)  # the latest, with its own data time


def test_min_interval_drops_held_value_when_it_returns_to_the_sent_one() -> None:
    s = Sampler()
    st, g = _state(Policy(min_interval=1.0))
    _feed(s, st, g, [(0.0, 1), (0.2, 2), (0.4, 1)])
    s.tick(2.0)
    assert s.take()[0] == []


def test_flush_held_never_drops_the_final_state() -> None:
    s = Sampler()
    st, g = _state(Policy(min_interval=10.0))
    _feed(s, st, g, [(0.0, 1), (0.5, 7)])
    s.flush_held(0.6)
    assert [v for _, _, v in s.take()[0]] == [7]


def test_heartbeat_resends_only_what_frames_confirmed() -> None:
    s = Sampler()
    st, g = _state(Policy(max_interval=1.0))
    _feed(s, st, g, [(0.0, 5)])
    g.last_t = 900  # a frame at 0.9 s confirmed the value (payload unchanged)
    s.tick(1.0)
    assert [(t, v) for t, _, v in s.take()[0]] == [(900, 5)]
    # Bus silent from now on: no heartbeat may pretend the value still holds.
    for now in (2.0, 3.0, 4.0, 5.5):
        s.tick(now)
    assert s.take()[0] == []
    g.last_t = 6000
    s.tick(6.6)
    assert [(t, v) for t, _, v in s.take()[0]] == [(6000, 5)]


def test_event_signals_mark_the_batch() -> None:
    s = Sampler()
    st, g = _state(Policy(event=True))
    _feed(s, st, g, [(0.0, 1)])
    s.offer(st, 2, 100, 0.1)
    assert s.take()[1] is True
    assert s.take() == ([], False)


def test_snapshot_has_every_seen_signal_in_time_order() -> None:
    s = Sampler()
    a, ga = _state(Policy(), sid=0)
    b, gb = _state(Policy(), sid=1)
    c, _ = _state(Policy(), sid=2)
    s.offer(a, 1, 2000, 2.0)
    s.offer(b, 2, 1000, 1.0)
    ga.last_t, gb.last_t = 2500, 1500
    assert Sampler.snapshot([a, b, c]) == [(1500, 1, 2), (2500, 0, 1)]


def test_nan_and_infinities_are_values_like_any_other() -> None:
    nan, inf = float("nan"), float("inf")
    for policy in (Policy(), Policy(deadband=0.5), Policy(min_interval=0.05)):
        s = Sampler()
        st, g = _state(policy)
        out = _feed(s, st, g, [(0, 1.0), (1, nan), (2, nan), (3, inf), (4, inf), (5, 1.0)])
        assert [repr(v) for _, _, v in out] == ["1.0", "nan", "inf", "1.0"], policy


def test_plain_signals_see_nan_after_nan_as_no_change() -> None:
    s = Sampler()
    st, _ = _state(Policy())
    for t in range(3):
        s.offer_changed([("x", float("nan"))], {"x": st}, t, float(t))
    assert len(s.take()[0]) == 1


def test_a_coarse_grid_passes_nonfinite_values_through() -> None:
    snap = grid_snapper(1e-7, 0.0, 0.01, integer=False)
    assert snap(float("inf")) == float("inf")
    assert math.isnan(snap(float("nan")))
    assert snap(481234567.0) == pytest.approx(481200000.0)
