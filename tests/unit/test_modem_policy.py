"""The selection policy with an injected clock: every switch rule, schedule, cap, hysteresis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.config import ModemPolicyConfig
from agent.modem.policy import SelectionPolicy
from agent.modem.report import ModemReport


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def healthy(name: str, **kw: Any) -> ModemReport:
    base = ModemReport(
        name=name,
        port=f"/dev/{name}",
        responding=True,
        sim="ready",
        iccid=f"894902000000000000{'abc'.index(name[-1])}",
        imsi="262010000000001",
        operator="26201",
        registration="home",
        roaming=False,
        signal_dbm=-70.0,
        signal_source="csq",
        attached=True,
    )
    return replace(base, **kw)


def reports(**changes: dict[str, Any]) -> dict[str, ModemReport]:
    return {n: healthy(n, **changes.get(n, {})) for n in ("a", "b", "c")}


def make(**cfg: Any) -> tuple[SelectionPolicy, Clock]:
    clock = Clock()
    params: dict[str, Any] = {
        "return_delay": 600.0,
        "return_delay_max": 2400.0,
    }
    params.update(cfg)
    return SelectionPolicy(["a", "b", "c"], ModemPolicyConfig(**params), clock), clock


def test_initial_choice_is_the_primary() -> None:
    p, _ = make()
    sw = p.update(reports())
    assert sw is not None and (sw.from_name, sw.to_name, sw.code) == (None, "a", "initial")
    assert p.active == "a"


def test_primary_by_iccid_and_fallback_order() -> None:
    p, _ = make(primary="8949020000000000002", fallback=["b"])
    p.update(reports())
    assert p.active == "c"
    assert p.order() == ["c", "b", "a"]


def test_no_usable_modem_chooses_none() -> None:
    p, _ = make()
    bad = {"responding": False, "error": "no answer to AT"}
    assert p.update(reports(a=bad, b=bad, c=bad)) is None
    assert p.active is None
    assert p.reason.code == "no_usable_modem"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"responding": False, "sim": "unknown"}, "not_responding"),
        ({"sim": "absent"}, "sim_missing"),
        ({"sim": "pin"}, "sim_locked"),
        ({"sim": "puk"}, "sim_puk"),
        ({"sim": "failed"}, "sim_failed"),
        ({"registration": "denied"}, "denied"),
        ({"registration": "searching"}, "not_registered"),
        ({"registration": "not_registered"}, "not_registered"),
        ({"registration": "roaming", "operator": "23415", "roaming": True}, "roaming"),
        # Data matters, not voice: registered for circuit service only, or not attached.
        ({"registration": "searching", "cs_registration": "home"}, "no_packet_service"),
        ({"registration": "not_registered", "cs_registration": "roaming"}, "no_packet_service"),
        ({"attached": False}, "not_attached"),
    ],
)
def test_switch_away_rules(change: dict[str, Any], code: str) -> None:
    p, _ = make()
    p.update(reports())
    sw = p.update(reports(a=change))
    assert sw is not None
    assert (sw.from_name, sw.to_name, sw.code) == ("a", "b", code)
    assert sw.text.startswith("a: ") and "a: a:" not in sw.text
    assert p.reason.code == code
    assert p.switches[-1] == sw
    # The per-modem verdict leaves the name to whoever shows it next to the modem.
    problem = p.verdicts["a"]
    assert problem is not None and problem.code == code and not problem.text.startswith("a")


def test_roaming_at_home_is_not_roaming_and_roaming_can_be_allowed() -> None:
    p, _ = make()
    p.update(reports())
    assert p.update(reports(a={"registration": "roaming", "roaming": False})) is None
    q, _ = make(allow_roaming=True)
    q.update(reports())
    assert q.update(reports(a={"registration": "roaming", "roaming": True})) is None


def test_weak_signal_needs_n_checks_in_a_row() -> None:
    p, _ = make(min_rssi_dbm=-105.0, weak_checks=3)
    p.update(reports())
    weak = {"a": {"signal_dbm": -110.0}}
    assert p.update(reports(**weak)) is None
    assert p.update(reports(**weak)) is None
    assert p.update(reports()) is None  # one good reading starts the count again
    assert p.update(reports(**weak)) is None
    assert p.update(reports(**weak)) is None
    sw = p.update(reports(**weak))
    assert sw is not None and sw.code == "weak_signal" and sw.to_name == "b"


def test_hysteresis_a_candidate_needs_threshold_plus_margin() -> None:
    p, _ = make(min_rssi_dbm=-105.0, signal_hysteresis_db=6.0, weak_checks=1)
    p.update(reports())
    # b is above the threshold but inside the margin; c clears it.
    sw = p.update(
        reports(a={"signal_dbm": -110.0}, b={"signal_dbm": -101.0}, c={"signal_dbm": -99.0})
    )
    assert sw is not None and sw.to_name == "c"


def test_no_alternative_keeps_the_active_one() -> None:
    p, _ = make(weak_checks=1)
    p.update(reports())
    sw = p.update(reports(a={"signal_dbm": -110.0}, b={"signal_dbm": -104.0}, c={"sim": "absent"}))
    assert sw is None
    assert p.active == "a"
    assert p.reason.code == "no_alternative"


def test_repeated_data_failure_switches_and_ok_resets() -> None:
    p, _ = make(data_failures=3)
    p.update(reports())
    p.report_data_failure("connect refused")
    p.report_data_failure("connect refused")
    p.report_data_ok()
    p.report_data_failure("connect refused")
    assert p.update(reports()) is None
    p.report_data_failure("timeout")
    p.report_data_failure("timeout")
    sw = p.update(reports())
    assert sw is not None and sw.code == "data_failure" and "timeout" in sw.text
    assert p.data_failures == 0


def test_return_to_primary_after_a_growing_delay() -> None:
    p, clock = make(return_delay=600.0, return_delay_max=2400.0)
    p.update(reports())
    down = {"a": {"sim": "absent"}}
    assert p.update(reports(**down)).to_name == "b"  # type: ignore[union-attr]
    assert p.return_due == clock.t + 600

    clock.t += 599
    assert p.update(reports()) is None  # healthy again, but not yet due
    clock.t += 1
    sw = p.update(reports())
    assert sw is not None and (sw.to_name, sw.code) == ("a", "return_to_primary")

    # The primary fails again soon after the return: that return failed, the delay doubles.
    clock.t += 10
    p.update(reports(**down))
    assert p.active == "b" and p.return_delay == 1200
    clock.t += 1200
    assert p.update(reports()).to_name == "a"  # type: ignore[union-attr]
    clock.t += 10
    p.update(reports(**down))
    assert p.return_delay == 2400
    clock.t += 2400
    p.update(reports())
    clock.t += 10
    p.update(reports(**down))
    assert p.return_delay == 2400  # capped at return_delay_max


def test_primary_still_failing_when_due_doubles_the_delay() -> None:
    p, clock = make(return_delay=600.0, return_delay_max=10_000.0)
    p.update(reports())
    down = {"a": {"registration": "denied"}}
    p.update(reports(**down))
    clock.t += 600
    assert p.update(reports(**down)) is None
    assert p.return_delay == 1200 and p.return_due == clock.t + 1200


def test_a_primary_that_held_resets_the_delay() -> None:
    p, clock = make(return_delay=600.0, return_delay_max=10_000.0)
    p.update(reports())
    down = {"a": {"sim": "absent"}}
    p.update(reports(**down))
    clock.t += 600
    p.update(reports())
    clock.t += 10
    p.update(reports(**down))
    assert p.return_delay == 1200
    clock.t += 1200
    p.update(reports())
    clock.t += 5000  # the primary held for longer than the delay
    p.update(reports(**down))
    assert p.return_delay == 600


def test_return_needs_the_primary_above_the_hysteresis_margin() -> None:
    p, clock = make(min_rssi_dbm=-105.0, signal_hysteresis_db=6.0, return_delay=60.0)
    p.update(reports())
    p.update(reports(a={"sim": "absent"}))
    clock.t += 60
    assert p.update(reports(a={"signal_dbm": -102.0})) is None
    clock.t += 120
    assert p.update(reports(a={"signal_dbm": -95.0})).to_name == "a"  # type: ignore[union-attr]


def test_switch_cap_per_hour() -> None:
    p, clock = make(max_switches_per_hour=2, return_delay=10_000.0)
    p.update(reports())
    assert p.update(reports(a={"sim": "absent"})).to_name == "b"  # type: ignore[union-attr]
    clock.t += 60
    assert p.update(reports(a={"sim": "absent"}, b={"sim": "absent"})).to_name == "c"  # type: ignore[union-attr]
    clock.t += 60
    all_c_down = {"a": {"sim": "absent"}, "c": {"sim": "absent"}}
    assert p.update(reports(**all_c_down)) is None
    assert p.reason.code == "switch_cap" and p.suppressed == 1
    assert p.active == "c"
    clock.t += 3600  # the window moved on
    sw = p.update(reports(**all_c_down))
    assert sw is not None and sw.to_name == "b"


def test_switch_history_is_bounded() -> None:
    clock = Clock()
    cfg = ModemPolicyConfig(max_switches_per_hour=1000)
    p = SelectionPolicy(["a", "b"], cfg, clock, history=3)
    for i in range(10):
        clock.t += 1
        down = "a" if i % 2 == 0 else "b"
        p.update({n: healthy(n, sim="absent" if n == down else "ready") for n in ("a", "b")})
    assert len(p.switches) == 3


def test_a_usable_primary_is_chosen_at_start_even_inside_the_margin() -> None:
    # -101 dBm RSRP is above the -105 minimum but inside the 6 dB needed to take over: at start
    # nothing is kept, so nothing is taken over, and no return delay follows.
    p, _ = make(min_rsrp_dbm=-105.0, signal_hysteresis_db=6.0)
    sw = p.update(reports(a={"signal_dbm": -101.0, "signal_source": "rsrp"}))
    assert sw is not None and (sw.to_name, sw.code) == ("a", "initial")
    assert sw.text == "a chosen at start: the primary"
    assert p.return_due is None


def test_at_start_a_modem_above_its_threshold_beats_one_below() -> None:
    p, _ = make(min_rssi_dbm=-95.0, weak_checks=3)
    sw = p.update(reports(a={"signal_dbm": -101.0}))
    assert p.active == "b" and sw is not None
    assert sw.text.endswith("(primary a: RSSI -101 dBm, below -95 dBm)")
    q, _ = make(min_rssi_dbm=-95.0, weak_checks=3)
    weak = {"signal_dbm": -101.0}
    q.update(reports(a=weak, b=weak, c=weak))
    assert q.active == "a"  # all below: usable still beats none, in order


def test_a_primary_not_ready_at_start_is_taken_as_soon_as_it_can_take_over() -> None:
    p, clock = make(return_delay=600.0, min_rssi_dbm=-105.0, signal_hysteresis_db=6.0)
    sw = p.update(reports(a={"registration": "searching"}))
    assert sw is not None and sw.to_name == "b"
    assert sw.text.endswith("in order (primary a: not registered (searching))")
    clock.t += 30
    assert p.update(reports(a={"registration": "searching"})) is None
    assert p.return_delay == 600.0  # waiting for a primary that never served is no failed return
    clock.t += 30
    # Now registered, but inside the margin: taking over needs threshold plus hysteresis.
    assert p.update(reports(a={"signal_dbm": -102.0})) is None
    clock.t += 30
    sw = p.update(reports(a={"signal_dbm": -90.0}))
    assert sw is not None and (sw.from_name, sw.to_name, sw.code) == ("b", "a", "return_to_primary")
    # From now on the primary has served: leaving it starts the return delay.
    clock.t += 5000
    p.update(reports(a={"sim": "absent"}))
    assert p.active == "b" and p.return_due == clock.t + 600.0


@pytest.mark.parametrize(
    ("source", "dbm", "weak"),
    [
        ("rsrp", -110.0, False),  # a fair LTE RSRP
        ("csq", -110.0, True),  # the same figure as an RSSI is very weak
        ("rsrp", -116.0, True),
        ("csq", -94.0, False),
        ("csq", -96.0, True),
        ("rsrp", -115.0, False),  # at the threshold is not below it
    ],
)
def test_each_measure_has_its_own_default_threshold(source: str, dbm: float, weak: bool) -> None:
    p, _ = make(weak_checks=1)
    p.update(reports())
    sw = p.update(reports(a={"signal_dbm": dbm, "signal_source": source}))
    assert (sw is not None and sw.code == "weak_signal") is weak
    if weak:
        assert sw is not None
        measure = "RSRP" if source == "rsrp" else "RSSI"
        assert sw.text.startswith(f"a: {measure} {dbm:g} dBm below ")


def test_rsrp_is_never_held_against_the_rssi_threshold() -> None:
    # b reads RSRP, c RSSI; each is judged only by its own measure's threshold and margin.
    p, _ = make(min_rsrp_dbm=-115.0, min_rssi_dbm=-95.0, signal_hysteresis_db=6.0, weak_checks=1)
    p.update(reports())
    sw = p.update(
        reports(
            a={"signal_dbm": -100.0, "signal_source": "csq"},
            b={"signal_dbm": -105.0, "signal_source": "rsrp"},
            c={"signal_dbm": -80.0, "signal_source": "csq"},
        )
    )
    assert sw is not None and sw.to_name == "b"  # first in order, not the higher number


def test_deprecated_min_signal_dbm_keeps_its_old_meaning() -> None:
    old = ModemPolicyConfig(min_signal_dbm=-100.0)
    assert (old.min_rsrp_dbm, old.min_rssi_dbm) == (-100.0, -100.0)
    mixed = ModemPolicyConfig(min_signal_dbm=-100.0, min_rsrp_dbm=-118.0)
    assert (mixed.min_rsrp_dbm, mixed.min_rssi_dbm) == (-118.0, -100.0)
    new = ModemPolicyConfig()
    assert (new.min_rsrp_dbm, new.min_rssi_dbm, new.min_signal_dbm) == (-115.0, -95.0, None)
    assert (new.min_dbm("rsrp"), new.min_dbm("csq"), new.min_dbm(None)) == (-115.0, -95.0, -95.0)


def test_an_unusable_active_modem_yields_to_one_inside_the_margin() -> None:
    p, _ = make(min_rssi_dbm=-105.0, signal_hysteresis_db=6.0)
    p.update(reports())
    sw = p.update(reports(a={"sim": "absent"}, b={"signal_dbm": -103.0}, c={"sim": "absent"}))
    assert sw is not None and (sw.to_name, sw.code) == ("b", "sim_missing")


def test_a_modem_missing_from_an_update_keeps_its_last_report() -> None:
    p, _ = make(min_rssi_dbm=-105.0, weak_checks=2)
    p.update(reports())
    weak_a = {"a": healthy("a", signal_dbm=-110.0)}
    assert p.update(weak_a) is None
    # Updates about other modems neither forget a's report nor count its weak reading again.
    assert p.update({"b": healthy("b")}) is None
    assert p.update({"c": healthy("c")}) is None
    assert p.active == "a" and p.verdicts["a"] is None
    sw = p.update(weak_a)
    assert sw is not None and sw.code == "weak_signal"


def test_a_modem_never_reported_is_not_usable() -> None:
    p, _ = make()
    sw = p.update({"b": healthy("b")})
    assert sw is not None and sw.to_name == "b"
    assert (
        sw.text == "b chosen at start: the first usable modem in order (primary a: not probed yet)"
    )
