"""The questions diagnostics ask, over one ISO-TP link: OBD-II discovery, PIDs and DTC lists
(functional addressing: every ECU may answer) and UDS DTC reads (one ECU each).

Answers are collected until every ECU expected to answer has, or the timeout passed; a
"response pending" (0x78) gives that ECU up to ``pending_timeout`` more. Every outcome is
counted in ``DiagCounters``: answers, negative responses, pending, ECUs that stayed silent
(timeouts), malformed answers. Bus errors (agent.diag.link.LinkError) go to the caller.

Each request is sent only while ``Asking`` (the owner's consent as diagnostics see it) allows
its category, checked under the lock a consent change takes: once a revocation returned, no
request of that category leaves (NotAllowed goes to the caller instead). It does not schedule
(agent.diag.schedule) nor keep DTC state (agent.diag.poller).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from agent.diag.link import Transport
from agent.diag.obd import (
    DTC_MODES,
    RESPONSE_PENDING,
    SUPPORT_PIDS,
    ObdError,
    mode01_request,
    negative,
    parse_dtcs,
    parse_mode01,
    supported,
)
from agent.diag.settings import DiagnosticsConfig
from agent.diag.signals import DTC_CATEGORY, PID_CATEGORY
from agent.diag.uds import UdsCounters, UdsError, read_dtcs
from agent.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)


@dataclass
class DiagCounters:
    requests: int = 0
    answers: int = 0
    timeouts: int = 0  # an ECU expected to answer stayed silent
    negative: int = 0
    pending: int = 0
    malformed: int = 0
    bus_errors: int = 0
    dropped: int = 0  # readings the pipeline had no room for
    unsupported: list[str] = field(default_factory=list)  # configured PIDs no ECU supports


class NotAllowed(Exception):
    """The owner's consent does not (or no longer) cover a request's category."""


CATEGORIES = frozenset({PID_CATEGORY, DTC_CATEGORY})


class Asking:
    """The consent categories diagnostics may ask now, shared by the pollers' threads and the
    consent changes. A revocation counts from when it is decided (``decided``, before the
    change is acknowledged); a grant from when the schema with its signals is in force
    (``in_force``), so that the first readings have a signal to go to. ``on_change`` is called
    after every change (it wakes the pollers)."""

    def __init__(self, granted: frozenset[str]) -> None:
        self._lock = threading.Lock()
        self._latest = self._allowed = granted & CATEGORIES
        self.on_change: Callable[[], None] | None = None

    @staticmethod
    def of(granted: list[str] | None) -> frozenset[str]:
        """The categories a config's consent grants (no [consent] section: every one)."""
        return CATEGORIES if granted is None else frozenset(granted) & CATEGORIES

    def allows(self, category: str) -> bool:
        return category in self._allowed

    def decided(self, granted: frozenset[str]) -> None:
        """A consent change was decided: what it revokes is not asked from now on."""
        with self._lock:
            self._latest = granted & CATEGORIES
            self._allowed &= self._latest
        self._changed()

    def in_force(self, granted: frozenset[str]) -> None:
        """The schema of a consent is in force: what it grants (and the latest decision still
        grants) may be asked."""
        with self._lock:
            self._allowed = granted & self._latest
        self._changed()

    @contextmanager
    def sending(self, category: str) -> Iterator[None]:
        """Around a request's send: NotAllowed unless ``category`` is allowed; a consent change
        waits until the send is done."""
        with self._lock:
            if category not in self._allowed:
                raise NotAllowed(f"the owner has not granted {category}")
            yield

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class DiagClient:
    def __init__(
        self, link: Transport, cfg: DiagnosticsConfig, counters: DiagCounters, asking: Asking
    ) -> None:
        self.link = link
        self.cfg = cfg
        self.counters = counters
        self.asking = asking
        self.uds = UdsCounters()
        self.name = cfg.bus

    def ask(self, payload: bytes, expected: set[int] | None, category: str) -> dict[int, bytes]:
        """A functional request (sent only while ``category`` is allowed); ECU answer id ->
        positive answer. ``expected`` None: wait the whole timeout for whoever answers
        (discovery)."""
        mode = payload[0]
        self.link.discard()
        with self.asking.sending(category):
            self.link.send_functional(payload)
        self.counters.requests += 1
        clock = self.link.clock
        deadline = {e: clock() + self.cfg.timeout for e in expected or ()}
        until = clock() + self.cfg.timeout
        out: dict[int, bytes] = {}
        while True:
            waiting = [t for e, t in deadline.items() if e not in out]
            if expected is not None and not waiting:
                break
            end = max(waiting) if expected is not None else until
            got = self.link.poll(end - clock())
            if got is None:
                break
            ecu, answer = got
            nrc = negative(answer, mode)
            if nrc == RESPONSE_PENDING:
                self.counters.pending += 1
                deadline[ecu] = clock() + self.cfg.pending_timeout
                until = max(until, deadline[ecu])
                continue
            if nrc is not None:
                self.counters.negative += 1
                rlog.log(
                    logging.INFO,
                    ("nrc", self.name, ecu, mode, nrc),
                    "diagnostics %s: ECU %X refuses mode %02X (NRC 0x%02X)",
                    self.name,
                    ecu,
                    mode,
                    nrc,
                )
                deadline.pop(ecu, None)
                continue
            if answer[:1] != bytes([mode + 0x40]):
                self.counters.malformed += 1
                continue
            self.counters.answers += 1
            out[ecu] = answer
        silent = [e for e in deadline if e not in out]
        if silent:
            self.counters.timeouts += len(silent)
            rlog.warning(
                ("silent", self.name, tuple(silent)),
                "diagnostics %s: no answer to %s from ECU %s",
                self.name,
                payload.hex(),
                ", ".join(f"{e:X}" for e in silent),
            )
        return out

    def discover(self, wanted: set[int], category: str) -> dict[int, set[int]]:
        """ECU answer id -> supported mode 01 PIDs, from the bitmaps 0x00, 0x20, ... as far as
        ``wanted`` reaches and each ECU says the next bitmap exists; asked for ``category``
        (the PIDs, or the ECUs to read OBD DTCs from)."""
        found: dict[int, set[int]] = {}
        asking: set[int] | None = None  # the first question goes to whoever answers
        top = max(wanted, default=0)
        for base in SUPPORT_PIDS:
            if base > top:
                break
            answers = self.ask(mode01_request([base]), asking, category)
            nxt: set[int] = set()
            for ecu, answer in answers.items():
                try:
                    values = parse_mode01(answer)
                except ObdError as err:
                    self._malformed(ecu, err)
                    continue
                pids = supported(base, values.get(base, 0))
                found.setdefault(ecu, set()).update(pids)
                if base + 0x20 in pids:
                    nxt.add(ecu)
            if not nxt:
                break
            asking = nxt
        return found

    def read_pids(self, pids: tuple[int, ...], expected: set[int]) -> dict[int, dict[int, int]]:
        """ECU -> PID -> raw value, for one request of at most six PIDs."""
        out: dict[int, dict[int, int]] = {}
        for ecu, answer in self.ask(mode01_request(pids), expected, PID_CATEGORY).items():
            try:
                out[ecu] = parse_mode01(answer)
            except ObdError as err:
                self._malformed(ecu, err)
        return out

    def read_obd_dtcs(self, expected: set[int]) -> dict[tuple[str, int], set[int]]:
        """(list name, ECU) -> DTCs (three-byte form) of modes 03, 07 and 0A."""
        out: dict[tuple[str, int], set[int]] = {}
        for mode, listname in DTC_MODES.items():
            for ecu, answer in self.ask(bytes([mode]), expected, DTC_CATEGORY).items():
                try:
                    out[(listname, ecu)] = {d << 8 for d in parse_dtcs(answer, mode)}
                except ObdError as err:
                    self._malformed(ecu, err)
        return out

    def read_uds_dtcs(self) -> dict[tuple[str, int], set[int]]:
        """("UDS", ECU) -> DTCs of each configured ECU that answered."""
        out: dict[tuple[str, int], set[int]] = {}
        for ecu in self.cfg.uds_ecus:
            if not self.asking.allows(DTC_CATEGORY):
                raise NotAllowed(f"the owner has not granted {DTC_CATEGORY}")
            self.counters.requests += 1
            before = self.uds.pending
            try:
                dtcs = read_dtcs(
                    self.link,
                    ecu.rx,
                    self.cfg.uds_status_mask,
                    timeout=self.cfg.timeout,
                    pending_timeout=self.cfg.pending_timeout,
                    counters=self.uds,
                    guard=lambda: self.asking.sending(DTC_CATEGORY),
                )
            except UdsError as err:
                setattr(self.counters, err.kind, getattr(self.counters, err.kind) + 1)
                rlog.warning(
                    ("uds", self.name, ecu.name, err.kind),
                    "diagnostics %s: UDS DTC read from %s failed: %s",
                    self.name,
                    ecu.name,
                    err,
                )
                continue
            finally:
                self.counters.pending += self.uds.pending - before
            self.counters.answers += 1
            out[("UDS", ecu.rx)] = set(dtcs)
        return out

    def _malformed(self, ecu: int, err: Exception) -> None:
        self.counters.malformed += 1
        rlog.warning(
            ("malformed", self.name, ecu), "diagnostics %s: ECU %X: %s", self.name, ecu, err
        )
