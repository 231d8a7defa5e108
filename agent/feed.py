"""The hand-off of values from a source's thread to the pipeline's thread: the one way the
sources beside the buses (GNSS fixes, diagnostic readings) give the pipeline their values.

``put`` (any thread) appends; beyond ``limit`` the oldest values are dropped and counted in
``dropped``. The first values put after the pipeline took the feed empty call ``wake`` (the
pipeline's: a loop blocked waiting for frames, parked or on a quiet bus, turns now), so a
source wakes the pipeline once per batch it hands over, never per value and never per CAN
frame. The pipeline's thread takes everything at its next turn (agent.pipeline ``Input``).
It does not interpret the values.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Feed(Generic[T]):
    def __init__(self, limit: int, wake: Callable[[], None] | None = None) -> None:
        self._values: deque[T] = deque(maxlen=limit)
        self._lock = threading.Lock()
        self._woken = False  # ``wake`` was called for what waits now
        self.wake = wake
        self.dropped = 0

    def put(self, values: Iterable[T]) -> None:
        """Any thread: hand ``values`` over (oldest first)."""
        with self._lock:
            queue = self._values
            for v in values:
                if len(queue) == queue.maxlen:
                    self.dropped += 1
                queue.append(v)
            wake = self.wake if queue and not self._woken else None
            self._woken = self._woken or wake is not None
        if wake is not None:
            wake()

    def discard(self, unwanted: Callable[[T], bool]) -> int:
        """Any thread: drop the waiting values ``unwanted`` says so of (not counted in
        ``dropped``, which counts what no room was left for); how many."""
        with self._lock:
            kept = [v for v in self._values if not unwanted(v)]
            gone = len(self._values) - len(kept)
            self._values.clear()
            self._values.extend(kept)
        return gone

    def take(self) -> list[T]:
        """The pipeline's thread: every value handed over since the last call, oldest first."""
        if not self._values:  # the common turn: nothing came, no lock taken
            return []
        with self._lock:
            out = list(self._values)
            self._values.clear()
            self._woken = False
        return out
