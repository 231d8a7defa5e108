"""The outbox's memory buffer: updates put but not yet committed, bounded in bytes.

Updates wait here for the group-commit window, and longer while the disk refuses them. The
buffer holds at most ``limit`` bytes (payload plus ROW_OVERHEAD per update); beyond, the oldest
telemetry is dropped first, then the oldest events, each drop counted in ``dropped`` and logged
at a limited rate. Not thread-safe: its owner (agent.outbox.committer) calls it with the buffer
lock held. When a batch is committed is the committer's decision, not this module's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.outbox.rows import EVENT, ROW_OVERHEAD, TELEMETRY
from agent.ratelimit import RateLimitedLog

Pending = deque[tuple[float, bytes]]
Batch = tuple[Pending, Pending]  # per rank: (created wall time, payload), oldest first


def _size(queue: Pending) -> int:
    return sum(len(p) + ROW_OVERHEAD for _, p in queue)


class MemoryBuffer:
    def __init__(self, limit: int, ratelog: RateLimitedLog, path: Path) -> None:
        self.limit = limit
        self._ratelog = ratelog
        self._path = path
        self._pending: Batch = (deque(), deque())
        self.bytes = 0
        self.dropped = 0  # updates dropped for lack of memory, or left unwritten at close
        self.window_start = 0.0  # clock time of the first put into an empty buffer

    @property
    def rows(self) -> int:
        return len(self._pending[EVENT]) + len(self._pending[TELEMETRY])

    @property
    def has_event(self) -> bool:
        return bool(self._pending[EVENT])

    @property
    def half_full(self) -> bool:
        return self.bytes * 2 >= self.limit

    def add(self, rank: int, created: float, payload: bytes, now: float) -> None:
        if not self.rows:
            self.window_start = now
        self._pending[rank].append((created, payload))
        self.bytes += len(payload) + ROW_OVERHEAD
        if self.bytes > self.limit:
            self._shed()

    def take(self) -> Batch:
        """Everything buffered, leaving the buffer empty."""
        batch, self._pending = self._pending, (deque(), deque())
        self.bytes = 0
        return batch

    def put_back(self, batch: Batch) -> None:
        """A batch the disk refused goes back in front of what was put since."""
        for rank in (EVENT, TELEMETRY):
            if batch[rank]:
                batch[rank].extend(self._pending[rank])
                self._pending[rank].clear()
                self._pending[rank].extend(batch[rank])
        self.bytes = _size(self._pending[EVENT]) + _size(self._pending[TELEMETRY])
        if self.bytes > self.limit:
            self._shed()

    def expire(self, batch: Batch, max_age: Mapping[int, float], wall: float) -> int:
        """Drop updates past their maximum age (per rank, seconds; 0 = never) from ``batch``
        (already taken) and from the buffer; the number dropped."""
        expired = 0
        for rank, age in max_age.items():
            if age <= 0:
                continue
            for queue in (batch[rank], self._pending[rank]):
                kept = deque((c, p) for c, p in queue if c >= wall - age)
                gone = len(queue) - len(kept)
                if gone:
                    if queue is self._pending[rank]:
                        self.bytes -= _size(queue) - _size(kept)
                    queue.clear()
                    queue.extend(kept)
                    expired += gone
        return expired

    def rewrite(self, fn: Callable[[bytes], bytes | None]) -> tuple[int, int]:
        """Pass every buffered payload through ``fn``: a new payload takes its place, None
        removes it, the same object leaves it. (rewritten, removed)."""
        rewritten = removed = 0
        for queue in self._pending:
            kept: Pending = deque()
            for created, payload in queue:
                new = fn(payload)
                if new is None:
                    removed += 1
                    continue
                rewritten += new is not payload
                kept.append((created, new))
            queue.clear()
            queue.extend(kept)
        self.bytes = _size(self._pending[EVENT]) + _size(self._pending[TELEMETRY])
        return rewritten, removed

    def clear(self) -> int:
        """Drop everything (the process ends before the disk took it); the number dropped."""
        lost = self.rows
        self.take()
        self.dropped += lost
        return lost

    def _shed(self) -> None:
        dropped = 0
        for rank in (TELEMETRY, EVENT):
            queue = self._pending[rank]
            while self.bytes > self.limit and queue:
                _, payload = queue.popleft()
                self.bytes -= len(payload) + ROW_OVERHEAD
                dropped += 1
        self.dropped += dropped
        if dropped:
            self._ratelog.warning(
                "memory",
                "outbox %s: memory buffer full (%d bytes): dropped %d oldest updates",
                self._path,
                self.limit,
                dropped,
            )
