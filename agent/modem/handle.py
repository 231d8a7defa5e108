"""One configured modem as the manager sees it: its port, its probe memory, its recovery.

``ModemHandle.check()`` opens the port if needed, probes, and when the modem does not answer (or
answers ``AT`` and then nothing useful) escalates step by step, each step rate limited: reopen
the port, repeated ``AT`` (every probe tries several), then ``AT+CFUN=1,1``. A port that is gone
(USB re-enumeration) is looked for again among candidate paths and recognised by its ICCID. It
never decides which modem is active. ``ask`` runs a caller's command (a GNSS position query)
on the open port between checks: one lock serializes it with the checks, so the port is never
opened twice nor two commands interleaved.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from agent.config import ModemConfig
from agent.modem.probe import PinLedger, ProbeMemory, probe, read_iccid, responds
from agent.modem.report import ModemBusy, ModemError, ModemReport, PortGone
from agent.modem.transport import AtResponse, AtTransport
from agent.ratelimit import Interval

log = logging.getLogger(__name__)

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Recovery:
    """Rate limits of the escalation steps, in seconds (and the failures before a reset)."""

    reopen_interval: float = 30.0
    reset_after: int = 3
    reset_interval: float = 900.0
    rescan_interval: float = 30.0


def expand(patterns: Iterable[str]) -> list[str]:
    """Paths matching the patterns (a plain path is kept only if it exists), deduplicated by
    the device they lead to (by-id and by-path names of one port count once)."""
    seen: set[str] = set()
    out: list[str] = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern)) if any(c in pattern for c in _GLOB_CHARS) else [pattern]
        for p in paths:
            if not os.path.exists(p):
                continue
            real = os.path.realpath(p)
            if real not in seen:
                seen.add(real)
                out.append(p)
    return out


class ModemHandle:
    """Owned by the manager thread; ``check`` may run in a worker, never two at once; ``ask``
    from any thread."""

    def __init__(
        self,
        cfg: ModemConfig,
        *,
        command_timeout: float,
        home_networks: Sequence[str] = (),
        pins: PinLedger | None = None,
        recovery: Recovery | None = None,
        clock: Callable[[], float] = time.monotonic,
        abort: threading.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self._abort = abort  # set when the owner stops: commands in flight give up at once
        self._timeout = command_timeout
        self._home = tuple(home_networks)
        self._pins = pins
        self._rec = recovery or Recovery()
        self._clock = clock
        self.memory = ProbeMemory()
        self.port: str | None = None if self._is_glob(cfg.port) else cfg.port
        self.iccid: str | None = None
        self._t: AtTransport | None = None
        self.failures = 0
        self.reopens = 0
        self.resets = 0
        self.rescans = 0
        self.found_again = 0
        self.asked = 0  # callers' commands sent
        self.ask_failures = 0  # ... that got no final result (busy, timeout, port gone)
        # Held while the port is used: by a check, a command of the manager, a caller's ask.
        self._port_lock = threading.Lock()
        self._reopen_gate = Interval(self._rec.reopen_interval, clock)
        self._reset_gate = Interval(self._rec.reset_interval, clock)
        self._rescan_gate = Interval(self._rec.rescan_interval, clock)

    @staticmethod
    def _is_glob(port: str) -> bool:
        return any(c in port for c in _GLOB_CHARS)

    @property
    def name(self) -> str:
        return self.cfg.name

    def real_port(self) -> str | None:
        return os.path.realpath(self.port) if self.port and self._t is not None else None

    def close(self) -> None:
        if self._t is not None:
            self._t.close()
            self._t = None

    def counters(self) -> dict[str, int]:
        t = self._t
        return {
            "failures": self.failures,
            "reopens": self.reopens,
            "resets": self.resets,
            "rescans": self.rescans,
            "found_again": self.found_again,
            "pin_entries": self.memory.pin_entries,
            "timeouts": t.timeouts if t else 0,
            "noise_bytes": t.noise_bytes if t else 0,
            "urcs": t.urcs_seen if t else 0,
            "asked": self.asked,
            "ask_failures": self.ask_failures,
        }

    def check(self, candidates: Callable[[], list[str]]) -> ModemReport:
        """Probe once (opening or finding the port first); never raises for modem trouble.

        ``candidates`` lists paths not held by another modem, for a rescan by ICCID.
        """
        with self._port_lock:
            return self._check(candidates)

    def _check(self, candidates: Callable[[], list[str]]) -> ModemReport:
        now = self._clock()
        if self._t is None and not self._open(candidates, now):
            return self._failed(f"port {self.port or self.cfg.port} cannot be opened", now)
        assert self._t is not None
        try:
            report = probe(
                self._t, self.cfg, home_networks=self._home, memory=self.memory, pins=self._pins
            )
        except ModemError as err:
            self.close()
            return self._failed(str(err), now)
        if report.responding and report.iccid and self.iccid and report.iccid != self.iccid:
            # USB renumbering can swap ports between modems: this path now holds another SIM.
            log.warning(
                "modem %s: %s now holds SIM %s, not %s; looking for ours",
                self.name,
                self.port,
                report.iccid,
                self.iccid,
            )
            self.close()
            self.port = None
            return self._failed("port holds another SIM", now)
        if not report.responding:
            return self._failed(report.error or "no answer", now)
        self.failures = 0
        if report.iccid:
            self.iccid = report.iccid
        return report

    def send(self, command: str, candidates: Callable[[], list[str]]) -> bool:
        """Send one command (opening the port first if needed): True on OK; never raises for
        modem trouble."""
        with self._port_lock:
            if self._t is None and not self._open(candidates, self._clock()):
                return False
            assert self._t is not None
            try:
                return self._t.command(command).ok
            except ModemError as err:
                log.warning("modem %s: %s failed: %s", self.name, command, err)
                self.close()
                return False

    def ask(self, command: str, timeout: float) -> AtResponse:
        """Run a caller's command on the open port once no check uses it, all within
        ``timeout`` seconds. Raises ModemBusy (a check held the port all along), PortGone (not
        open: opening and recovering are the checks' job) or AtTimeout; a modem that does not
        answer is left to the checks' escalation."""
        deadline = self._clock() + timeout
        if not self._port_lock.acquire(timeout=timeout):
            self.ask_failures += 1
            raise ModemBusy(f"modem {self.name}: port busy for {timeout:g} s, {command} not sent")
        try:
            t = self._t
            if t is None:
                self.ask_failures += 1
                raise PortGone(f"modem {self.name}: port not open, {command} not sent")
            self.asked += 1
            try:
                return t.command(command, timeout=max(0.05, deadline - self._clock()))
            except ModemError:
                self.ask_failures += 1
                raise
        finally:
            self._port_lock.release()

    # -- opening and finding ---------------------------------------------------------------
    def _open(self, candidates: Callable[[], list[str]], now: float) -> bool:
        if self.port is not None and self._try_open(self.port):
            return True
        if not self._rescan_gate.allow(now):
            return False
        self.rescans += 1
        found = self._rescan(candidates())
        if found is None:
            return False
        if found != self.port:
            log.warning(
                "modem %s found again at %s (ICCID %s)",
                self.name,
                found,
                self.iccid or "not known yet",
            )
            self.found_again += 1
        self.port = found
        return self._try_open(found)

    def _transport(self, path: str) -> AtTransport:
        return AtTransport(
            path, baudrate=self.cfg.baudrate, timeout=self._timeout, abort=self._abort
        )

    def _try_open(self, path: str) -> bool:
        t = self._transport(path)
        try:
            t.open()
        except PortGone as err:
            log.debug("%s", err)
            return False
        self._t = t
        return True

    def _rescan(self, paths: list[str]) -> str | None:
        """The path whose SIM has our ICCID; without a known ICCID, the configured port."""
        own = expand([self.cfg.port])
        if self.iccid is None:
            return own[0] if own else None
        for path in [*own, *[p for p in paths if p not in own]]:
            t = self._transport(path)
            try:
                with t:
                    if not responds(t, tries=1):
                        continue
                    t.command("ATE0")
                    if read_iccid(t, self.memory) == self.iccid:
                        return path
            except ModemError as err:
                log.debug("rescan %s: %s", path, err)
        return None

    # -- escalation ------------------------------------------------------------------------
    def _failed(self, why: str, now: float) -> ModemReport:
        self.failures += 1
        if self._t is not None:
            if self.failures >= self._rec.reset_after and self._reset_gate.allow(now):
                self._reset()
            elif self._reopen_gate.allow(now):
                self.reopens += 1
                log.warning(
                    "modem %s does not answer (%s): reopening %s", self.name, why, self.port
                )
                self.close()
        return ModemReport(self.name, self.port or self.cfg.port, responding=False, error=why)

    def _reset(self) -> None:
        self.resets += 1
        log.warning(
            "modem %s still silent after %d checks: sending AT+CFUN=1,1", self.name, self.failures
        )
        assert self._t is not None
        try:
            self._t.send_only("AT+CFUN=1,1")
        except ModemError as err:
            log.warning("modem %s: reset not sent: %s", self.name, err)
        self.close()
