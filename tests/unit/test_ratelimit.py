"""The interval gate and the rate-limited log built on it, on an injected clock."""

from __future__ import annotations

import logging

import pytest

from agent.ratelimit import Interval, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("seconds", "times", "opened"),
    [
        (10.0, [0, 1, 9.99, 10, 15, 20], [True, False, False, True, False, True]),
        (0.0, [0, 0, 0], [True, True, True]),
        (5.0, [0, 100], [True, True]),
    ],
)
def test_interval_opens_at_most_once_per_interval(
    seconds: float, times: list[float], opened: list[bool]
) -> None:
    gate = Interval(seconds, clock=lambda: 0.0)
    assert [gate.allow(t) for t in times] == opened


def test_interval_reads_its_clock_and_ready_does_not_consume() -> None:
    clock = Clock()
    gate = Interval(30.0, clock)
    assert gate.ready() and gate.ready()
    assert gate.allow()
    assert not gate.ready() and not gate.allow()
    clock.t += 30
    assert gate.ready() and gate.allow() and not gate.allow()


def test_rate_limited_log_counts_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rlog = RateLimitedLog(logging.getLogger("test.ratelimit"), interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        rlog.warning("k", "bad frame %d", 1)
        rlog.warning("k", "bad frame %d", 2)
        rlog.warning("k", "bad frame %d", 3)
        rlog.warning("other", "other problem")
        clock.t += 60
        rlog.warning("k", "bad frame %d", 4)
    assert [r.getMessage() for r in caplog.records] == [
        "bad frame 1",
        "other problem",
        "bad frame 4 (and 2 more like it since last logged)",
    ]


def test_rate_limited_log_memory_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    rlog = RateLimitedLog(logging.getLogger("test.ratelimit"), clock=Clock(), max_keys=3)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for key in range(10):
            rlog.warning(key, "key %d", key)
        rlog.warning(9, "key %d", 9)  # still remembered: suppressed
        rlog.warning(0, "key %d", 0)  # forgotten to keep memory bounded: logged again
    assert [r.getMessage() for r in caplog.records][-2:] == ["key 9", "key 0"]
    assert len(caplog.records) == 11
