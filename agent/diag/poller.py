"""One bus's diagnostics in a thread of its own: discovery, the PID schedule, DTC reads.

At start (and whenever no ECU answered yet) it asks which PIDs each ECU supports and never asks
one that none supports. Then PIDs are read on their intervals and DTC lists every
``dtc_interval``, within the bus-load cap (agent.diag.schedule). Nothing is sent while
``gate`` names a reason (the car is parked, the bus is down), and only what the owner's consent
allows now (``asking``, agent.diag.client.Asking): PIDs with ``vehicle_health``, DTCs with
``diagnostics``; a category granted later is asked from then on (discovery first if it has not
covered it), one revoked is not asked again, and its DTC lists are forgotten (a grant after
reports every code present again, as at start). Readings go to ``emit`` (a
bounded hand-off into the pipeline, agent.diag.wiring): PID values as telemetry, DTCs as
events when they appear (``Set``) or go away (``Cleared``) between two reads of a list; a
failed read changes nothing. Bus errors close the ISO-TP link (kernel or user space, the same
interface: agent.diag.transport), which is reopened with backoff; every problem is counted and
logged at a limited rate, never raised. It does not build the schema (agent.diag.signals) nor
decide consent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import can

from agent.backoff import Backoff
from agent.config import BusConfig
from agent.diag.client import Asking, DiagClient, DiagCounters, NotAllowed
from agent.diag.link import LinkError, Transport
from agent.diag.schedule import LoadCap, Schedule, estimate_load
from agent.diag.settings import DiagnosticsConfig
from agent.diag.signals import CLEARED, DTC_CATEGORY, PID_CATEGORY, SET, dtc_name, pid_name
from agent.diag.transport import open_transport
from agent.ratelimit import RateLimitedLog
from agent.spime.dtc import dtc_code, dtc_raw, ecu_name

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

# With no ECU answering discovery, ask again after this long (then backing off).
REDISCOVER = (2.0, 60.0)


@dataclass(frozen=True)
class Reading:
    t_ms: int
    name: str
    raw: int
    event: bool


class DiagPoller:
    def __init__(
        self,
        cfg: DiagnosticsConfig,
        bus: BusConfig,
        *,
        prefix: str,
        emit: Callable[[list[Reading]], None],
        gate: Callable[[], str | None],
        asking: Asking,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.asking = asking
        self.bus_cfg = bus
        self.prefix = prefix
        self.emit = emit
        self.gate = gate
        self.clock = clock
        self.counters = DiagCounters()
        self.state = "starting"
        self.ecus: dict[int, set[int]] | None = None  # answer id -> supported PIDs
        self.pids_known = False  # discovery covered every configured PID
        self.owner: dict[int, int] = {}  # PID -> the ECU whose value is sent
        self.dtcs: dict[tuple[str, int], set[int]] = {}
        self.schedule = Schedule(cfg.pids(), cfg.dtc_interval, clock())
        self.cap = LoadCap(bus.bitrate or cfg.bitrate, cfg.max_bus_load, clock())
        self.names = {e.rx: e.name for e in cfg.uds_ecus}
        self.link: Transport | None = None
        # The transport of the link now open or last opened ("auto" before the first).
        self.isotp: str = cfg.isotp
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._asked: list[tuple[threading.Event, list[Any]]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"diag-{bus.name}", daemon=True)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Thread-safe: look at the consent and the schedule again now."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._close()

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"state": self.state, "isotp": self.isotp, **asdict(self.counters)}
        doc["ecus"] = sorted(ecu_name(e, self.names) for e in (self.ecus or {}))
        doc["load"] = round(self.cap.load(self.clock()), 5)
        doc["estimated_load"] = round(self.estimated_load(), 5)
        doc["max_load"] = self.cfg.max_bus_load
        if self.link is not None:
            doc["frames"] = self.link.stats.frames_sent + self.link.stats.frames_received
            doc["isotp_errors"] = self.link.stats.isotp_errors
        return doc

    def estimated_load(self) -> float:
        """The upper bound of the load asked for (agent.diag.schedule.estimate_load); the cap
        holds the real load under max_bus_load whatever this says."""
        dtcs = self.asking.allows(DTC_CATEGORY)
        return estimate_load(
            self.schedule.intervals if self.asking.allows(PID_CATEGORY) else {},
            self.cfg.dtc_interval if dtcs else 0.0,
            self.cap.bitrate,
            ecus=max(1, len(self.ecus or ())),
            uds_ecus=len(self.cfg.uds_ecus) if dtcs else 0,
            extended=self.cfg.addressing == "29bit",
        )

    def read_dtcs_now(self, timeout: float) -> dict[str, Any] | str:
        """From another thread: read every DTC list now; ECU -> list -> codes, or why not.
        PermissionError when the owner's consent does not allow it."""
        done = threading.Event()
        box: list[Any] = [None]
        with self._lock:
            self._asked.append((done, box))
        self._wake.set()
        if not done.wait(timeout):
            return f"no answer within {timeout:g} s ({self.state})"
        if isinstance(box[0], NotAllowed):
            raise PermissionError(str(box[0]))
        result: dict[str, Any] | str = box[0]
        return result

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff(self.bus_cfg.reopen_min, self.bus_cfg.reopen_max, clock=self.clock)
        while not self._stop.is_set():
            why = self.gate()
            if why is not None:
                self.state = f"paused: {why}"
                self._answer_asked(f"not reading: {why}")
                self._sleep(0.5)
                continue
            try:
                if self.link is None:
                    self._open()
                    backoff.succeeded()
                self._turn()
            except NotAllowed:
                continue  # consent was revoked during the turn: the next one follows it
            except (LinkError, can.CanError, OSError, ValueError) as err:
                self.counters.bus_errors += 1
                self.state = f"down: {err}"
                rlog.warning(
                    ("bus", self.bus_cfg.name), "diagnostics %s: %s", self.bus_cfg.name, err
                )
                self._answer_asked(f"bus error: {err}")
                self._close()
                self._sleep(backoff.next_delay())

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()

    def _open(self) -> None:
        self.link = open_transport(self.cfg, self.bus_cfg, self.clock)
        self.isotp = self.link.kind

    def _close(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            link.close()

    def _turn(self) -> None:
        assert self.link is not None
        client = DiagClient(self.link, self.cfg, self.counters, self.asking)
        pids = self.asking.allows(PID_CATEGORY) and bool(self.schedule.intervals)
        dtcs = self.asking.allows(DTC_CATEGORY)
        if not dtcs:
            self.dtcs.clear()
        if pids and not self.pids_known:
            self.state = "discovering"
            self._discover(client, PID_CATEGORY)
            return
        if dtcs and self.cfg.obd_dtcs and self.ecus is None:
            self.state = "discovering"
            self._discover(client, DTC_CATEGORY)
            return
        self.state = "running" if pids or dtcs else "not asking: no consent"
        if self._asked:
            try:
                if not dtcs:
                    raise NotAllowed(f"the owner has not granted {DTC_CATEGORY}")
                self._answer_asked(self._read_dtcs(client))
            except NotAllowed as err:
                self._answer_asked(err)
            self.schedule.dtc_read(self.clock())
            return
        now = self.clock()
        wait = self.cap.wait(now)
        if wait > 0:
            self._sleep(wait)
            return
        # PIDs first: a slow DTC read must not starve them.
        for due in self.schedule.due_pids(now) if pids else ():
            self._read_pids(client, due)
        if dtcs and self.schedule.dtc_due(self.clock()) and self.cap.wait(self.clock()) == 0:
            self._read_dtcs(client)
            self.schedule.dtc_read(self.clock())
        nxt = self.schedule.next_due(pids=pids, dtcs=dtcs)
        self._sleep(1.0 if nxt is None else nxt - self.clock())

    def _charged(self, fn: Callable[[], Any]) -> Any:
        assert self.link is not None
        before = self.link.stats.bits
        try:
            return fn()
        finally:
            self.cap.charge(self.link.stats.bits - before, self.clock())

    def _discover(self, client: DiagClient, category: str) -> None:
        """Which ECUs answer and which PIDs they support, for ``category``: the configured
        PIDs' bitmaps (PID_CATEGORY), or only the ECUs to read OBD DTCs from."""
        assert self.link is not None
        missed = self.link.stats.missed_ecus
        wanted = set(self.schedule.intervals) if category == PID_CATEGORY else set()
        found = self._charged(lambda: client.discover(wanted, category))
        if self.link.stats.missed_ecus > missed:
            # ECUs answered that the link heard only from then on: ask them all again now.
            return
        if not found:
            self.state = "no ECU answers"
            self._answer_asked("no ECU answers")
            self._sleep(REDISCOVER[0])
            return
        self.ecus = found
        self.owner = {}
        for ecu in sorted(found):
            for pid in found[ecu]:
                self.owner.setdefault(pid, ecu)
        if category != PID_CATEGORY:
            log.info(
                "diagnostics %s: ECUs %s answer",
                self.bus_cfg.name,
                ", ".join(f"{e:X}" for e in sorted(found)),
            )
            return
        self.pids_known = True
        dropped = self.schedule.restrict(self.owner)
        self.counters.unsupported = [f"{p:02X}" for p in dropped]
        log.info(
            "diagnostics %s: ECUs %s answer; PIDs %s supported%s; added bus load at most "
            "%.3f %% (capped at %.3g %%)",
            self.bus_cfg.name,
            ", ".join(f"{e:X}" for e in sorted(found)),
            ", ".join(f"{p:02X}" for p in sorted(self.schedule.intervals)) or "none asked",
            f", {', '.join(self.counters.unsupported)} not (never asked)" if dropped else "",
            100 * self.estimated_load(),
            100 * self.cfg.max_bus_load,
        )

    def _read_pids(self, client: DiagClient, pids: tuple[int, ...]) -> None:
        expected = {self.owner[p] for p in pids}
        answers = self._charged(lambda: client.read_pids(pids, expected))
        t_ms = int(time.time() * 1000)
        out = [
            Reading(t_ms, pid_name(self.cfg, pid, self.prefix), raw, False)
            for ecu, values in answers.items()
            for pid, raw in values.items()
            if pid in pids and self.owner.get(pid) == ecu
        ]
        if out:
            self.emit(out)

    def _read_dtcs(self, client: DiagClient) -> dict[str, Any]:
        lists: dict[tuple[str, int], set[int]] = {}
        if self.cfg.obd_dtcs and self.ecus:
            lists.update(self._charged(lambda: client.read_obd_dtcs(set(self.ecus or ()))))
        if self.cfg.uds_ecus:
            lists.update(self._charged(client.read_uds_dtcs))
        t_ms = int(time.time() * 1000)
        out: list[Reading] = []
        doc: dict[str, Any] = {}
        for (listname, ecu), now_set in sorted(lists.items()):
            before = self.dtcs.get((listname, ecu), set())
            self.dtcs[(listname, ecu)] = now_set
            for state, dtcs in ((SET, now_set - before), (CLEARED, before - now_set)):
                name = dtc_name(listname, state, self.prefix)
                out.extend(Reading(t_ms, name, dtc_raw(ecu, d), True) for d in sorted(dtcs))
            codes = sorted(dtc_code(d) for d in now_set)
            doc.setdefault(ecu_name(ecu, self.names), {})[listname.lower()] = codes
        if out:
            self.emit(out)
        return doc

    def _answer_asked(self, result: Any) -> None:
        with self._lock:
            asked, self._asked = self._asked, []
        for done, box in asked:
            box[0] = result
            done.set()
