"""Modem selection policy: pure, clock injected, no I/O.

Given new ``ModemReport`` values (it keeps the latest of every modem) and the uplink's data-path
verdicts, decide which modem is active and when to switch: away from a failing one (SIM missing
or locked, not registered or denied for packet data, not attached, roaming outside its home
networks, weak signal for N checks in a row, repeated data-path failure, not answering), back to
the primary after a delay that doubles on each failed return, never more than
``max_switches_per_hour``. Every switch is a ``Switch`` value with a reason.

At start the first usable modem in preference order is chosen: hysteresis is for taking over,
not for keeping. A modem taking over must clear its threshold plus ``signal_hysteresis_db``
(unless the active one is unusable for a reason other than signal, when any usable modem beats
it). A primary that was not usable at start is taken as soon as it can take over, without the
return delay, which counts only once the primary has failed under us. Signal is judged per modem
against the threshold of its own measure (RSRP or RSSI) and never used to rank one modem above
another, so an RSRP is never compared with an RSSI. Probing, logging and running link commands
are the manager's job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

from agent.config import ModemPolicyConfig
from agent.modem import fields as f
from agent.modem.report import ModemReport, Reason, Switch

HOUR = 3600.0

_MEASURE = {"rsrp": "RSRP", "csq": "RSSI"}

_SIM_REASONS = {
    f.SIM_ABSENT: ("sim_missing", "no SIM card"),
    f.SIM_PIN: ("sim_locked", "the SIM asks for its PIN"),
    f.SIM_PUK: ("sim_puk", "the SIM is PUK-locked and needs a person"),
    f.SIM_FAILED: ("sim_failed", "the SIM failed"),
    f.SIM_BUSY: ("sim_busy", "the SIM is busy"),
    f.SIM_UNKNOWN: ("sim_unknown", "the SIM state is unknown"),
}


class SelectionPolicy:
    """Chooses the active modem. Not thread-safe: the manager serialises calls."""

    def __init__(
        self,
        names: Sequence[str],
        cfg: ModemPolicyConfig,
        clock: Callable[[], float],
        *,
        history: int = 20,
    ) -> None:
        self._names = list(names)
        self._cfg = cfg
        self._clock = clock
        self._active: str | None = None
        self._reason = Reason("starting", "no modem checked yet")
        self._switches: deque[Switch] = deque(maxlen=history)
        self._switch_times: deque[float] = deque()
        self._latest: dict[str, ModemReport] = {}
        self._weak: dict[str, int] = dict.fromkeys(self._names, 0)
        self._iccid: dict[str, str] = {}
        self._verdicts: dict[str, Reason | None] = {}
        self._data_failures = 0
        self._data_reason = ""
        self._avoid_until: dict[str, float] = {}
        self._delay = cfg.return_delay
        self._return_due: float | None = None
        self._returned_at: float | None = None
        self._primary_has_served = False  # until then a return to it is not delayed
        self.suppressed = 0

    # -- read-only views -------------------------------------------------------------------
    @property
    def active(self) -> str | None:
        return self._active

    @property
    def reason(self) -> Reason:
        return self._reason

    @property
    def switches(self) -> tuple[Switch, ...]:
        return tuple(self._switches)

    @property
    def verdicts(self) -> dict[str, Reason | None]:
        """Per modem: why it cannot be used (None: usable), as of the last update."""
        return dict(self._verdicts)

    @property
    def return_delay(self) -> float:
        return self._delay

    @property
    def return_due(self) -> float | None:
        return self._return_due

    @property
    def data_failures(self) -> int:
        return self._data_failures

    def primary(self) -> str | None:
        return self._resolve(self._cfg.primary) if self._cfg.primary else self._first()

    def order(self) -> list[str]:
        """Preference order: primary, the fallback list, then the other modems as configured."""
        out: list[str] = []
        for ref in (self.primary(), *self._cfg.fallback):
            name = self._resolve(ref) if ref else None
            if name and name not in out:
                out.append(name)
        out.extend(n for n in self._names if n not in out)
        return out

    # -- inputs from the uplink ------------------------------------------------------------
    def report_data_failure(self, reason: str) -> None:
        self._data_failures += 1
        self._data_reason = reason

    def report_data_ok(self) -> None:
        self._data_failures = 0
        self._data_reason = ""

    # -- the decision ----------------------------------------------------------------------
    def update(self, reports: Mapping[str, ModemReport]) -> Switch | None:
        """Take the new reports (each counts once: a modem absent here keeps its last one)."""
        now = self._clock()
        for name, r in reports.items():
            if name not in self._weak:
                continue
            self._latest[name] = r
            if r.iccid:
                self._iccid[name] = r.iccid
            if r.signal_dbm is not None:
                weak = r.signal_dbm < self._cfg.min_dbm(r.signal_source)
                self._weak[name] = self._weak[name] + 1 if weak else 0
            elif not r.responding or r.sim != f.SIM_READY:
                self._weak[name] = 0
        self._verdicts = {n: self._assess(self._latest.get(n)) for n in self._names}

        if self._active is None:
            return self._initial(now)

        active = self._active
        failing = self._verdicts.get(active)
        if failing is None and self._data_failures >= self._cfg.data_failures:
            failing = Reason(
                "data_failure",
                f"the data path failed {self._data_failures} times ({self._data_reason})",
            )
        if failing is not None:
            cand = self._candidate(now, exclude=active, margin=True)
            if cand is None and failing.code != "weak_signal":
                # An unusable modem is worse than a usable one inside the margin.
                cand = self._candidate(now, exclude=active, margin=False)
            if cand is None:
                self._reason = Reason(
                    "no_alternative",
                    f"{active} is failing ({failing.text}) and no other modem is usable",
                )
                return None
            return self._switch(cand, Reason(failing.code, f"{active}: {failing.text}"), now)

        primary = self.primary()
        due = self._return_due
        if primary and active != primary and due is not None and now >= due:
            if self._eligible(primary, now, margin=True):
                again = "again" if self._primary_has_served else "(it was not at start)"
                return self._switch(
                    primary,
                    Reason("return_to_primary", f"primary {primary} is usable {again}"),
                    now,
                )
            if self._primary_has_served:
                # Primary still unusable at its due time: that return failed, wait longer.
                self._grow_delay()
                self._return_due = now + self._delay
        return None

    # -- internals -------------------------------------------------------------------------
    def _first(self) -> str | None:
        return self._names[0] if self._names else None

    def _resolve(self, ref: str) -> str | None:
        if ref in self._names:
            return ref
        for name, iccid in self._iccid.items():
            if iccid == ref:
                return name
        return None

    def _assess(self, r: ModemReport | None) -> Reason | None:
        """Why the modem cannot carry data (None: usable). Texts leave the name to the caller."""
        if r is None:
            return Reason("not_responding", "not probed yet")
        if not r.responding:
            return Reason("not_responding", f"does not answer ({r.error or 'no answer'})")
        if r.sim != f.SIM_READY:
            code, text = _SIM_REASONS.get(r.sim, _SIM_REASONS[f.SIM_UNKNOWN])
            return Reason(code, text)
        if r.registration == f.REG_DENIED:
            return Reason("denied", "the network denied registration for packet data")
        if r.registration not in (f.REG_HOME, f.REG_ROAMING):
            if r.cs_registration in (f.REG_HOME, f.REG_ROAMING):
                return Reason(
                    "no_packet_service",
                    f"registered for voice only ({r.cs_registration}); packet service "
                    f"{r.registration}",
                )
            return Reason("not_registered", f"not registered ({r.registration})")
        if r.attached is False:
            return Reason("not_attached", "registered but not attached for packet data (CGATT 0)")
        if r.roaming and not self._cfg.allow_roaming:
            return Reason(
                "roaming",
                f"roaming on {r.operator or 'an unknown network'}, not a home network of its SIM",
            )
        weak = self._weak.get(r.name, 0)
        if weak >= self._cfg.weak_checks and r.signal_dbm is not None:
            return Reason(
                "weak_signal",
                f"{_MEASURE.get(r.signal_source or '', 'signal')} {r.signal_dbm:g} dBm below "
                f"{self._cfg.min_dbm(r.signal_source):g} dBm for {weak} checks",
            )
        return None

    def _why_not(self, name: str) -> str:
        verdict = self._verdicts.get(name)
        if verdict is not None:
            return verdict.text
        r = self._latest.get(name)
        if r is not None and r.signal_dbm is not None:
            return (
                f"{_MEASURE.get(r.signal_source or '', 'signal')} {r.signal_dbm:g} dBm, below "
                f"{self._cfg.min_dbm(r.signal_source):g} dBm"
            )
        return "not usable"

    def _eligible(self, name: str, now: float, *, margin: bool) -> bool:
        """Usable and able to take over: no weak reading, with ``margin`` clear of the
        threshold by the hysteresis, and no recent data-path trouble."""
        r = self._latest.get(name)
        if r is None or self._verdicts.get(name) is not None:
            return False
        if self._weak.get(name, 0) > 0:
            return False
        if margin and r.signal_dbm is not None:
            need = self._cfg.min_dbm(r.signal_source) + self._cfg.signal_hysteresis_db
            if r.signal_dbm < need:
                return False
        return now >= self._avoid_until.get(name, now)

    def _candidate(self, now: float, exclude: str | None, *, margin: bool) -> str | None:
        for name in self.order():
            if name != exclude and self._eligible(name, now, margin=margin):
                return name
        return None

    def _initial(self, now: float) -> Switch | None:
        # Nothing is kept yet, so nothing has to be taken over: the first usable modem wins
        # (one whose last reading is above its threshold, else any usable one).
        usable = [n for n in self.order() if self._verdicts.get(n) is None]
        pick = next((n for n in usable if self._weak.get(n, 0) == 0), None) or next(
            iter(usable), None
        )
        if pick is None:
            self._reason = Reason("no_usable_modem", "no modem is usable")
            return None
        primary = self.primary()
        if pick == primary or primary is None:
            why = "the primary" if pick == primary else "the first usable modem in order"
        else:
            why = f"the first usable modem in order (primary {primary}: {self._why_not(primary)})"
        sw = Switch(now, None, pick, "initial", f"{pick} chosen at start: {why}")
        self._active = pick
        self._reason = Reason(sw.code, sw.text)
        self._switches.append(sw)
        if pick == primary:
            self._primary_has_served = True
        else:
            self._return_due = now  # as soon as the primary can take over
        return sw

    def _grow_delay(self) -> None:
        self._delay = min(self._delay * 2, self._cfg.return_delay_max)

    def _switch(self, to: str, why: Reason, now: float) -> Switch | None:
        while self._switch_times and now - self._switch_times[0] >= HOUR:
            self._switch_times.popleft()
        if len(self._switch_times) >= self._cfg.max_switches_per_hour:
            self.suppressed += 1
            self._reason = Reason(
                "switch_cap",
                f"would switch to {to} ({why.text}) but {self._cfg.max_switches_per_hour} "
                "switches in the last hour is the cap",
            )
            return None
        frm = self._active
        primary = self.primary()
        if frm == primary:
            failed_return = self._returned_at is not None and now - self._returned_at < self._delay
            if failed_return:
                self._grow_delay()
            else:
                self._delay = self._cfg.return_delay
            self._return_due = now + self._delay
            self._returned_at = None
        if to == primary:
            self._returned_at = now
            self._return_due = None
            self._primary_has_served = True
        if why.code == "data_failure" and frm is not None:
            self._avoid_until[frm] = now + self._cfg.return_delay
        sw = Switch(now, frm, to, why.code, why.text)
        self._active = to
        self._reason = why
        self._switches.append(sw)
        self._switch_times.append(now)
        self._data_failures = 0
        self._data_reason = ""
        return sw
