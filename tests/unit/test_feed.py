"""The hand-off into the pipeline (agent.feed): bounded, drops counted, one wake per batch."""

from __future__ import annotations

from agent.feed import Feed


def test_the_oldest_values_are_dropped_and_counted_beyond_the_limit() -> None:
    feed: Feed[int] = Feed(3)
    feed.put(range(5))
    feed.put([5])
    assert feed.take() == [3, 4, 5]
    assert feed.dropped == 3
    assert feed.take() == []


def test_one_wake_per_batch_until_the_pipeline_took_it() -> None:
    wakes: list[None] = []
    feed: Feed[int] = Feed(16, wake=lambda: wakes.append(None))
    feed.put([])
    assert wakes == []
    feed.put([1])
    feed.put([2, 3])
    assert len(wakes) == 1
    assert feed.take() == [1, 2, 3]
    feed.put([4])
    assert len(wakes) == 2


def test_values_put_before_a_wake_is_set_wake_at_the_next_put() -> None:
    wakes: list[None] = []
    feed: Feed[int] = Feed(16)
    feed.put([1])
    feed.wake = lambda: wakes.append(None)
    feed.put([2])
    assert len(wakes) == 1 and feed.take() == [1, 2]


def test_discarded_values_are_not_counted_as_dropped() -> None:
    feed: Feed[int] = Feed(16)
    feed.put(range(6))
    assert feed.discard(lambda v: v % 2 == 1) == 3
    assert feed.take() == [0, 2, 4] and feed.dropped == 0
