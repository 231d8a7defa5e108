"""The lifecycle state machine with an injected clock: ignition, silence, low voltage, actions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import PowerConfig
from agent.control.power import (
    DRIVING,
    LOW_VOLTAGE,
    PARKED,
    STARTED,
    STATES,
    Action,
    Lifecycle,
    PowerInputs,
    PowerSettings,
    settings_of,
)
from tests.support.agentrun import GOOD_CONFIG, config_problems


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


IGN = PowerSettings(ignition_on=(1, "Run"), has_ignition=True, park_after=10, park_upload=20)
NO_IGN = PowerSettings(park_after=10, park_upload=20)
PARK = (Action.GNSS_OFF, Action.COMMIT, Action.UPLOAD, Action.MODEM_LOW, Action.SLEEP)
WAKE = (Action.GNSS_ON, Action.MODEM_FULL, Action.RESUME)


def machine(s: PowerSettings = IGN) -> tuple[Lifecycle, Clock]:
    clock = Clock()
    return Lifecycle(s, clock), clock


def frame(clock: Clock, **kw: object) -> PowerInputs:
    """Inputs where bus "a" just delivered a frame."""
    return PowerInputs(last_frame={"a": clock.t, "b": None}, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "label", "state"),
    [
        (1, None, DRIVING),
        (1.0, None, DRIVING),
        (0, None, PARKED),
        (2, "Run", DRIVING),  # label listed
        (3, "Off", PARKED),
        ("Run", None, DRIVING),
        ("Acc", None, PARKED),
    ],
)
def test_ignition_values_and_labels(value: object, label: str | None, state: str) -> None:
    m, c = machine()
    m.step(frame(c, ignition=value, ignition_label=label, ignition_at=c.t))
    assert m.state == state


def test_a_start_is_parked_and_idle_until_the_inputs_decide() -> None:
    # No evidence of a drive yet: parked, reason "started", no action until the inputs decide.
    m, c = machine()
    assert (m.state, m.reason) == (PARKED, "started")
    empty = PowerInputs(last_frame={"a": None})
    assert m.step(empty) is None and m.next_check(empty) == pytest.approx(10)
    # With an ignition signal, frames alone decide only after park_after without its value.
    assert m.step(frame(c)) is None
    c.t += 9.9
    assert m.step(frame(c)) is None
    c.t += 0.1
    t = m.step(frame(c))
    assert t is not None and (t.previous, t.state, t.reason) == (STARTED, DRIVING, "bus activity")
    # The first decision switches the radio on: a previous run may have left it off.
    assert t.actions == WAKE


def test_a_start_in_a_parked_car_parks_again_without_waking() -> None:
    m, c = machine()
    t = m.step(frame(c, ignition=0, ignition_at=c.t))
    assert t is not None and (t.previous, t.state, t.reason) == (STARTED, PARKED, "ignition off")
    # The box goes back to sleep; the radio is never switched on.
    assert t.actions == PARK
    assert m.step(frame(c, ignition=0, ignition_at=c.t)) is None
    m, c = machine(NO_IGN)
    empty = PowerInputs(last_frame={"a": None})
    c.t += 9.9
    assert m.step(empty) is None
    c.t += 0.1
    t = m.step(empty)
    assert t is not None and (t.previous, t.state) == (STARTED, PARKED)
    assert Action.MODEM_FULL not in t.actions


def test_park_actions_in_order_with_upload_deadline() -> None:
    m, c = machine()
    assert m.step(frame(c, ignition=1, ignition_at=c.t)) is not None
    c.t += 5
    t = m.step(frame(c, ignition=0, ignition_at=c.t))
    assert t is not None and t.state == PARKED and t.previous == DRIVING
    assert t.reason == "ignition off"
    assert t.actions == PARK
    assert t.upload_deadline == c.t + 20 and t.since == c.t
    # Once per change: the same inputs again change nothing.
    assert m.step(frame(c, ignition=0, ignition_at=c.t)) is None
    c.t += 3
    w = m.step(frame(c, ignition=1, ignition_at=c.t))
    assert w is not None and w.state == DRIVING and w.reason == "ignition on"
    assert w.actions == WAKE and w.upload_deadline is None


def test_all_buses_silent_parks_and_activity_wakes() -> None:
    m, c = machine(NO_IGN)
    inputs = frame(c)
    t = m.step(inputs)
    assert t is not None and (t.previous, t.state, t.reason) == (STARTED, DRIVING, "bus activity")
    assert m.step(inputs) is None
    assert m.next_check(inputs) == pytest.approx(10)
    c.t += 9.9
    assert m.step(inputs) is None
    c.t += 0.1
    t = m.step(inputs)
    assert t is not None and t.state == PARKED and t.reason == "every bus silent for 10 s"
    # Parked: only new input changes anything; no timer.
    assert m.next_check(inputs) is None
    c.t += 1000
    assert m.step(inputs) is None
    w = m.step(frame(c))
    assert w is not None and w.state == DRIVING and w.reason == "bus activity"


def test_never_a_frame_parks_after_park_after_from_start() -> None:
    m, c = machine(NO_IGN)
    empty = PowerInputs(last_frame={"a": None})
    c.t += 10
    t = m.step(empty)
    assert t is not None and t.state == PARKED


def test_stale_ignition_falls_back_to_activity() -> None:
    m, c = machine()
    on_at = c.t
    m.step(frame(c, ignition=1, ignition_at=on_at))
    c.t += 11  # the ignition message stopped, other frames go on
    assert m.step(frame(c, ignition=1, ignition_at=on_at)) is None
    assert m.state == DRIVING
    assert m.ignition_is_on(frame(c, ignition=1, ignition_at=on_at)) is None


def test_restart_while_parked_parks_from_inputs() -> None:
    # A fresh machine (an agent restarted in a parked car) parks on the first ignition value.
    m, c = machine()
    t = m.step(frame(c, ignition=0, ignition_at=c.t))
    assert t is not None and t.state == PARKED


def test_low_voltage_sag_then_recovery() -> None:
    s = PowerSettings(park_after=1e6, cutoff_volts=12.2, cutoff_after=240, resume_volts=12.6)
    m, c = machine(s)
    assert m.step(frame(c, volts=11.9)) is not None  # started -> driving
    assert m.next_check(frame(c, volts=11.9)) == pytest.approx(240)
    c.t += 100
    assert m.step(frame(c, volts=12.3)) is None  # back above: the count restarts
    assert m.step(frame(c, volts=11.8)) is None
    c.t += 239
    assert m.step(frame(c, volts=11.8)) is None
    c.t += 1
    t = m.step(frame(c, volts=11.8))
    assert t is not None and t.state == LOW_VOLTAGE and t.volts == 11.8
    assert t.actions == (Action.GNSS_OFF, Action.COMMIT, Action.MODEM_LOW, Action.SLEEP)
    assert "below 12.2 V for 240 s" in t.reason
    assert m.step(frame(c, volts=12.5)) is None  # hysteresis: not yet resume_volts
    r = m.step(frame(c, volts=12.7))
    assert r is not None and r.state == DRIVING and r.actions == WAKE
    assert "back above 12.6 V" in r.reason


def test_recovery_while_parked_stays_asleep() -> None:
    s = PowerSettings(
        ignition_on=(1,), has_ignition=True, park_after=1e6, cutoff_after=5, resume_volts=12.6
    )
    m, c = machine(s)
    m.step(frame(c, ignition=0, ignition_at=c.t, volts=11.0))
    c.t += 5
    t = m.step(frame(c, ignition=0, ignition_at=c.t, volts=11.0))
    assert t is not None and (t.previous, t.state) == (PARKED, LOW_VOLTAGE)
    r = m.step(frame(c, ignition=0, ignition_at=c.t, volts=13.0))
    assert r is not None and r.state == PARKED and r.actions == ()


events = st.lists(
    st.tuples(
        st.floats(0, 30),  # time passing
        st.sampled_from(["frame", "silence", "ign_on", "ign_off", "none"]),
        st.none() | st.floats(10, 15),  # volts
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_properties_of_any_input_sequence(seq: list[tuple[float, str, float | None]]) -> None:
    s = PowerSettings(ignition_on=(1,), has_ignition=True, park_after=10, cutoff_after=20)
    m, c = machine(s)
    last: float | None = None
    ign: tuple[int, float] | None = None
    for dt, what, volts in seq:
        c.t += dt
        if what != "silence":
            last = c.t
        if what in ("ign_on", "ign_off"):
            ign = (1 if what == "ign_on" else 0, c.t)
        inputs = PowerInputs(
            last_frame={"a": last},
            ignition=None if ign is None else ign[0],
            ignition_at=None if ign is None else ign[1],
            volts=volts,
        )
        before, settled = m.state, m.settled
        t = m.step(inputs)
        assert m.state in STATES
        if t is None:
            assert m.state == before
            continue
        # The first decision after the start, then only changes.
        assert t.previous == (before if settled else STARTED) and t.since == c.t
        assert t.state != t.previous and m.settled
        # Nothing produced is left uncommitted before a sleep; the receiver is paused before
        # (its last fixes are in the commit), unless it already was (parked).
        if Action.SLEEP in t.actions:
            assert [a for a in t.actions if a != Action.GNSS_OFF][0] == Action.COMMIT
            assert (Action.GNSS_OFF in t.actions) == (t.previous != PARKED)
        if t.state == DRIVING:
            assert t.actions == WAKE
        if t.state == LOW_VOLTAGE:
            assert volts is not None and volts < s.cutoff_volts
        if t.previous == LOW_VOLTAGE:
            assert volts is not None and volts >= s.resume_volts
        # A fresh ignition-on is never parked for silence or ignition.
        if ign == (1, c.t) and t.state == PARKED:
            pytest.fail("parked although the ignition just said on")
        # Idempotent: the same inputs at the same instant change nothing more.
        assert m.step(inputs) is None


def test_config_defaults_and_settings() -> None:
    cfg = PowerConfig()
    assert (cfg.cutoff_volts, cfg.cutoff_after, cfg.resume_volts) == (12.2, 240.0, 12.6)
    assert cfg.modem_low_power == "AT+CFUN=4" and cfg.modem_full_power == "AT+CFUN=1"
    s = settings_of(PowerConfig(ignition="Engine.Ignition", ignition_on=[1, "Run"]))
    assert s.has_ignition and s.ignition_on == (1, "Run")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('ignition = "Ignition"', "power.ignition"),
        ("ignition_on = [true]", "power.ignition_on"),
        ('sleep_command = "systemctl suspend"', "power.sleep_command: must be a list"),
        ("cutoff_volts = 12.5\nresume_volts = 12.4", "resume_volts (12.4) must be above"),
        ('voltage = "Bat.Volts"\nvoltage_file = "/sys/x"', "either voltage"),
        ("park_after = 0", "power.park_after"),
        ("bogus = 1", "power.bogus: unknown key"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, body: str, message: str) -> None:
    problems = config_problems(tmp_path, f"{GOOD_CONFIG}\n[power]\n{body}\n")
    assert any(message in p for p in problems), problems
