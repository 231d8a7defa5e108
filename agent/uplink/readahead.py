"""The session's read-ahead of outbox rows: read a few windows at a time, published from memory.

One SQLite read per many messages, not one per PUBACK. The read-ahead is short-lived
(``MAX_AGE``) so that new events and purged rows are noticed within a fraction of a second.
Each read continues after the last row read, unless rows were committed since (a new event
sorts before it): passing again the rows in flight and those acked but not yet deleted, a read
from the start would cost more than the rows it reads. Rows too large for the broker are
skipped for the rest of the connection (at most ``_MAX_SKIPPED`` remembered).

Part of one session (agent.uplink.session), made fresh with it, used on the worker thread only.
It reads; it does not publish, ack or decide what a refusal means.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

MAX_AGE = 0.25  # seconds a row read ahead may wait to be published before it is read again
_MAX_SKIPPED = 1024


class RowSource(Protocol):
    def next_batch(self, limit: int, exclude: Any = (), after: Any = None) -> list[Any]: ...
    def generation(self) -> int: ...


class ReadAhead:
    def __init__(self, outbox: RowSource) -> None:
        self._outbox = outbox
        self._rows: deque[Any] = deque()
        self._read_at = 0.0
        # Where the next read continues: the last row read while all before it were published
        # (None: from the start), and the outbox's generation when reading began from the start.
        self._last: Any = None
        self._generation = -1
        self.skipped: set[int] = set()  # rows too large for this connection's broker

    def fresh(self, now: float) -> bool:
        """Rows are waiting and were read less than ``MAX_AGE`` ago."""
        return bool(self._rows) and now - self._read_at <= MAX_AGE

    def __bool__(self) -> bool:
        return bool(self._rows)

    def first(self) -> Any:
        return self._rows[0]

    def take(self) -> None:
        """The first row was published (or skipped)."""
        self._rows.popleft()

    def drop(self) -> None:
        """Forget the rows read ahead; the next read continues before them."""
        if self._rows:
            self._rows.clear()
            self._last = None  # rows before the last one read were not published

    def start_over(self) -> None:
        """A row handed out is to be sent again (refused): the next read starts from the
        start."""
        self._last = None

    def skip(self, row_id: int) -> None:
        """Leave this row out for the rest of the connection."""
        if len(self.skipped) < _MAX_SKIPPED:
            self.skipped.add(row_id)

    def read(self, limit: int, in_flight: set[int], now: float) -> bool:
        """Replace what is read ahead with up to ``limit`` rows not in flight; False if none."""
        self.drop()
        exclude = in_flight | self.skipped
        generation = self._outbox.generation()
        batch: list[Any] = []
        if self._last is not None and generation == self._generation:
            batch = self._outbox.next_batch(limit, exclude=exclude, after=self._last)
        if not batch:
            batch = self._outbox.next_batch(limit, exclude=exclude)
            self._generation = generation
        self._last = batch[-1] if batch else None
        self._rows.extend(batch)
        self._read_at = now
        return bool(batch)
