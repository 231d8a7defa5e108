"""Modem selection policy: pure, clock injected, no I/O.

Given the latest ``ModemReport`` of every modem (and the uplink's data-path verdicts), decide
which modem is active and when to switch: away from a failing one (SIM missing or locked, not
registered or denied, roaming outside the allowed networks, weak signal for N checks in a row,
repeated data-path failure, not answering), back to the primary after a delay that doubles on
each failed return, never more than ``max_switches_per_hour``. Every switch is a ``Switch`` value
with a reason. Probing, logging and running link commands are the manager's job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

from agent.config import ModemPolicyConfig
from agent.modem import fields as f
from agent.modem.report import ModemReport, Reason, Switch

HOUR = 3600.0

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
        self._weak: dict[str, int] = dict.fromkeys(self._names, 0)
        self._iccid: dict[str, str] = {}
        self._verdicts: dict[str, Reason | None] = {}
        self._data_failures = 0
        self._data_reason = ""
        self._avoid_until: dict[str, float] = {}
        self._delay = cfg.return_delay
        self._return_due: float | None = None
        self._returned_at: float | None = None
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
        now = self._clock()
        for name, r in reports.items():
            if r.iccid:
                self._iccid[name] = r.iccid
            if r.signal_dbm is not None:
                weak = r.signal_dbm < self._cfg.min_signal_dbm
                self._weak[name] = self._weak.get(name, 0) + 1 if weak else 0
            elif not r.responding or r.sim != f.SIM_READY:
                self._weak[name] = 0
        self._verdicts = {n: self._assess(n, reports.get(n)) for n in self._names}

        if self._active is None:
            return self._initial(reports, now)

        failing = self._verdicts.get(self._active)
        if failing is None and self._data_failures >= self._cfg.data_failures:
            failing = Reason(
                "data_failure",
                f"the data path failed {self._data_failures} times ({self._data_reason})",
            )
        if failing is not None:
            cand = self._candidate(reports, now, exclude=self._active)
            if cand is None:
                self._reason = Reason(
                    "no_alternative",
                    f"{self._active} is failing ({failing.text}) and no other modem is usable",
                )
                return None
            return self._switch(cand, failing, now)

        primary = self.primary()
        due = self._return_due
        if primary and self._active != primary and due is not None and now >= due:
            if self._eligible(primary, reports.get(primary), now):
                return self._switch(
                    primary,
                    Reason("return_to_primary", f"primary {primary} is usable again"),
                    now,
                )
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

    def _assess(self, name: str, r: ModemReport | None) -> Reason | None:
        if r is None or not r.responding:
            why = r.error if r is not None and r.error else "no answer"
            return Reason("not_responding", f"{name} does not answer ({why})")
        if r.sim != f.SIM_READY:
            code, text = _SIM_REASONS.get(r.sim, _SIM_REASONS[f.SIM_UNKNOWN])
            return Reason(code, f"{name}: {text}")
        if r.registration == f.REG_DENIED:
            return Reason("denied", f"{name}: the network denied registration")
        if r.registration not in (f.REG_HOME, f.REG_ROAMING):
            return Reason("not_registered", f"{name}: not registered ({r.registration})")
        if r.roaming and not self._cfg.allow_roaming:
            return Reason(
                "roaming",
                f"{name}: roaming on {r.operator or 'an unknown network'}, "
                "not an allowed home network",
            )
        weak = self._weak.get(name, 0)
        if weak >= self._cfg.weak_checks:
            return Reason(
                "weak_signal",
                f"{name}: signal {r.signal_dbm:g} dBm below {self._cfg.min_signal_dbm:g} dBm "
                f"for {weak} checks",
            )
        return None

    def _eligible(self, name: str, r: ModemReport | None, now: float) -> bool:
        """Usable and strong enough to move to: threshold plus hysteresis, no recent trouble."""
        if r is None or self._verdicts.get(name) is not None:
            return False
        if self._weak.get(name, 0) > 0:
            return False
        if r.signal_dbm is not None:
            need = self._cfg.min_signal_dbm + self._cfg.signal_hysteresis_db
            if r.signal_dbm < need:
                return False
        return now >= self._avoid_until.get(name, now)

    def _why_not(self, name: str, r: ModemReport | None, now: float) -> str:
        """Why ``name`` is not eligible, in a few words for the log and the status."""
        if r is None:
            return "no report"
        verdict = self._verdicts.get(name)
        if verdict is not None:
            return verdict.text
        if self._weak.get(name, 0) > 0:
            return "weak signal"
        need = self._cfg.min_signal_dbm + self._cfg.signal_hysteresis_db
        if r.signal_dbm is not None and r.signal_dbm < need:
            return f"{r.signal_dbm:.0f} dBm, below the {need:.0f} dBm needed to take over"
        if now < self._avoid_until.get(name, now):
            return "avoided for a while after data-path failures"
        return "not eligible"

    def _candidate(
        self, reports: Mapping[str, ModemReport], now: float, exclude: str | None
    ) -> str | None:
        for name in self.order():
            if name != exclude and self._eligible(name, reports.get(name), now):
                return name
        return None

    def _initial(self, reports: Mapping[str, ModemReport], now: float) -> Switch | None:
        pick = self._candidate(reports, now, exclude=None)
        if pick is None:
            # Nothing clears the hysteresis margin: at start, any usable modem beats none.
            pick = next((n for n in self.order() if self._verdicts.get(n) is None), None)
        if pick is None:
            self._reason = Reason("no_usable_modem", "no modem is usable")
            return None
        primary = self.primary()
        if pick == primary or primary is None:
            why = "the primary" if pick == primary else "the first usable modem in order"
        else:
            passed_over = self._why_not(primary, reports.get(primary), now)
            why = f"the first usable modem in order (primary {primary}: {passed_over})"
        sw = Switch(now, None, pick, "initial", f"{pick} chosen at start: {why}")
        self._active = pick
        self._reason = Reason(sw.code, sw.text)
        self._switches.append(sw)
        if pick != self.primary():
            self._return_due = now + self._delay
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
