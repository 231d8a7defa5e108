"""Per-signal sampling policies: which decoded values become transmitted samples, and when.

Pure: no I/O and no clock of its own. Callers pass ``now`` (seconds on a monotonic scheduling
clock) and the data time of each value (Unix milliseconds from the frame). Policies:

* on change, optionally with an absolute deadband (in physical units);
* ``min_interval``: at most one sample per interval; a change inside the interval is held and
  its LATEST value sent when the interval ends, so the final state is never dropped;
* ``max_interval``: a heartbeat re-sends the current value when nothing was sent for that long,
  but only if a frame confirmed the value since the last sample: a silent bus sends nothing
  rather than pretending its last value still holds.

It does not decode frames (agent.pipeline) or batch samples into updates (agent.updates).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable, Mapping

from agent.catalog import Policy

Sample = tuple[int, int, int | float]


def grid_snapper(
    scale: float, offset: float, grid: float, integer: bool
) -> Callable[[int | float], int | float]:
    """Snap a raw value so that its physical value lies on a grid (e.g. 0.01 degrees: about
    1 km of latitude), and return the raw value of that grid point."""

    def snap(raw: int | float) -> int | float:
        physical = raw * scale + offset
        if not math.isfinite(physical):
            return raw  # NaN and the infinities lie on no grid and reveal no place
        on_grid = round(physical / grid) * grid
        back = (on_grid - offset) / scale
        return round(back) if integer else back

    return snap


def _same(a: int | float, b: int | float) -> bool:
    """Equal values, counting NaN as equal to NaN (an IEEE float signal's "invalid")."""
    return a == b or (a != a and b != b)


class Group:
    """Shared by the signals of one CAN message: when a frame of it was last seen."""

    __slots__ = ("last_t",)

    def __init__(self) -> None:
        self.last_t = 0


class SignalState:
    """Runtime state of one transmitted signal."""

    __slots__ = (
        "sid",
        "raw_deadband",
        "min_interval",
        "max_interval",
        "event",
        "group",
        "has_sent",
        "sent",
        "sent_at",
        "sent_t",
        "pending",
        "pending_t",
        "cur",
        "cur_t",
        "snap",
        "plain",
    )

    def __init__(
        self,
        sid: int,
        policy: Policy,
        scale: float,
        group: Group,
        snap: Callable[[int | float], int | float] | None = None,
    ) -> None:
        self.sid = sid
        # Applied to every value before any policy: the reduced precision the owner consented to.
        self.snap = snap
        # The deadband is compared on raw values: |raw delta| * |scale| >= deadband.
        self.raw_deadband = policy.deadband / abs(scale) if policy.deadband and scale else 0.0
        self.min_interval = policy.min_interval
        self.max_interval = policy.max_interval
        self.event = policy.event
        self.group = group
        self.has_sent = False
        self.sent: int | float = 0
        self.sent_at = 0.0
        self.sent_t = 0
        self.pending: int | float | None = None
        self.pending_t = 0
        self.cur: int | float | None = None
        self.cur_t = 0
        # Sent on every change with nothing else to track: the common case, kept cheap.
        self.plain = not (
            snap or self.raw_deadband or self.min_interval or self.max_interval or self.event
        )


class Sampler:
    """Applies the policies; emitted samples accumulate in ``out`` for the caller to take."""

    def __init__(self) -> None:
        self.out: list[Sample] = []
        self.event = False
        self._heap: list[tuple[float, int, SignalState]] = []
        self._tie = itertools.count()

    def offer_changed(
        self,
        changed: Iterable[tuple[str, int | float]],
        states: Mapping[str, SignalState],
        t_ms: int,
        now: float,
    ) -> None:
        """Offer the values of one frame that differ from the previous frame of its message
        (names not in ``states`` are not selected). A plain on-change signal needs none of the
        policy bookkeeping: it is sent whenever its value differs from its last one."""
        out = self.out
        offer = self.offer
        for name, raw in changed:
            st = states.get(name)
            if st is None:
                continue
            if st.plain:
                # The previous frame may not have carried this signal (another multiplexer
                # branch, a short frame): compare with the signal's own last value. NaN differs
                # from itself: a NaN following a NaN is no change.
                if raw != st.cur and (raw == raw or st.cur == st.cur):
                    st.cur = raw
                    st.cur_t = t_ms
                    out.append((t_ms, st.sid, raw))
            else:
                offer(st, raw, t_ms, now)

    def offer(self, st: SignalState, raw: int | float, t_ms: int, now: float) -> None:
        """A decoded value of ``st`` at data time ``t_ms``, seen at scheduling time ``now``."""
        if st.snap is not None:
            raw = st.snap(raw)
        st.cur = raw
        st.cur_t = t_ms
        if st.has_sent:
            if st.raw_deadband:
                if _same(raw, st.sent) or abs(raw - st.sent) < st.raw_deadband:
                    st.pending = None
                    return
            elif _same(raw, st.sent):
                st.pending = None
                return
            if st.min_interval and now - st.sent_at < st.min_interval:
                if st.pending is None:
                    heapq.heappush(self._heap, (st.sent_at + st.min_interval, next(self._tie), st))
                st.pending = raw
                st.pending_t = t_ms
                return
        self._emit(st, raw, t_ms, now)

    def _emit(self, st: SignalState, raw: int | float, t_ms: int, now: float) -> None:
        st.has_sent = True
        st.sent = raw
        st.sent_at = now
        st.sent_t = t_ms
        st.pending = None
        self.out.append((t_ms, st.sid, raw))
        if st.event:
            self.event = True
        if st.max_interval:
            heapq.heappush(self._heap, (now + st.max_interval, next(self._tie), st))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def tick(self, now: float) -> None:
        """Send held values whose interval ended and heartbeats that are due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, st = heapq.heappop(heap)
            if st.pending is not None:
                if now - st.sent_at >= st.min_interval:
                    self._emit(st, st.pending, st.pending_t, now)
                continue
            if not st.max_interval or now - st.sent_at < st.max_interval:
                continue  # superseded by a later sample: its own entry is in the heap
            confirmed = st.group.last_t
            if confirmed > st.sent_t and st.cur is not None:
                self._emit(st, st.cur, confirmed, now)
            else:
                # Nothing heard since: stay quiet, look again one interval later.
                heapq.heappush(heap, (now + st.max_interval, next(self._tie), st))

    def flush_held(self, now: float) -> None:
        """Send every held value now (end of a replay, shutdown): the final state is kept."""
        for _, _, st in list(self._heap):
            if st.pending is not None:
                self._emit(st, st.pending, st.pending_t, now)

    def take(self) -> tuple[list[Sample], bool]:
        out, event = self.out, self.event
        self.out = []
        self.event = False
        return out, event

    @staticmethod
    def snapshot(states: list[SignalState]) -> list[Sample]:
        """The current value of every signal seen so far, stamped with its message's latest
        frame time, in time order."""
        snap = [
            (max(st.cur_t, st.group.last_t), st.sid, st.cur) for st in states if st.cur is not None
        ]
        snap.sort(key=lambda s: s[0])
        return snap  # type: ignore[return-value]
