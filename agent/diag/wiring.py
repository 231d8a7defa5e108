"""Diagnostics in the running agent: one poller per ``[[diagnostics]]`` section, its readings
handed to the pipeline, its state in the status, DTC reads on command.

The pollers' threads never touch the pipeline's state: readings wait in one bounded queue
(``queue`` readings per section; beyond, the oldest are dropped and counted) and the pipeline's
thread takes them at its next turn, looks up each signal's id under the schema in force (a
signal whose consent was revoked by a reload is no longer there: its readings are skipped and
counted) and writes them like any sample (DTCs as events, sent at once). A poller asks
nothing while the lifecycle (agent.lifecycle) is not ``driving`` or its bus is not up. It does
not poll (agent.diag.poller) nor decide the schema (agent.diag.signals, agent.catalog).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Protocol

from agent.config import Config
from agent.control.power import DRIVING
from agent.diag.poller import DiagPoller, Reading
from agent.diag.settings import DiagnosticsConfig
from agent.diag.signals import DTC_CATEGORY, PID_CATEGORY


class PipelineLike(Protocol):
    catalog: Any
    sources: Any

    def call_soon(self, fn: Any) -> None: ...
    def write_samples(self, samples: list[tuple[int, int, int | float]], event: bool) -> None: ...


class Diagnostics:
    def __init__(self, cfg: Config, pipeline: PipelineLike, power: Any = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.power = power
        self._queue: collections.deque[Reading] = collections.deque(
            maxlen=sum(d.queue for d in cfg.diagnostics)
        )
        self._lock = threading.Lock()
        self._scheduled = False
        self.dropped = 0
        self.skipped = 0
        names = [b.name for b in cfg.bus]
        prefix = len(cfg.diagnostics) > 1
        granted = None if cfg.consent is None else set(cfg.consent.granted)
        self.pollers = [
            DiagPoller(
                _consented(d, granted),
                cfg.bus[names.index(d.bus)],
                prefix=f"{d.bus}/" if prefix else "",
                emit=self._emit,
                gate=self._gate_of(names.index(d.bus)),
            )
            for d in cfg.diagnostics
        ]

    def start(self) -> None:
        for p in self.pollers:
            p.start()

    def stop(self, timeout: float = 5.0) -> None:
        for p in self.pollers:
            p.stop(timeout)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {p.bus_cfg.name: p.status() for p in self.pollers}
        for p in self.pollers:
            doc[p.bus_cfg.name]["dropped"] = self.dropped
        if self.skipped:
            doc["skipped"] = self.skipped
        return doc

    def dtc_consent(self) -> bool:
        consent = self.cfg.consent
        return consent is None or DTC_CATEGORY in consent.granted

    def read_dtcs(self, timeout: float) -> dict[str, Any]:
        """Every DTC list of every bus now: bus -> ECU -> list -> codes, or bus -> why not."""
        return {p.bus_cfg.name: p.read_dtcs_now(timeout) for p in self.pollers}

    # -- the pollers' side -----------------------------------------------------------------
    def _gate_of(self, index: int) -> Any:
        def gate() -> str | None:
            power = self.power
            if power is not None and power.machine.state != DRIVING:
                return str(power.machine.state)
            state = self.pipeline.sources[index].state()
            if state not in ("up", "silent"):
                return f"bus {state}"
            return None

        return gate

    def _emit(self, readings: list[Reading]) -> None:
        with self._lock:
            for r in readings:
                if len(self._queue) == self._queue.maxlen:
                    self.dropped += 1
                self._queue.append(r)
            if self._scheduled:
                return
            self._scheduled = True
        self.pipeline.call_soon(self._drain)

    # -- the pipeline's thread -------------------------------------------------------------
    def _drain(self) -> None:
        with self._lock:
            readings = list(self._queue)
            self._queue.clear()
            self._scheduled = False
        ids = self.pipeline.catalog.diag_ids
        for event in (False, True):
            samples: list[tuple[int, int, int | float]] = []
            for r in readings:
                if r.event != event:
                    continue
                sid = ids.get(r.name)
                if sid is None:
                    self.skipped += 1
                    continue
                samples.append((r.t_ms, sid, r.raw))
            if samples:
                self.pipeline.write_samples(samples, event)


def _consented(d: DiagnosticsConfig, granted: set[str] | None) -> DiagnosticsConfig:
    """What the owner's consent lets a section ask: no PIDs without vehicle_health, no DTCs
    without diagnostics (nothing is asked whose answer could not be sent)."""
    if granted is None:
        return d
    update: dict[str, Any] = {}
    if PID_CATEGORY not in granted:
        update.update(obd_pids={}, obd_names={})
    if DTC_CATEGORY not in granted:
        update.update(obd_dtcs=False, uds_ecus=[])
    return d.model_copy(update=update) if update else d
