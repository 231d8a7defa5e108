"""What other threads ask of the pipeline's thread: reloads, snapshots, calls (``Requests``).

Each request is queued here and taken by the pipeline at its next turn (agent.pipeline
``_turn``); asking wakes the loop. A reload's requester can wait until it was applied, the
update open under the old selection included; a snapshot's until it was written. Calls (the
lifecycle's commit and event samples) are bounded: at most CALLS wait, the oldest dropped and
counted beyond; once the loop ended, a call runs in its caller's thread. It does not carry out
the requests (the pipeline does, in its thread).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

CALLS = 64


class Requests:
    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.reload: tuple[Any, Any] | None = None  # (Config, Catalog) to switch to
        self._lock = threading.Lock()
        # Reloads requested and applied, counted: a waiter knows its own request is done only
        # once the old selection's open update was closed and handed to the sink.
        self._requested = self._applied = 0
        self._done = threading.Condition()
        # Snapshot requests (remote commands): (done, samples written).
        self.snapshots: list[tuple[threading.Event, list[int]]] = []
        self.calls: collections.deque[Callable[[], None]] = collections.deque(maxlen=CALLS)
        self._calls_lock = threading.Lock()
        self._calls_ended = False
        self.dropped_calls = 0

    # -- reloads -------------------------------------------------------------------------------
    def request_reload(self, cfg: Any, catalog: Any) -> None:
        with self._lock:
            self.reload = (cfg, catalog)
            self._requested += 1
        self.wake()  # a loop blocked while parked takes it up now, not at the end of its wait

    def wait_reloaded(self, timeout: float) -> bool:
        with self._lock:
            wanted = self._requested
        with self._done:
            return self._done.wait_for(lambda: self._applied >= wanted, timeout)

    def take_reload(self) -> tuple[tuple[Any, Any] | None, int]:
        """The pipeline's thread: the reload to apply (None: none) and the count it settles."""
        with self._lock:
            pending, self.reload = self.reload, None
            return pending, self._requested

    def reloaded(self, count: int) -> None:
        """The pipeline's thread: the reloads up to ``count`` are applied."""
        with self._done:
            self._applied = count
            self._done.notify_all()

    # -- snapshots -----------------------------------------------------------------------------
    def request_snapshot(self, timeout: float) -> int | None:
        done, written = threading.Event(), [0]
        with self._lock:
            self.snapshots.append((done, written))
        self.wake()
        return written[0] if done.wait(timeout) else None

    def take_snapshots(self) -> list[tuple[threading.Event, list[int]]]:
        with self._lock:
            pending, self.snapshots = self.snapshots, []
        return pending

    # -- calls ---------------------------------------------------------------------------------
    def call_soon(self, fn: Callable[[], None]) -> None:
        with self._calls_lock:
            if self._calls_ended:
                # Nothing else uses the builder any more (the end of a replay): at once.
                fn()
                return
            if len(self.calls) == self.calls.maxlen:
                self.dropped_calls += 1
            self.calls.append(fn)
        self.wake()

    def run_calls(self) -> None:
        """The pipeline's thread: what was handed over so far."""
        calls = self.calls
        while calls:
            calls.popleft()()

    def end_calls(self) -> None:
        """The loop ended: run what other threads handed over; later calls run at once."""
        with self._calls_lock:
            self._calls_ended = True
            self.run_calls()
