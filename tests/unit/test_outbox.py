"""Outbox behaviour on real SQLite files: group commit, ordering, acks, ids, limits, purge."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import OutboxConfig
from agent.outbox import ROW_OVERHEAD, Outbox, OutboxEntry
from agent.outbox.table import id_runs
from tests.support.wait import wait_until

WAIT = 10.0  # generous: the suite must pass on a loaded 2-core machine


class Wall:
    """A settable wall clock for max-age tests."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(path: Path, **kw: object) -> Outbox:
    return Outbox(OutboxConfig(path=path, **kw))  # type: ignore[arg-type]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    # A long window: nothing is committed by the timer during a test unless it asks for it.
    ob = make(tmp_path / "outbox.db", commit_interval=600)
    ob.open()
    yield ob
    ob.close()


def payloads(entries: list[OutboxEntry]) -> list[bytes]:
    return [e.payload for e in entries]


def drain(ob: Outbox) -> list[OutboxEntry]:
    return ob.next_batch(1_000_000)


# ------------------------------------------------------------------------------ group commit


def test_put_is_not_visible_before_flush_and_visible_after(box: Outbox) -> None:
    box.put(b"t1")
    box.put(b"t2")
    assert box.next_batch(10) == []
    assert box.stats().memory_rows == 2
    box.flush()
    assert payloads(box.next_batch(10)) == [b"t1", b"t2"]
    st_ = box.stats()
    assert (st_.rows, st_.memory_rows, st_.committed) == (2, 0, 2)


def test_window_expiry_commits_without_flush(tmp_path: Path) -> None:
    with make(tmp_path / "o.db", commit_interval=0.2) as ob:
        ob.put(b"t")
        assert ob.wait_for_data(WAIT)
        assert payloads(ob.next_batch(10)) == [b"t"]


def test_event_is_committed_at_once_and_wakes_the_waiter(box: Outbox) -> None:
    box.put(b"telemetry")
    woke = threading.Event()

    def waiter() -> None:
        if box.wait_for_data(WAIT):
            woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    box.put(b"event", "event")
    t.join(WAIT)
    assert woke.is_set()
    # The event's commit carries the telemetry buffered before it as well.
    assert payloads(box.next_batch(10)) == [b"event", b"telemetry"]


def test_wait_for_data_times_out_when_empty_and_ignores_excluded(box: Outbox) -> None:
    assert box.wait_for_data(0.05) is False
    box.put(b"e", "event")
    assert box.wait_for_data(WAIT)
    (entry,) = box.next_batch(10)
    assert box.wait_for_data(0.05, exclude=[entry.id]) is False


def test_close_commits_buffered_puts_and_acks(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with make(path, commit_interval=600) as ob:
        ob.put(b"a")
        ob.put(b"b")
        ob.flush()
        first = ob.next_batch(1)
        ob.ack([e.id for e in first])
        ob.put(b"c")
    with make(path) as ob:
        assert payloads(drain(ob)) == [b"b", b"c"]


def test_memory_buffer_reaching_half_full_commits_early(tmp_path: Path) -> None:
    with make(tmp_path / "o.db", commit_interval=600, memory_bytes=64 * 1024) as ob:
        for _ in range(40):
            ob.put(b"x" * 1000)
        assert ob.wait_for_data(WAIT)
        assert ob.stats().memory_dropped == 0


# --------------------------------------------------------------------------------- ordering


def test_events_first_then_telemetry_each_oldest_first(box: Outbox) -> None:
    for i, prio in enumerate(["telemetry", "event", "telemetry", "event", "telemetry"]):
        box.put(f"{prio[0]}{i}".encode(), prio, created=1000.0 + i)
    box.flush()
    batch = box.next_batch(10)
    assert payloads(batch) == [b"e1", b"e3", b"t0", b"t2", b"t4"]
    assert [e.priority for e in batch] == ["event"] * 2 + ["telemetry"] * 3
    assert [e.created for e in batch] == [1001.0, 1003.0, 1000.0, 1002.0, 1004.0]


def test_next_batch_honours_limit_and_exclude(box: Outbox) -> None:
    for i in range(6):
        box.put(bytes([i]))
    box.flush()
    first = box.next_batch(2)
    assert payloads(first) == [b"\x00", b"\x01"]
    second = box.next_batch(3, exclude={e.id for e in first})
    assert payloads(second) == [b"\x02", b"\x03", b"\x04"]
    assert box.next_batch(0) == []


def test_next_batch_continues_after_a_row_in_the_same_order(box: Outbox) -> None:
    for i, prio in enumerate(["telemetry", "event", "telemetry", "event", "telemetry"]):
        box.put(f"{prio[0]}{i}".encode(), prio)
    box.flush()
    first = box.next_batch(1)
    assert payloads(first) == [b"e1"]
    # From an event into the telemetry, skipping what the reader excludes.
    t2 = box.next_batch(10)[3]
    assert payloads(box.next_batch(10, exclude={t2.id}, after=first[0])) == [b"e3", b"t0", b"t4"]
    last = box.next_batch(10)[-1]
    assert box.next_batch(10, after=last) == []


def test_generation_changes_when_a_commit_adds_rows(box: Outbox) -> None:
    before = box.generation()
    box.put(b"t0")
    assert box.generation() == before  # buffered, not committed
    box.flush()
    after_telemetry = box.generation()
    assert after_telemetry != before
    (t0,) = box.next_batch(10)
    # An event committed now sorts before the telemetry a reader has passed: only the changed
    # generation tells that reader to start over.
    box.put(b"e1", "event")
    box.flush()
    assert box.generation() != after_telemetry
    assert box.next_batch(10, after=t0) == []
    assert payloads(box.next_batch(10)) == [b"e1", b"t0"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.booleans(), max_size=40),
    st.integers(min_value=1, max_value=7),
    st.sets(st.integers(min_value=0, max_value=39)),
)
def test_reading_on_after_the_last_row_equals_one_read(
    events: list[bool], step: int, excluded: set[int]
) -> None:
    with tempfile.TemporaryDirectory() as d, make(Path(d) / "o.db", commit_interval=600) as ob:
        for i, is_event in enumerate(events):
            ob.put(bytes([i]), "event" if is_event else "telemetry")
        ob.flush()
        skip = {e.id for e in drain(ob) if e.payload[0] in excluded}
        whole = ob.next_batch(1000, exclude=skip)
        pieces: list[OutboxEntry] = []
        while batch := ob.next_batch(step, exclude=skip, after=pieces[-1] if pieces else None):
            pieces.extend(batch)
        assert pieces == whole


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), max_size=40))
def test_order_property(items: list[tuple[bool, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as d, make(Path(d) / "o.db", commit_interval=600) as ob:
        for is_event, data in items:
            ob.put(data, "event" if is_event else "telemetry")
        ob.flush()
        got = payloads(drain(ob))
        expected = [d for e, d in items if e] + [d for e, d in items if not e]
        assert got == expected


# ------------------------------------------------------------------------------ acks and ids


def test_acked_rows_are_deleted_and_never_returned(box: Outbox) -> None:
    for i in range(5):
        box.put(bytes([i]))
    box.flush()
    batch = box.next_batch(3)
    box.ack(e.id for e in batch)
    # Hidden at once, even before the delete is committed.
    assert payloads(box.next_batch(10)) == [b"\x03", b"\x04"]
    assert wait_until(lambda: box.stats().acked == 3, WAIT)
    assert box.stats().rows == 2
    box.ack([999_999])  # unknown ids are harmless
    box.flush()
    assert box.stats().acked == 3


def test_ids_never_reused_after_emptying_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    seen: list[int] = []
    for _ in range(3):
        with make(path, commit_interval=600) as ob:
            for _ in range(2):
                ob.put(b"x")
                ob.flush()
                batch = drain(ob)
                seen += [e.id for e in batch]
                ob.ack(e.id for e in batch)
                ob.flush()
                assert ob.stats().rows == 0
    assert len(seen) == 6
    assert seen == sorted(set(seen))


def test_stats_bytes_and_oldest(tmp_path: Path) -> None:
    wall = Wall(5000.0)
    with Outbox(OutboxConfig(path=tmp_path / "o.db", commit_interval=600), wall=wall) as ob:
        assert ob.stats().oldest_created is None
        ob.put(b"abc", created=4990.0)
        ob.put(b"defgh", "event", created=4995.0)
        ob.flush()
        s = ob.stats()
        assert s.bytes == 8 + 2 * ROW_OVERHEAD
        assert (s.rows_event, s.rows_telemetry) == (1, 1)
        assert s.oldest_created == 4990.0
        assert s.oldest_age == pytest.approx(10.0)
    with make(tmp_path / "o.db") as ob:  # counts survive a restart
        assert ob.stats().bytes == 8 + 2 * ROW_OVERHEAD


# ------------------------------------------------------------------------------ space limits


def test_full_outbox_evicts_oldest_telemetry_then_events(tmp_path: Path) -> None:
    size = 1000
    per_row = size + ROW_OVERHEAD
    capacity = (64 * 1024) // per_row  # 61 rows
    with make(tmp_path / "o.db", max_bytes=64 * 1024, commit_interval=600) as ob:
        for i in range(10):
            ob.put(b"E%03d" % i + b"." * (size - 4), "event")
        for i in range(capacity - 10):
            ob.put(b"T%03d" % i + b"." * (size - 4))
        ob.flush()
        assert ob.stats().rows == capacity
        assert ob.stats().evicted_telemetry == 0

        for i in range(5):  # five more telemetry: the five oldest telemetry go
            ob.put(b"N%03d" % i + b"." * (size - 4))
        ob.flush()
        s = ob.stats()
        assert (s.evicted_telemetry, s.evicted_event, s.rows) == (5, 0, capacity)
        heads = [e.payload[:4] for e in drain(ob)]
        assert heads[:10] == [b"E%03d" % i for i in range(10)]
        assert heads[10] == b"T005"
        assert heads[-5:] == [b"N%03d" % i for i in range(5)]

        # Events keep coming: all telemetry goes before the first event is evicted.
        for i in range(capacity):
            ob.put(b"F%03d" % i + b"." * (size - 4), "event")
        ob.flush()
        s = ob.stats()
        assert s.evicted_telemetry == 5 + capacity - 10
        assert s.evicted_event == 10
        assert s.bytes <= 64 * 1024
        assert [e.payload[:4] for e in drain(ob)] == [b"F%03d" % i for i in range(capacity)]


def test_batch_larger_than_outbox_keeps_newest(tmp_path: Path) -> None:
    with make(tmp_path / "o.db", max_bytes=64 * 1024, commit_interval=600) as ob:
        for i in range(100):
            ob.put(i.to_bytes(2, "big") + b"." * 998)
        ob.flush()
        got = [int.from_bytes(e.payload[:2], "big") for e in drain(ob)]
        assert got == list(range(100 - len(got), 100))
        assert ob.stats().evicted_telemetry == 100 - len(got)


def test_max_age_expires_rows_by_priority(tmp_path: Path) -> None:
    wall = Wall(10_000.0)
    cfg = OutboxConfig(
        path=tmp_path / "o.db", commit_interval=600, max_age_telemetry=60, max_age_event=3600
    )
    with Outbox(cfg, wall=wall) as ob:
        ob.put(b"old-t", created=9_000.0)
        ob.put(b"new-t", created=9_990.0)
        ob.put(b"old-e", "event", created=9_000.0)
        ob.flush()
        # Buffered rows past their age are dropped before they reach the disk too.
        ob.put(b"stale-buffered", created=100.0)
        wall.t = 10_030.0
        ob.flush()
        assert payloads(drain(ob)) == [b"old-e", b"new-t"]
        assert ob.stats().expired == 2
        wall.t = 12_601.0
        ob.flush()
        assert drain(ob) == []
        s = ob.stats()
        assert (s.expired, s.rows, s.bytes) == (4, 0, 0)


def test_put_rejects_unknown_priority_and_use_when_closed(tmp_path: Path) -> None:
    ob = make(tmp_path / "o.db")
    with pytest.raises(RuntimeError):
        ob.put(b"x")
    ob.open()
    with pytest.raises(ValueError, match="priority"):
        ob.put(b"x", "urgent")
    ob.close()
    with pytest.raises(RuntimeError):
        ob.put(b"x")
    assert ob.next_batch(10) == []
    assert ob.wait_for_data(0.01) is False


# ------------------------------------------------------------------------------------ purge


def test_iter_rows_and_purge_ids(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with make(path, commit_interval=600) as ob:
        for i in range(1200):  # more than one page of iter_rows
            ob.put(b"loc" if i % 3 == 0 else b"speed")
        ob.flush()
        rows = list(ob.iter_rows())
        assert len(rows) == 1200
        assert [r.id for r in rows] == sorted(r.id for r in rows)
        ob.purge_ids(r.id for r in rows if r.payload == b"loc")
        assert ob.stats().purged == 400
        assert all(e.payload == b"speed" for e in drain(ob))
    with make(path) as ob:
        assert ob.stats().rows == 800


# ------------------------------------------------------------------------------ concurrency


def test_concurrent_put_and_drain_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    n = 3000
    with make(tmp_path / "o.db", commit_interval=0.01) as ob:

        def producer() -> None:
            for i in range(n):
                ob.put(i.to_bytes(4, "big"), "event" if i % 50 == 0 else "telemetry")

        t = threading.Thread(target=producer)
        t.start()
        got: list[int] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            if not ob.wait_for_data(0.2):
                continue
            batch = ob.next_batch(100)
            got += [int.from_bytes(e.payload, "big") for e in batch]
            ob.ack(e.id for e in batch)
        t.join()
        assert sorted(got) == list(range(n))
        assert wait_until(lambda: ob.stats().rows == 0, WAIT)
        assert ob.stats().acked == n


def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    from agent.outbox import OutboxError

    with pytest.raises(OutboxError, match="newer"):
        make(path).open()


def test_replace_rewrites_in_place_keeping_id_order_and_byte_count(box: Outbox) -> None:
    for p in (b"first-row", b"second-row", b"third-row"):
        box.put(p)
    box.flush()
    before = box.iter_rows()
    ids = [e.id for e in before]
    size = box.stats().bytes
    assert box.replace(ids[1], b"2nd") is True
    rows = list(box.iter_rows())
    assert [e.id for e in rows] == ids
    assert [e.payload for e in rows] == [b"first-row", b"2nd", b"third-row"]
    assert box.stats().bytes == size - len(b"second-row") + len(b"2nd")
    assert [e.payload for e in box.next_batch(10)] == [b"first-row", b"2nd", b"third-row"]
    box.ack([ids[1]])
    assert wait_until(lambda: box.stats().rows == 2, WAIT)
    assert box.replace(ids[1], b"gone") is False


@given(st.sets(st.integers(min_value=1, max_value=200), max_size=120))
def test_id_runs_cover_exactly_the_ids(ids: set[int]) -> None:
    runs, single = id_runs(ids)
    covered = [i for first, last in runs for i in range(first, last + 1)]
    # Every id in a range is one of the ids: deleting the range deletes nothing else.
    assert set(covered) <= ids
    assert len(covered) == len(set(covered))
    assert sorted(covered + single) == sorted(ids)
    assert single == sorted(single)
    assert all(last > first for first, last in runs)


def test_acks_with_gaps_delete_only_the_acked_rows(box: Outbox) -> None:
    for i in range(40):
        box.put(bytes([i]))
    box.flush()
    rows = drain(box)
    # Runs with rows in flight between them, a lone id, and ids already gone.
    acked = rows[0:10] + rows[11:20] + rows[22:23] + rows[25:39]
    box.ack(e.id for e in acked)
    box.ack([rows[0].id, rows[-1].id + 1000])
    box.flush()
    kept = drain(box)
    assert [e.id for e in kept] == [e.id for e in rows if e not in acked]
    assert payloads(kept) == [bytes([i]) for i in (10, 20, 21, 23, 24, 39)]
    stats = box.stats()
    assert stats.acked == len(acked)
    assert stats.rows == 6
    assert stats.bytes == sum(len(e.payload) + ROW_OVERHEAD for e in kept)


def test_a_backlog_of_acks_is_hidden_at_once_and_deleted(box: Outbox) -> None:
    for i in range(600):
        box.put(i.to_bytes(2, "big"))
    box.flush()
    rows = drain(box)
    box.ack(e.id for e in rows[:500])
    assert len(drain(box)) == 100  # hidden at once
    assert wait_until(lambda: box.stats().acked == 500, WAIT)
    assert box.stats().rows == 100
