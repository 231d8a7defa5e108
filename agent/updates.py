"""Batching samples into spime updates.

Collects samples and closes an update when it holds ``max_samples``, when its worst-case encoded
size reaches ``max_bytes``, when its first sample is ``max_age`` old (scheduling clock), or at
once when it holds an ``event`` sample (events are latency-sensitive). Numbers updates per boot
and writes periodic full snapshots. Hands each encoded update to a sink; it does not store or
send (agent.outbox, agent.uplink).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import UpdatesConfig
from agent.spime import Schema, encode_update

Sample = tuple[int, int, int | float]
# Worst case per sample before compression: signal id delta, a 64-bit value as varint or a
# double, and the share of a time group. Bounding by the worst case keeps every update within
# max_bytes whatever the data.
_WORST_SAMPLE = 16
_WORST_HEADER = 64
_TIME = operator.itemgetter(0)


@dataclass(frozen=True)
class Update:
    """One encoded update and what the outbox needs to know about it."""

    seq: int
    payload: bytes
    samples: int
    event: bool
    snapshot: bool
    created: float  # wall seconds of the newest sample


Sink = Callable[[Update], None]


class UpdateBuilder:
    def __init__(
        self, schema: Schema, *, vin: str, boot: bytes, cfg: UpdatesConfig, sink: Sink
    ) -> None:
        self.schema = schema
        self.vin = vin
        self.boot = boot
        self.cfg = cfg
        self.sink = sink
        self.seq = 0
        self.samples_out = 0
        self.bytes_out = 0
        self._kinds = {s.id: s.kind for s in schema.signals}
        self._buf: list[Sample] = []
        self._event = False
        # Scheduling time the open update received its first sample (None: no open update).
        self.opened_at: float | None = None
        self._limit = max(1, min(cfg.max_samples, (cfg.max_bytes - _WORST_HEADER) // _WORST_SAMPLE))
        self._next_snapshot: float | None = None

    def add(self, samples: list[Sample], event: bool, now: float) -> None:
        if not samples:
            return
        if self.opened_at is None:
            self.opened_at = now
        buf, limit = self._buf, self._limit
        start = 0
        while len(buf) + len(samples) - start > limit:
            room = limit - len(buf)
            buf.extend(samples[start : start + room])
            start += room
            self._close(snapshot=False)
            self.opened_at = now
            buf = self._buf
        buf.extend(samples[start:] if start else samples)
        if event:
            self._event = True
            self._close(snapshot=False)

    def due(self) -> float | None:
        """When the open update must close (scheduling clock), if one is open."""
        times = [t for t in (self._age_due(), self._next_snapshot) if t is not None]
        return min(times) if times else None

    def _age_due(self) -> float | None:
        return None if self.opened_at is None else self.opened_at + self.cfg.max_age

    def tick(self, now: float, snapshot: Callable[[], list[Sample]]) -> None:
        due = self._age_due()
        if due is not None and now >= due:
            self._close(snapshot=False)
        if self.cfg.snapshot_interval:
            if self._next_snapshot is None:
                self._next_snapshot = now + self.cfg.snapshot_interval
            elif now >= self._next_snapshot:
                self._next_snapshot = now + self.cfg.snapshot_interval
                self.write_snapshot(snapshot())

    def write_snapshot(self, samples: list[Sample], *, event: bool = False) -> None:
        """Close the open update, then write ``samples`` as snapshot update(s) (``event``: sent
        with event priority, e.g. a snapshot a remote command asked for)."""
        self.flush()
        for i in range(0, len(samples), self._limit):
            self._emit(samples[i : i + self._limit], snapshot=True, event=event)

    def write_capture(self, samples: list[Sample], trigger: str, t_ms: int) -> None:
        """Write a triggered capture as event update(s) of its own, each marked with the
        trigger's name and firing time; the open update stays open."""
        for i in range(0, len(samples), self._limit):
            self._emit(
                samples[i : i + self._limit], snapshot=False, event=True, trigger=(trigger, t_ms)
            )

    def flush(self) -> None:
        if self._buf:
            self._close(snapshot=False)

    def _close(self, *, snapshot: bool) -> None:
        buf, event = self._buf, self._event
        self._buf, self._event, self.opened_at = [], False, None
        if buf:
            self._emit(buf, snapshot=snapshot, event=event)

    def _emit(
        self,
        samples: list[Sample],
        *,
        snapshot: bool,
        event: bool,
        trigger: tuple[str, int] | None = None,
    ) -> None:
        if not samples:
            return
        self.seq += 1
        payload = encode_update(
            self.schema,
            boot=self.boot,
            seq=self.seq,
            vin=self.vin,
            samples=samples,
            snapshot=snapshot,
            event=event,
            compress=self.cfg.compress,
            kinds=self._kinds,
            trigger=trigger,
        )
        self.samples_out += len(samples)
        self.bytes_out += len(payload)
        newest = max(map(_TIME, samples))
        self.sink(Update(self.seq, payload, len(samples), event, snapshot, newest / 1000))
