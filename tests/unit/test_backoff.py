"""The one retry-delay policy, with an injected clock and random draw."""

from __future__ import annotations

import pytest

from agent.backoff import Backoff


class Draws:
    """Stands in for random.uniform: returns the upper bound and records each interval."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float]] = []

    def __call__(self, lo: float, hi: float) -> float:
        self.seen.append((lo, hi))
        return hi


def bounds(b: Backoff, draws: Draws) -> tuple[float, float]:
    """The interval the next delay is drawn from."""
    b.next_delay()
    return draws.seen[-1]


def test_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    draws = Draws()
    b = Backoff(1.0, 10.0, uniform=draws)
    assert [bounds(b, draws) for _ in range(6)] == [
        (1.0, 2.0),
        (1.0, 4.0),
        (1.0, 8.0),
        (1.0, 10.0),
        (1.0, 10.0),
        (1.0, 10.0),
    ]
    assert b.attempts == 6


def test_drawn_delays_stay_within_bounds() -> None:
    b = Backoff(0.5, 3.0)
    for _ in range(200):
        assert 0.5 <= b.next_delay() <= 3.0


def test_reset_starts_over() -> None:
    draws = Draws()
    b = Backoff(1.0, 100.0, uniform=draws)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert bounds(b, draws) == (1.0, 2.0)


@pytest.mark.parametrize(
    ("good_for", "expected"),
    [
        (0.5, (1.0, 16.0)),  # failed again soon after the success: keeps backing off
        (30.0, (1.0, 2.0)),  # the success lasted: start over
    ],
)
def test_a_success_resets_only_once_it_lasted(
    good_for: float, expected: tuple[float, float]
) -> None:
    now = [0.0]
    draws = Draws()
    b = Backoff(1.0, 100.0, stable_after=30.0, clock=lambda: now[0], uniform=draws)
    for _ in range(3):
        b.next_delay()
    b.succeeded()
    now[0] += good_for
    assert bounds(b, draws) == expected


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        Backoff(5.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
