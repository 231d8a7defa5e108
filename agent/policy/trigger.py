"""Condition-triggered captures: when a trigger fires, and which samples its capture holds.

Pure: no I/O, no clock of its own. The caller feeds, per frame, the changed values of the
signals triggers read (physical values, into numbered slots) and of the signals they capture
(raw values, by schema id), stamped with the frame's data time (Unix ms), and passes ``now``
(seconds on the monotonic scheduling clock) for the time-based rules.

* Pre-trigger history: each captured signal keeps its recent changes in a ring bounded both
  by age (the longest ``before`` that captures it) and by count (``ring_samples``): the memory
  bound. A change pushed out by the count while still younger than that age is counted in
  ``ring_dropped`` (the history of a capture is then shorter than its ``before``).
* Edges: ``rising`` fires when the condition becomes true (unknown counts as not true);
  ``level`` fires while it is true. Either never fires again within ``min_interval`` seconds
  (scheduling clock) of its last firing (counted in ``suppressed``), nor while its own window
  is open.
* A window holds every change of the captured signals with data time in
  ``[t - before, t + after]`` (t: the firing frame's time), and, so that a capture stands on
  its own, each signal's value in force when the window starts (its last change before, with
  its own time), where the ring still holds it. It closes when a frame newer than
  ``t + after`` is seen, or when the scheduling clock reaches ``after`` plus a short grace past
  the firing (a bus that fell silent). A window holds at most ``window_samples``; more are
  counted in ``window_dropped``.

It does not decode frames (agent.pipeline) nor encode updates (agent.updates).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent.policy.expr import Condition, Slots

Sample = tuple[int, int, int | float]
Edge = Literal["rising", "level"]
# A silent bus cannot close a window by a newer frame: the scheduling clock does, this much
# after the window's end, so frames already queued when it ended still get in.
CLOSE_GRACE = 0.05
_NEVER = 1 << 62


@dataclass(frozen=True)
class TriggerSpec:
    name: str
    condition: Condition
    edge: Edge = "rising"
    min_interval: float = 0.0
    before: float = 0.0
    after: float = 0.0
    capture: tuple[int, ...] = ()  # schema ids of the captured signals


@dataclass(frozen=True)
class Capture:
    """A closed window: the trigger, its firing time (Unix ms) and the samples in time order."""

    trigger: str
    t_ms: int
    samples: list[Sample]
    dropped: int


@dataclass
class TriggerStats:
    fired: int = 0
    suppressed: int = 0
    captures: int = 0
    ring_dropped: int = 0
    window_dropped: int = 0


class _Window:
    __slots__ = ("spec", "t_ms", "end_ms", "deadline", "samples", "dropped")

    def __init__(self, spec: TriggerSpec, t_ms: int, deadline: float) -> None:
        self.spec = spec
        self.t_ms = t_ms
        self.end_ms = t_ms + int(spec.after * 1000)
        self.deadline = deadline
        self.samples: list[Sample] = []
        self.dropped = 0


class _Trigger:
    __slots__ = ("spec", "test", "state", "last_fired", "window")

    def __init__(self, spec: TriggerSpec, test: Callable[[Slots], bool | None]) -> None:
        self.spec = spec
        self.test = test
        self.state = False
        self.last_fired: float | None = None
        self.window: _Window | None = None


@dataclass
class _Ring:
    age_ms: int
    changes: deque[tuple[int, int | float]] = field(default_factory=deque)
    last: int | float | None = None


class TriggerEngine:
    """All triggers of one catalog. ``slots`` names the values conditions read, in slot order."""

    def __init__(
        self,
        specs: Sequence[TriggerSpec],
        slots: Sequence[str],
        *,
        ring_samples: int = 4096,
        window_samples: int = 65536,
    ) -> None:
        index = {name: i for i, name in enumerate(slots)}
        self.values: list[float | int | None] = [None] * len(slots)
        self.triggers = [_Trigger(s, s.condition.compile(index)) for s in specs]
        # Which triggers read each slot: only those are evaluated when it changes.
        self.readers: list[list[_Trigger]] = [[] for _ in slots]
        for trig in self.triggers:
            for name in trig.spec.condition.names:
                self.readers[index[name]].append(trig)
        self.level = [t for t in self.triggers if t.spec.edge == "level"]
        self.ring_samples = ring_samples
        self.window_samples = window_samples
        self.rings: dict[int, _Ring] = {}
        for spec in specs:
            for sid in spec.capture:
                age = int(spec.before * 1000)
                ring = self.rings.setdefault(sid, _Ring(age))
                ring.age_ms = max(ring.age_ms, age)
        self.open: list[_Window] = []
        # Open windows per captured signal.
        self._capturing: dict[int, list[_Window]] = {}
        self._dirty: dict[int, _Trigger] = {}
        # The earliest end (data time) of an open window: a frame newer than it closes windows.
        self.next_end_ms = _NEVER
        self.stats = TriggerStats()

    # -- input (per frame) -----------------------------------------------------------------

    def set_value(self, slot: int, value: float | int) -> None:
        """A read signal changed (physical value)."""
        self.values[slot] = value
        for trig in self.readers[slot]:
            self._dirty[id(trig)] = trig

    def record(self, sid: int, t_ms: int, raw: int | float) -> None:
        """A captured signal was decoded at ``t_ms``: kept if it differs from its last value."""
        ring = self.rings[sid]
        if raw == ring.last and ring.last is not None:
            return
        ring.last = raw
        changes = ring.changes
        # Kept: the changes younger than the longest 'before' (even with none, the firing
        # frame's own change belongs to its window), and the one change before them: the value
        # in force when a window starts.
        horizon = t_ms - ring.age_ms
        while len(changes) > 1 and changes[1][0] < horizon:
            changes.popleft()
        if len(changes) >= self.ring_samples:
            if changes[0][0] >= horizon:
                self.stats.ring_dropped += 1
            changes.popleft()
        changes.append((t_ms, raw))
        for win in self._capturing.get(sid, ()):
            if t_ms > win.end_ms:
                continue  # past its end: the window closes on this frame
            if len(win.samples) < self.window_samples:
                win.samples.append((t_ms, sid, raw))
            else:
                win.dropped += 1

    def forget(self, sids: frozenset[int]) -> None:
        """Drop every recorded value of these signals, from the rings and the open windows
        (privacy zones changed: a position recorded before may lie in a new zone)."""
        for sid in sids & self.rings.keys():
            ring = self.rings[sid]
            ring.changes.clear()
            ring.last = None
        for win in self.open:
            win.samples = [s for s in win.samples if s[1] not in sids]

    def evaluate(self, t_ms: int, now: float) -> None:
        """Evaluate the conditions whose inputs changed (and level triggers that hold)."""
        if self._dirty:
            dirty = list(self._dirty.values())
            self._dirty.clear()
            values = self.values
            for trig in dirty:
                result = trig.test(values) is True
                was, trig.state = trig.state, result
                if result and (trig.spec.edge == "level" or not was):
                    self._fire(trig, t_ms, now)
        for trig in self.level:
            if trig.state and trig.window is None:
                self._fire(trig, t_ms, now, quiet=True)

    def _fire(self, trig: _Trigger, t_ms: int, now: float, quiet: bool = False) -> None:
        spec = trig.spec
        if trig.window is not None:
            return  # its own window is still open: that firing covers this moment
        if trig.last_fired is not None and now - trig.last_fired < spec.min_interval:
            if not quiet:
                self.stats.suppressed += 1
            return
        trig.last_fired = now
        self.stats.fired += 1
        win = _Window(spec, t_ms, now + spec.after + CLOSE_GRACE)
        start = t_ms - int(spec.before * 1000)
        for sid in spec.capture:
            held: tuple[int, int | float] | None = None
            for t, raw in self.rings[sid].changes:
                if t >= start:
                    win.samples.append((t, sid, raw))
                else:
                    held = (t, raw)
            if held is not None:
                win.samples.append((held[0], sid, held[1]))
            self._capturing.setdefault(sid, []).append(win)
        if len(win.samples) > self.window_samples:
            win.dropped += len(win.samples) - self.window_samples
            win.samples.sort(key=_time)
            del win.samples[: -self.window_samples]  # keep the newest: nearest the firing
        trig.window = win
        self.open.append(win)
        self.next_end_ms = min(self.next_end_ms, win.end_ms)

    # -- output ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return min((w.deadline for w in self.open), default=None)

    def close(self, t_ms: int | None, now: float) -> list[Capture]:
        """Close the windows that ended: by data time (a frame at ``t_ms``, if given, is newer
        than their end) or by the scheduling clock; return their captures."""
        done = [w for w in self.open if (t_ms is not None and t_ms > w.end_ms) or now >= w.deadline]
        return self._finish(done)

    def close_all(self) -> list[Capture]:
        """End of input: every open window closes with what it has."""
        return self._finish(list(self.open))

    def _finish(self, done: Iterable[_Window]) -> list[Capture]:
        out = []
        for win in done:
            self.open.remove(win)
            for sid in win.spec.capture:
                self._capturing[sid].remove(win)
            for trig in self.triggers:
                if trig.window is win:
                    trig.window = None
            win.samples.sort(key=_time)
            self.stats.captures += 1
            self.stats.window_dropped += win.dropped
            out.append(Capture(win.spec.name, win.t_ms, win.samples, win.dropped))
        self.next_end_ms = min((w.end_ms for w in self.open), default=_NEVER)
        return out


def _time(sample: Sample) -> int:
    return sample[0]
