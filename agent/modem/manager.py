"""The modem manager thread: probe every modem periodically, apply the policy, act on switches.

Every ``check_interval`` it probes all modems in parallel (each probe bounded by command
timeouts), feeds the reports to the pure ``SelectionPolicy``, and on a switch logs it at
WARNING, runs ``link_down``/``link_up`` and calls ``on_switch(active, reason_code)``. A round
waits only for the active modem's probe (at start: the primary's, and for the others only if the
primary is not usable): a slow or wedged standby never delays the failover of the active one;
its probe runs on, is not started again until it ends, and the policy keeps its last report
meanwhile. Its own thread, all I/O with timeouts, every exception caught and counted: it can
never stall the CAN pipeline or the outbox; stopping abandons commands in flight. The uplink
reports data-path health with ``report_data_failure``/``report_data_ok``. Other parts of the
agent (the GNSS source) run their own commands on a modem's port with ``run_command``: between
the probes, serialized with them, bounded in time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from agent.config import Config, ModemConfig, ModemPolicyConfig
from agent.modem.handle import ModemHandle, Recovery, expand
from agent.modem.link import run_link_command
from agent.modem.policy import SelectionPolicy
from agent.modem.probe import PinLedger
from agent.modem.report import ModemError, ModemReport, Switch
from agent.modem.transport import AtResponse
from agent.ratelimit import Interval

log = logging.getLogger(__name__)

OnSwitch = Callable[[str | None, str], None]
_ERROR_LOG_EVERY = 60.0


class ModemManager:
    def __init__(
        self,
        modems: Sequence[ModemConfig],
        policy: ModemPolicyConfig,
        *,
        on_switch: OnSwitch | None = None,
        search: Sequence[str] = (),
        pin_ledger: Path | None = None,
        recovery: Recovery | None = None,
        history: int = 20,
    ) -> None:
        self._cfg = policy
        self._stop = threading.Event()
        self._wake = threading.Event()
        if policy.min_signal_dbm is not None:
            log.warning(
                "[modems] min_signal_dbm is deprecated: it sets both thresholds; use "
                "min_rsrp_dbm (LTE RSRP, now %g) and min_rssi_dbm (RSSI from AT+CSQ, now %g)",
                policy.min_rsrp_dbm,
                policy.min_rssi_dbm,
            )
        if policy.home_networks:
            log.warning(
                "[modems] home_networks is deprecated: it makes one SIM's home network home for "
                "every SIM; each SIM's own home comes from its IMSI, and a [[modem]] "
                "home_networks list adds to it"
            )
        self._search = tuple(search)
        self.on_switch = on_switch
        pins = PinLedger(pin_ledger)
        self._handles = [
            ModemHandle(
                m,
                command_timeout=policy.command_timeout,
                home_networks=policy.home_networks,
                pins=pins,
                recovery=recovery,
                abort=self._stop,
            )
            for m in modems
        ]
        self._by_name = {h.name: h for h in self._handles}
        self._policy = SelectionPolicy(
            [h.name for h in self._handles], policy, time.monotonic, history=history
        )
        self._lock = threading.Lock()
        self._reports: dict[str, ModemReport] = {}
        self._pending: dict[str, Future[ModemReport]] = {}  # probes running (manager thread)
        self._thread: threading.Thread | None = None
        self._checks = 0
        self._errors = 0
        self._link_failures = 0
        self._error_log = Interval(_ERROR_LOG_EVERY)
        # The lifecycle's radio power: a requested command (with low-power flag) and, while
        # low, no checks at all (nothing to check; no timer wakes a parked box).
        self._power_request: tuple[str, bool] | None = None
        self._power_done = threading.Event()
        self._low_power = False

    @classmethod
    def from_config(cls, cfg: Config, **kwargs: Any) -> ModemManager:
        p = cfg.modems
        kwargs.setdefault("search", p.search)
        kwargs.setdefault("pin_ledger", p.pin_ledger)
        kwargs.setdefault("history", p.history)
        kwargs.setdefault(
            "recovery",
            Recovery(p.reopen_interval, p.reset_after, p.reset_interval, p.rescan_interval),
        )
        return cls(cfg.modem, p, **kwargs)

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="modem-manager", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("modem manager did not stop within %g s", timeout)
            self._thread = None
        for h in self._handles:
            h.close()

    # -- the interface for the daemon and the uplink ----------------------------------------
    def active(self) -> str | None:
        with self._lock:
            return self._policy.active

    def report_data_failure(self, reason: str) -> None:
        with self._lock:
            self._policy.report_data_failure(reason)
            due = self._policy.data_failures >= self._cfg.data_failures
        if due:
            self._wake.set()

    def report_data_ok(self) -> None:
        with self._lock:
            self._policy.report_data_ok()

    def set_power(self, command: str, *, low: bool, timeout: float) -> bool:
        """Send ``command`` (e.g. AT+CFUN=4) to every modem from the manager's thread, which
        owns the ports; while ``low``, the periodic checks pause. True once sent within
        ``timeout``."""
        self._power_done.clear()
        with self._lock:
            self._power_request = (command, low)
        self._wake.set()
        return self._power_done.wait(timeout)

    def _apply_power(self) -> None:
        with self._lock:
            request, self._power_request = self._power_request, None
        if request is None:
            return
        command, low = request
        if self._pending:
            wait(list(self._pending.values()))  # a probe in flight owns its port until it ends
        for h in self._handles:
            if h.name in self._pending:
                self._pending.pop(h.name)
            ok = h.send(command, lambda h=h: self._candidates(h))  # type: ignore[misc]
            log.info("modem %s: %s %s", h.name, command, "OK" if ok else "failed")
        self._low_power = low
        self._power_done.set()

    def run_command(self, modem: str, command: str, *, timeout: float) -> AtResponse:
        """Run ``command`` on the port of the modem named ``modem`` (which the manager keeps
        open) between its probes, serialized with them, within ``timeout`` seconds. Raises
        ModemError when it could not be sent or got no final result in time (ModemBusy,
        PortGone, AtTimeout); an ``ERROR`` answer is a response with ``ok`` False."""
        h = self._by_name.get(modem)
        if h is None:
            raise ModemError(f"no modem named {modem!r}")
        return h.ask(command, timeout)

    def check_now(self) -> None:
        """Run the next check at once instead of at the end of the interval."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: active modem and why, per-modem reports, last switches."""
        now_mono, now_wall = time.monotonic(), time.time()
        with self._lock:
            verdicts = self._policy.verdicts
            reason = self._policy.reason
            modems = {}
            for h in self._handles:
                r = self._reports.get(h.name)
                v = verdicts.get(h.name)
                modems[h.name] = {
                    "report": r.to_dict() if r else None,
                    "usable": r is not None and v is None,
                    "problem": {"code": v.code, "text": v.text} if v else None,
                    "port": h.port,
                    "counters": h.counters(),
                }
            switches = [
                {**s.to_dict(), "time": round(now_wall - (now_mono - s.at), 3)}
                for s in self._policy.switches
            ]
            due = self._policy.return_due
            return {
                "active": self._policy.active,
                "reason": {"code": reason.code, "text": reason.text},
                "primary": self._policy.primary(),
                "modems": modems,
                "switches": switches,
                "return_in_s": None if due is None else max(0.0, round(due - now_mono, 3)),
                "return_delay_s": self._policy.return_delay,
                "data_failures": self._policy.data_failures,
                "counters": {
                    "checks": self._checks,
                    "errors": self._errors,
                    "link_failures": self._link_failures,
                    "switches_suppressed": self._policy.suppressed,
                },
            }

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        with ThreadPoolExecutor(
            max_workers=max(1, len(self._handles)), thread_name_prefix="modem-probe"
        ) as pool:
            self._pending = {}
            while not self._stop.is_set():
                try:
                    self._apply_power()
                    if not self._low_power:
                        self._round(pool)
                except Exception:  # the manager must outlive any bug in one round
                    self._count_error("modem check failed")
                self._wake.wait(None if self._low_power else self._cfg.check_interval)
                self._wake.clear()

    def _round(self, pool: ThreadPoolExecutor) -> None:
        for h in self._handles:
            if h.name not in self._pending:
                self._pending[h.name] = pool.submit(self._check, h)
        with self._lock:
            active = self._policy.active
            leader = active or self._policy.primary()
        lead = self._pending.get(leader) if leader else None
        switch = None
        if lead is not None:
            wait([lead])  # bounded by the leader's own command timeouts
            if active is None:
                # At start the primary alone decides when it is usable; no standby delays that.
                switch = self._update({leader: self._take(leader)} if leader else {})
        with self._lock:
            started = self._policy.active is not None
        if not started:
            wait(list(self._pending.values()))  # no active modem yet: the first choice needs all
        done = [name for name, fut in self._pending.items() if fut.done()]
        switch = self._update({name: self._take(name) for name in done}) or switch
        with self._lock:
            self._checks += 1
        if switch is not None:
            self._apply(switch)

    def _take(self, name: str) -> ModemReport:
        return self._pending.pop(name).result()

    def _update(self, fresh: dict[str, ModemReport]) -> Switch | None:
        with self._lock:
            self._reports.update(fresh)
            return self._policy.update(fresh)

    def _check(self, h: ModemHandle) -> ModemReport:
        try:
            return h.check(lambda: self._candidates(h))
        except Exception:
            self._count_error(f"modem {h.name}: probe failed")
            h.close()
            return ModemReport(
                h.name, h.port or h.cfg.port, responding=False, error="internal error while probing"
            )

    def _candidates(self, h: ModemHandle) -> list[str]:
        held = {p for o in self._handles if o is not h and (p := o.real_port())}
        patterns = [o.cfg.port for o in self._handles] + list(self._search)
        return [p for p in expand(patterns) if os.path.realpath(p) not in held]

    def _apply(self, sw: Switch) -> None:
        # The first choice is no failover: worth a line, not a warning.
        level = logging.INFO if sw.from_name is None else logging.WARNING
        log.log(level, "modem switch %s -> %s [%s]: %s", sw.from_name, sw.to_name, sw.code, sw.text)
        if sw.from_name is not None:
            self._link(self._by_name[sw.from_name], up=False)
        if sw.to_name is not None and not self._link(self._by_name[sw.to_name], up=True):
            with self._lock:
                self._policy.report_data_failure("link_up command failed")
        if self.on_switch is not None:
            try:
                self.on_switch(sw.to_name, sw.code)
            except Exception:
                self._count_error("on_switch callback failed")

    def _link(self, h: ModemHandle, *, up: bool) -> bool:
        argv = h.cfg.link_up if up else h.cfg.link_down
        if not argv:
            return True
        env = {
            "SPIME_MODEM_NAME": h.name,
            "SPIME_MODEM_PORT": h.port or h.cfg.port,
            "SPIME_MODEM_APN": h.cfg.apn or "",
            "SPIME_MODEM_ICCID": h.iccid or "",
        }
        result = run_link_command(argv, timeout=self._cfg.link_timeout, env=env)
        if not result.ok:
            self._link_failures += 1
            log.warning(
                "modem %s: link_%s failed: %s", h.name, "up" if up else "down", result.detail
            )
        return result.ok

    def _count_error(self, what: str) -> None:
        self._errors += 1
        if self._error_log.allow():
            log.exception("%s (%d errors so far)", what, self._errors)
