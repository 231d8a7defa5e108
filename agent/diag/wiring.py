"""Diagnostics in the running agent: one poller per ``[[diagnostics]]`` section, its readings
handed to the pipeline, its state in the status, DTC reads on command.

The pollers' threads never touch the pipeline's state: readings wait in one feed (agent.feed:
``queue`` readings per section; beyond, the oldest are dropped and counted), which wakes the
pipeline; its thread takes them at its next turn (``poll``, an input of the pipeline), looks
up each signal's id under the schema in force (a signal whose consent was revoked by a reload
is no longer there: its readings are skipped and counted) and writes them like any sample
(DTCs as events, sent at once). A poller asks nothing while the lifecycle (agent.lifecycle)
is not ``driving`` or its bus is not up.

Consent follows the config in force without a restart (``Asking``): a revocation stops the
requests of its category as soon as the daemon decided it (``consent_decided``, before the
change is acknowledged); a grant starts them when the pipeline's schema has the category's
signals (``poll``), so no first reading (a DTC that is set) is skipped. It does not poll
(agent.diag.poller) nor decide the schema (agent.diag.signals, agent.catalog).
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.config import Config
from agent.control.power import DRIVING
from agent.diag.client import Asking
from agent.diag.poller import DiagPoller, Reading
from agent.diag.signals import DTC_CATEGORY
from agent.diag.transport import check_kernel
from agent.feed import Feed


class PipelineLike(Protocol):
    cfg: Config
    catalog: Any
    sources: Any

    def wake(self) -> None: ...
    def write_samples(self, samples: list[tuple[int, int, int | float]], event: bool) -> None: ...


class Diagnostics:
    def __init__(self, cfg: Config, pipeline: PipelineLike, power: Any = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.power = power
        self.readings: Feed[Reading] = Feed(
            sum(d.queue for d in cfg.diagnostics), wake=pipeline.wake
        )
        self.skipped = 0
        names = [b.name for b in cfg.bus]
        prefix = len(cfg.diagnostics) > 1
        self.asking = Asking(_granted(cfg))
        self._catalog = pipeline.catalog  # the catalog whose consent ``asking`` follows
        for d in cfg.diagnostics:
            check_kernel(d, cfg.bus[names.index(d.bus)])
        self.pollers = [
            DiagPoller(
                d,
                cfg.bus[names.index(d.bus)],
                prefix=f"{d.bus}/" if prefix else "",
                emit=self.readings.put,
                gate=self._gate_of(names.index(d.bus)),
                asking=self.asking,
            )
            for d in cfg.diagnostics
        ]
        self.asking.on_change = self._wake

    def start(self) -> None:
        for p in self.pollers:
            p.start()

    def stop(self, timeout: float = 5.0) -> None:
        for p in self.pollers:
            p.stop(timeout)

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {p.bus_cfg.name: p.status() for p in self.pollers}
        for p in self.pollers:
            doc[p.bus_cfg.name]["dropped"] = self.readings.dropped
        if self.skipped:
            doc["skipped"] = self.skipped
        return doc

    def read_dtcs(self, timeout: float) -> dict[str, Any]:
        """Every DTC list of every bus now: bus -> ECU -> list -> codes, or bus -> why not;
        PermissionError when the owner's consent does not allow DTC reads (now)."""
        if not self.asking.allows(DTC_CATEGORY):
            raise PermissionError(f"the owner has not granted {DTC_CATEGORY}")
        return {p.bus_cfg.name: p.read_dtcs_now(timeout) for p in self.pollers}

    def consent_decided(self, cfg: Config) -> None:
        """Any thread: the consent of ``cfg`` was decided (a reload or a remote change, about
        to be acknowledged): what it revokes is not asked from now on; what it grants is asked
        once the pipeline runs its schema."""
        self.asking.decided(_granted(cfg))

    # -- an input of the pipeline (agent.pipeline.Input), in its thread ------------------------
    def poll(self) -> None:
        catalog = self.pipeline.catalog
        if catalog is not self._catalog:
            self._catalog = catalog
            self.asking.in_force(_granted(self.pipeline.cfg))
        readings = self.readings.take()
        if readings:
            self._write(readings)

    def close(self) -> None:
        """End of input: what was read goes into the last updates (the pollers are stopped by
        their owner, agent.daemon, after the pipeline)."""
        self.poll()

    def _wake(self) -> None:
        for p in self.pollers:
            p.wake()

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

    # -- the pipeline's thread -------------------------------------------------------------
    def _write(self, readings: list[Reading]) -> None:
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


def _granted(cfg: Config) -> frozenset[str]:
    return Asking.of(None if cfg.consent is None else list(cfg.consent.granted))
