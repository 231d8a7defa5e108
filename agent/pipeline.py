"""The data path: frames from the sources -> decoded values -> samples -> updates.

Runs in the calling thread. Each frame is looked up by its (masked) id; frames of unselected
messages are counted and skipped; a frame whose payload equals the previous payload of the same
id is not decoded again; everything else is decoded once (raw values, no scaling), and each
selected signal's value goes through its sampling policy. Problems of single frames (payloads
cantools cannot decode, short frames, error frames) become counters and rate-limited log lines.

Scheduling (rate limits, heartbeats, batch age, snapshots) runs on a monotonic clock: the
system's for live buses, and the recording's own time when every bus is a replay, so a replay
at any speed yields the same updates as the drive did. Samples are always stamped with the
frames' own timestamps. It does not store or send updates: a sink receives them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agent import pipeline_run
from agent.can_source import Source
from agent.canlog import Row
from agent.canposition import CanPositions
from agent.catalog import EXTENDED, Catalog, PowerRead
from agent.config import Config
from agent.decode import DecodeError
from agent.inline import Inbox
from agent.pipeline_plan import Plan, plans
from agent.pipeline_requests import Requests
from agent.policy.trigger import Capture, TriggerEngine
from agent.ratelimit import RateLimitedLog
from agent.sampling import Sampler, SignalState
from agent.sources import zones
from agent.sources.live import BATCH, IDLE_RECV, IDLE_RECV_PARKED
from agent.updates import Sink, UpdateBuilder

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

# SocketCAN error frame class bit for bus-off (linux/can/error.h CAN_ERR_BUSOFF).
_CAN_ERR_BUSOFF = 0x40


class Input(Protocol):
    """A source other than the buses (agent.gnss_wiring, agent.diag.wiring): polled in the
    pipeline's thread at every turn, at least once a second while running (it may offer values
    to ``sampler`` or write samples), closed when the input ends. Its own threads hand values
    over through an agent.feed.Feed, which wakes the loop (``wake``)."""

    def poll(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class PipelineStats:
    frames: int = 0
    unselected: int = 0
    unchanged: int = 0
    decoded: int = 0
    decode_errors: int = 0
    short_frames: int = 0
    error_frames: int = 0
    bus_off: int = 0
    remote_frames: int = 0
    source_errors: list[str] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        catalog: Catalog,
        *,
        boot: bytes,
        sink: Sink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.boot = boot
        self.sink = sink
        self.clock = clock
        self.stats = PipelineStats()
        # Kept across reloads: where the car was is still where it is.
        self.positions = CanPositions()
        self.frame_clock = cfg.all_replay
        self.stop_event = threading.Event()
        # Bounded in batches of at most BATCH frames: so at most the sum of the buses'
        # queue_frames frames wait here. Live SocketCAN buses are read in this thread
        # (agent.inline): their readers are lent to the inbox's wait.
        inline = [not b.is_replay and b.interface == "socketcan" for b in cfg.bus]
        self.inbox = Inbox(
            sum(max(1, b.queue_frames // BATCH) for b in cfg.bus), inline=any(inline), clock=clock
        )
        self.queue: queue.Queue[tuple[int, Any]] = self.inbox.queue
        self._load(cfg, catalog, seq=0)
        self.sources = [
            Source(
                i,
                bp.config,
                self.queue,
                self.stop_event,
                can_filters=bp.can_filters,
                messages=bp.messages,
            )
            for i, bp in enumerate(catalog.buses)
        ]
        for src, lends in zip(self.sources, inline, strict=True):
            if lends:
                src.lender = self.inbox.lender
        self.now = 0.0
        self._due = 0.0
        # Reloads, snapshots and calls other threads hand to this one (agent.pipeline_requests).
        self.requests = Requests(self.wake)
        # Called once per loop turn (the daemon pings systemd's watchdog from here).
        self.on_loop: Callable[[], None] | None = None
        # The lifecycle's inputs: a [power] signal's value (read, physical value, frame time
        # in ms) and the arrival of frames on a bus (its index), on the system's monotonic
        # clock in ``last_frame``.
        self.on_power: Callable[[PowerRead, float, int], None] | None = None
        self.on_activity: Callable[[int], None] | None = None
        self.last_frame: list[float | None] = [None] * len(catalog.buses)
        # While parked: the loop blocks until a frame arrives or this long passes.
        self.idle_timeout: float | None = None
        # systemd's watchdog interval when there is one: parked, the loop still turns this often.
        self.watchdog_every: float | None = None
        self.inputs: list[Input] = []

    def _load(self, cfg: Config, catalog: Catalog, *, seq: int) -> None:
        """Build the runtime state for a catalog; update numbering continues at ``seq``."""
        self.cfg = cfg
        self.catalog = catalog
        self.sampler = Sampler()
        self.builder = UpdateBuilder(
            catalog.schema, vin=cfg.vehicle.vin, boot=self.boot, cfg=cfg.updates, sink=self.sink
        )
        self.builder.seq = seq
        self.states: list[SignalState] = []
        self._plans: list[dict[int, Plan]] = []
        self._masks: list[int | None] = []
        self.triggers: TriggerEngine | None = None
        captured: set[int] = set()
        if catalog.triggers:
            self.triggers = TriggerEngine(
                catalog.triggers,
                [r.name for r in catalog.reads],
                ring_samples=cfg.capture.ring_samples,
                window_samples=cfg.capture.window_samples,
            )
            captured = {sid for spec in catalog.triggers for sid in spec.capture}
        for bp in catalog.buses:
            self._plans.append(
                plans(cfg, catalog, bp, self.triggers is not None, captured, self.states)
            )
            self._masks.append(bp.config.id_mask)
        gnss_state = catalog.location.state_sid if catalog.location is not None else None
        pos = catalog.position
        self.positions.load(
            pos,
            zones(cfg.privacy),
            [p for plans in self._plans for p in plans.values()],
            self.states,
            own_state=pos is not None and pos.state_sid != gnss_state,
            trip_end_radius=cfg.privacy.trip_end_radius,
            # With [power] the lifecycle's park and wake end trips (``end_trip``).
            trip_gap=None if cfg.power is not None else cfg.privacy.trip_gap,
        )
        self.states.sort(key=lambda s: s.sid)

    def request_reload(self, cfg: Config, catalog: Catalog) -> None:
        """Thread-safe: switch to a new signal selection (same buses) between two batches.

        What was sampled under the old selection is sent first, as updates of the old schema;
        sources stay open (only their kernel filters change), so no frame is missed.
        """
        if [b.config.name for b in catalog.buses] != [s.cfg.name for s in self.sources]:
            raise ValueError("a reload cannot add, remove or reorder buses")
        self.requests.request_reload(cfg, catalog)

    def wait_reloaded(self, timeout: float) -> bool:
        """Wait until every reload requested so far has been applied, the update open under
        the old selection included (True), or ``timeout`` passed."""
        return self.requests.wait_reloaded(timeout)

    def _apply_reload(self) -> None:
        pending, applied = self.requests.take_reload()
        if pending is None:
            return
        cfg, catalog = pending
        if self.positions.zones_change(zones(cfg.privacy)):
            # What is held was judged under the old zones: it may lie in a new one.
            self.positions.drop_held()
            if self.triggers is not None and self.catalog.position is not None:
                self.triggers.forget(self.catalog.position.private)
        self.finish()
        self._load(cfg, catalog, seq=self.builder.seq)
        # Where the car stands under the new zones, in the new schema's state signal.
        self.positions.report(self.data_time_ms(), self.now, self.sampler)
        for src, bp in zip(self.sources, catalog.buses, strict=True):
            src.set_filters(bp.can_filters, bp.messages)
        self._reschedule()
        # The inputs follow the new selection (a grant starts diagnostics) before the
        # requester learns that it is applied, not at the loop's next turn.
        self._poll_inputs()
        self.requests.reloaded(applied)
        log.info(
            "reloaded: %d signals selected (schema %s)", len(catalog.selected), catalog.schema.id
        )

    def request_snapshot(self, timeout: float) -> int | None:
        """Thread-safe: write every signal's current value now as a snapshot update marked as
        an event; the number of samples written, or None if the loop did not turn in time."""
        return self.requests.request_snapshot(timeout)

    def _write_snapshots(self) -> None:
        pending = self.requests.take_snapshots()
        samples = Sampler.snapshot(self.states)
        self.builder.write_snapshot(samples, event=True)
        for done, written in pending:
            written[0] = len(samples)
            done.set()

    def stop(self) -> None:
        """Ask the pipeline to finish: sources stop, held values are flushed."""
        self.stop_event.set()
        self.wake()  # a loop blocked while parked sees it at once

    def wake(self) -> None:
        """Thread-safe: a loop blocked waiting for frames (parked, or on a quiet bus) turns now
        (a full queue means it turns anyway)."""
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait((-1, None))

    def set_idle(self, timeout: float | None) -> None:
        """Parked (``timeout``: the longest block of the loop) or running (None): while parked
        the loop blocks until a frame arrives (or ``timeout``) instead of turning at its running
        deadlines, and the readers on threads of their own read with longer timeouts; frames
        are still read and processed as they come."""
        if timeout is not None and self.watchdog_every is not None:
            timeout = min(timeout, self.watchdog_every)  # the loop's turns feed the watchdog
        self.idle_timeout = timeout
        for src in self.sources:
            src.idle_recv = IDLE_RECV if timeout is None else min(timeout, IDLE_RECV_PARKED)
        # A loop blocked for the parked timeout must take up the running one now: an update
        # opened by the wake's first frames is due long before the parked timeout ends.
        self.wake()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Thread-safe: run ``fn`` in the pipeline's thread at its next turn (the builder and
        the sampler belong to that thread): work, such as the lifecycle's commit; values come
        through inputs (``Input``). At most 64 wait; the oldest is dropped beyond."""
        self.requests.call_soon(fn)

    def commit(self) -> None:
        """In the pipeline's thread: send what is held and close the open update."""
        self.sampler.flush_held(self.now)
        self._collect()
        self.builder.flush()

    def end_trip(self, why: str) -> None:
        """In the pipeline's thread: the CAN position's trip ended (park, wake, end of input):
        the location values held near its end are dropped."""
        self.positions.end_trip(why)
        if self.positions.released:
            self._released(self.now)
            self._collect()

    def data_time_ms(self) -> int:
        """Now on the data's clock: a replay's recording time (its latest frame), else wall
        time."""
        return int((self.now if self.frame_clock else time.time()) * 1000)

    def write_power_state(self, value: int, t_ms: int) -> None:
        """In the pipeline's thread: the lifecycle's state as an event sample, sent at once
        (under the schema in force, whose catalog names the signal's id)."""
        sid = self.catalog.power_sid
        if sid is None:
            return
        self._collect()
        self.builder.add([(t_ms, sid, value)], True, self.now)
        self.builder.flush()

    def write_samples(self, samples: list[tuple[int, int, int | float]], event: bool) -> None:
        """In the pipeline's thread: samples of an input (diagnostics), ids of the schema in
        force; events are sent at once."""
        self._collect()
        self.builder.add(samples, event, self.now)
        if event:
            self.builder.flush()
        due = self.builder.due()
        if due is not None and due < self._due:
            self._due = due

    def run(self) -> None:
        """Process frames until every source ended (replays) or stop() was called
        (agent.pipeline_run), then send what is held."""
        if self.frame_clock:
            pipeline_run.replays(self)
        else:
            pipeline_run.live(self)
        for inp in self.inputs:
            inp.close()
        self.end_trip("end of input")
        self.finish()
        self.requests.end_calls()

    def _turn(self, index: int, batch: list[Row]) -> None:
        """One turn of the loop: process a batch, then timers, reloads, the watchdog."""
        if batch:
            self.last_frame[index] = time.monotonic()
            if self.on_activity is not None:
                self.on_activity(index)
            self._process(index, batch)
        if self.inputs:
            self._poll_inputs()
        requests = self.requests
        if requests.calls:
            requests.run_calls()
        if self.now >= self._due:
            self._tick()
        if requests.reload is not None:
            self._apply_reload()
        if requests.snapshots:
            self._write_snapshots()
        if self.on_loop is not None:
            self.on_loop()

    def _poll_inputs(self) -> None:
        for inp in self.inputs:
            inp.poll()
        if self.sampler.out:
            self._collect()

    def finish(self) -> None:
        """Send what is held and close the open update (end of input or shutdown); open
        capture windows close with what they hold."""
        self.sampler.flush_held(self.now)
        self._collect()
        if self.triggers is not None:
            self._write_captures(self.triggers.close_all())
        self.builder.flush()

    def _write_captures(self, captures: list[Capture]) -> None:
        for cap in captures:
            if cap.samples:
                self.builder.write_capture(cap.samples, cap.trigger, cap.t_ms)

    def _tap(
        self,
        taps: dict[str, tuple[tuple[int, ...], float, float, int]],
        changed: Any,
        t_ms: int,
        now: float,
    ) -> None:
        """Hand a frame's changed values to the trigger engine and evaluate what they touch."""
        engine = self.triggers
        assert engine is not None
        for name, raw in changed:
            tap = taps.get(name)
            if tap is None:
                continue
            slots, scale, offset, sid = tap
            if sid >= 0:
                engine.record(sid, t_ms, raw)
            for slot in slots:
                engine.set_value(slot, raw * scale + offset)
        engine.evaluate(t_ms, now)
        if engine.open:
            # A window opened: its scheduling deadline may be the next thing due.
            deadline = engine.next_deadline()
            if deadline is not None and deadline < self._due:
                self._due = deadline

    def _collect(self) -> None:
        samples, event = self.sampler.take()
        if samples:
            self.builder.add(samples, event, self.now)
            # The samples may have opened an update: its age limit is a new deadline.
            due = self.builder.due()
            if due is not None and due < self._due:
                self._due = due

    def _tick(self) -> None:
        self.positions.tick(self.now)
        if self.positions.released:
            self._released(self.now)
        self.sampler.tick(self.now)
        self._collect()
        if self.triggers is not None and self.triggers.open:
            self._write_captures(self.triggers.close(None, self.now))
        self.builder.tick(self.now, lambda: Sampler.snapshot(self.states))
        self._reschedule()

    def _reschedule(self) -> None:
        dues = [d for d in (self.sampler.next_due(), self.builder.due()) if d is not None]
        if self.triggers is not None and self.triggers.open:
            dues.append(self.triggers.next_deadline() or self.now)
        # With nothing scheduled, look again soon: the snapshot timer arms on the first tick.
        self._due = min(dues) if dues else self.now + 0.5

    def _process(self, index: int, rows: list[Row]) -> None:
        plans = self._plans[index]
        mask = self._masks[index]
        stats = self.stats
        sampler, builder = self.sampler, self.builder
        offer_changed = sampler.offer_changed
        frame_clock = self.frame_clock
        triggers = self.triggers
        now = self.now
        stats.frames += len(rows)
        for ts, arbitration_id, extended, remote, error, data in rows:
            if error:
                self._error_frame(index, arbitration_id)
                continue
            if remote:
                stats.remote_frames += 1
                continue
            key = arbitration_id if mask is None else arbitration_id & mask
            if extended:
                key |= EXTENDED
            plan = plans.get(key)
            if plan is None:
                stats.unselected += 1
                continue
            t_ms = int(ts * 1000)
            if frame_clock and ts > now:
                now = self.now = ts
                if now >= self._due:
                    self._tick()
            plan.group.last_t = t_ms
            if triggers is not None and t_ms > triggers.next_end_ms:
                self._write_captures(triggers.close(t_ms, now))
            if data == plan.last:
                stats.unchanged += 1
                if plan.position:
                    self.positions.confirm(plan, t_ms, now)
                    if self.positions.released:
                        self._released(now)
                continue
            # A copy: the frame's bytearray belongs to python-can.
            data = plan.last = bytes(data)
            try:
                values = plan.decode(data)
            except DecodeError as err:
                stats.decode_errors += 1
                rlog.warning(
                    ("decode", index, key),
                    "bus %s: cannot decode %s (id 0x%x, %d bytes): %s",
                    self.sources[index].cfg.name,
                    plan.name,
                    arbitration_id,
                    len(data),
                    err,
                )
                continue
            stats.decoded += 1
            if len(data) < plan.length:
                stats.short_frames += 1
            # Only values that differ from this message's previous decode can change anything
            # in any policy (and a held value stays stamped with when it first appeared). A
            # membership test per item finds them (a key lookup, no hashing of the value): a
            # set difference of the two item views costs a third more, building two sets.
            previous = plan.values
            if previous:
                seen = previous.items()
                changed: Any = [item for item in values.items() if item not in seen]
            else:
                changed = values.items()
            if plan.private:
                changed = self.positions.filter(plan, values, changed, t_ms, now, sampler)
                if self.positions.released:
                    self._released(now)
            plan.values = values
            offer_changed(changed, plan.signals, t_ms, now)
            if plan.power and self.on_power is not None:
                for pr in plan.power:
                    raw = values.get(pr.signal)
                    if raw is not None:
                        self.on_power(pr, raw, t_ms)
            if plan.taps is not None:
                self._tap(plan.taps, changed, t_ms, now)
            # On the recording's clock a batch spans seconds: the first sample of a new update
            # must open it at its own frame, or the update's age limit would start too late.
            if frame_clock and builder.opened_at is None and sampler.out:
                self._collect()
        self._collect()

    def _released(self, now: float) -> None:
        """Location values that waited for the position after them, judged to pass: sampled
        (and recorded for triggers) with their own frames' times."""
        released, self.positions.released = self.positions.released, []
        for plan, items, t_ms in released:
            assert isinstance(plan, Plan)
            group = plan.private_group
            if t_ms > group.last_t:
                group.last_t = t_ms
            self.sampler.offer_changed(items, plan.signals, t_ms, now)
            if plan.taps is not None:
                self._tap(plan.taps, items, t_ms, now)

    def _error_frame(self, index: int, arbitration_id: int) -> None:
        self.stats.error_frames += 1
        name = self.sources[index].cfg.name
        if arbitration_id & _CAN_ERR_BUSOFF:
            self.stats.bus_off += 1
            rlog.warning(("busoff", index), "bus %s: controller reports bus-off", name)
        else:
            rlog.warning(
                ("errframe", index), "bus %s: error frame (class 0x%x)", name, arbitration_id
            )

    def trigger_status(self) -> dict[str, Any]:
        """Counters of the triggers in force, and the triggers not armed (with why)."""
        doc: dict[str, Any] = {"active": len(self.catalog.triggers)}
        if self.triggers is not None:
            doc.update(asdict(self.triggers.stats))
        if self.catalog.disabled:
            doc["disabled"] = dict(self.catalog.disabled)
        return doc

    def source_counters(self) -> dict[str, int]:
        """What the sources lost or skipped, summed over the buses: ``dropped_frames`` (every
        frame lost before decoding: a full queue, or a full kernel receive buffer), of those
        ``kernel_dropped``, and ``unreadable_lines`` (replayed log lines skipped)."""
        return {
            "dropped_frames": sum(s.status.dropped_frames for s in self.sources),
            "kernel_dropped": sum(s.status.kernel_dropped for s in self.sources),
            "unreadable_lines": sum(s.status.unreadable_lines for s in self.sources),
        }

    def source_states(self) -> dict[str, str]:
        return {s.cfg.name: s.state() for s in self.sources}
