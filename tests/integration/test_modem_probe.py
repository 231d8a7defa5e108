"""Probes and the one-shot report against simulated modems on real pseudo-terminals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, ModemConfig
from agent.modem import fields as f
from agent.modem.command import modems_report, render_json, render_table
from agent.modem.probe import PinLedger, ProbeMemory, probe
from agent.modem.report import AtTimeout, PortGone
from agent.modem.simulator import FOREIGN_OPERATOR, NATIONAL_OPERATOR, ModemSimulator, identity
from agent.modem.transport import AtTransport
from tests.support.wait import wait_until


@pytest.fixture
def sims() -> Iterator[Any]:
    with ExitStack() as stack:

        def make(scenario: str = "healthy", **kw: Any) -> ModemSimulator:
            return stack.enter_context(ModemSimulator(scenario, **kw))

        yield make


def probe_sim(sim: ModemSimulator, *, timeout: float = 2.0, **kw: Any) -> Any:
    cfg = ModemConfig(
        name="m", port=sim.port, pin=kw.pop("pin", None), home_networks=kw.pop("home", None)
    )
    with AtTransport(sim.port, timeout=timeout) as t:
        return probe(t, cfg, home_networks=kw.pop("all_home", ()), **kw)


def config(modems: list[dict[str, Any]], **policy: Any) -> Config:
    return Config.model_validate(
        {
            "vehicle": {"vin": "WVWZZZ1JZXW000001"},
            "bus": [{"name": "can0", "interface": "replay", "log": "x.log", "dbc": ["x.dbc"]}],
            "modem": modems,
            "modems": {"command_timeout": 2.0, **policy},
        }
    )


@pytest.mark.parametrize("variant", ["AT+QCCID", "AT+CCID", "AT+ICCID", "AT+CICCID", "AT+CRSM"])
def test_healthy_modem_every_iccid_variant(sims: Any, variant: str) -> None:
    sim = sims("healthy", ident=7, iccid_command=variant)
    r = probe_sim(sim)
    iccid, imsi = identity(7)
    assert r.responding and r.sim == f.SIM_READY
    assert (r.iccid, r.imsi, r.operator) == (iccid, imsi, "26201")
    assert (r.registration, r.roaming, r.attached) == (f.REG_HOME, False, True)
    assert r.home_network == "26201"
    assert r.signal_dbm == -73.0 and r.signal_source == "csq"


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("no_sim", {"sim": f.SIM_ABSENT, "iccid": None}),
        ("pin", {"sim": f.SIM_PIN}),
        ("puk", {"sim": f.SIM_PUK}),
        ("searching", {"sim": f.SIM_READY, "registration": f.REG_SEARCHING, "roaming": None}),
        ("denied", {"registration": f.REG_DENIED, "operator": None}),
        ("roaming", {"registration": f.REG_ROAMING, "roaming": True, "operator": FOREIGN_OPERATOR}),
        (
            "national_roaming",
            {"roaming": True, "operator": NATIONAL_OPERATOR, "home_network": "26201"},
        ),
        ("iot_home", {"registration": f.REG_ROAMING, "roaming": False, "operator": "26201"}),
        ("weak", {"signal_dbm": -107.0}),
        # Data needs packet service: CREG alone (voice, SMS) is not what the report calls
        # registered, and a detached modem says so.
        (
            "voice_only",
            {"registration": f.REG_SEARCHING, "cs_registration": f.REG_HOME, "attached": False},
        ),
        ("detached", {"registration": f.REG_HOME, "attached": False}),
        ("garbage", {"sim": f.SIM_READY, "registration": f.REG_HOME, "signal_dbm": -73.0}),
        ("urc_storm", {"sim": f.SIM_READY, "registration": f.REG_HOME, "signal_dbm": -73.0}),
    ],
)
def test_scenarios(sims: Any, scenario: str, expected: dict[str, Any]) -> None:
    r = probe_sim(sims(scenario, ident=1))
    assert r.responding
    for key, value in expected.items():
        assert getattr(r, key) == value, key


def test_rsrp_is_preferred_on_lte(sims: Any) -> None:
    r = probe_sim(sims("healthy", rsrp=50))
    assert (r.signal_dbm, r.signal_source) == (-91.0, "rsrp")


def test_fading_signal_steps_per_check(sims: Any) -> None:
    sim = sims("fading")
    memory = ProbeMemory()
    seen = [probe_sim(sim, memory=memory).signal_dbm for _ in range(6)]
    assert seen == [-73.0, -73.0, -89.0, -101.0, -107.0, -109.0]


def test_garbage_is_counted_and_urcs_kept(sims: Any) -> None:
    sim = sims("garbage")
    with AtTransport(sim.port, timeout=2.0) as t:
        assert t.command("AT+CSQ").lines == ("+CSQ: 20,99",)
        assert t.noise_bytes > 0
    storm = sims("urc_storm", seed=3)
    with AtTransport(storm.port, timeout=2.0) as t:
        assert t.command("AT+CREG?").lines == ("+CREG: 0,1",)
        assert t.take_urcs()


def test_hung_modem_is_reported_within_the_timeouts(sims: Any) -> None:
    sim = sims("hang")
    start = time.monotonic()
    r = probe_sim(sim, timeout=0.3)
    assert not r.responding and r.error
    assert time.monotonic() - start < 30  # bounded, not a timing assertion
    # The simulator may log the last AT a moment after the probe gave up on it.
    assert wait_until(lambda: sim.commands.count("AT") >= 3, 10.0)
    assert sim.commands == ["AT", "AT", "AT"]  # retried AT, nothing else sent to a silent modem


def test_half_wedged_modem_costs_one_timeout_and_is_no_useful_answer(sims: Any) -> None:
    sim = sims("half_wedged")
    r = probe_sim(sim, timeout=0.3)
    assert not r.responding
    assert r.error == "no useful answer: answers AT, then nothing to ATE0 within 0.3 s"
    # Nothing more was asked after the first command left without an answer.
    assert sim.commands == ["AT", "ATE0"]


def test_pin_is_entered_once_per_boot_and_never_a_puk(sims: Any, tmp_path: Path) -> None:
    sim = sims("pin", pin="4321")
    ledger_path = tmp_path / "run" / "pin-tried"
    memory = ProbeMemory()
    pins = PinLedger(ledger_path)
    for _ in range(3):
        r = probe_sim(sim, pin="1111", pins=pins, memory=memory)
        assert r.sim == f.SIM_PIN
    assert sim.pin_entries == 1 and memory.pin_entries == 1
    # An agent restarted in the same boot reads the ledger and does not try again.
    probe_sim(sim, pin="1111", pins=PinLedger(ledger_path))
    assert sim.pin_entries == 1

    good = sims("pin", ident=2, pin="4321")
    r = probe_sim(good, pin="4321", pins=PinLedger(tmp_path / "other"))
    assert r.sim == f.SIM_READY and r.registration == f.REG_HOME and good.pin_entries == 1

    puk = sims("puk", ident=3)
    r = probe_sim(puk, pin="1234", pins=PinLedger())
    assert r.sim == f.SIM_PUK and puk.pin_entries == 0


def test_no_pin_without_a_ledger(sims: Any) -> None:
    sim = sims("pin", pin="1234")
    assert probe_sim(sim, pin="1234").sim == f.SIM_PIN
    assert sim.pin_entries == 0


def test_transport_timeout_and_missing_port(tmp_path: Path) -> None:
    # loop:// echoes the command back and never says OK.
    with AtTransport("loop://", timeout=0.2) as t, pytest.raises(AtTimeout, match="AT"):
        t.command("AT")
    with pytest.raises(PortGone, match="cannot open"):
        AtTransport(str(tmp_path / "nope")).open()


def test_modems_report_table_and_json(sims: Any, tmp_path: Path) -> None:
    a = sims("weak", ident=1, iccid_command="AT+QCCID")
    b = sims("iot_home", ident=2, iccid_command="AT+CCID")
    c = sims("no_sim", ident=3, iccid_command="AT+CRSM")
    cfg = config(
        [
            {"name": "a", "port": a.port},
            {"name": "b", "port": b.port},
            {"name": "c", "port": c.port},
        ]
    )
    rep = modems_report(cfg)
    assert rep.chosen == "b"
    assert [r.name for r in rep.reports] == ["a", "b", "c"]
    assert rep.problems["c"] is not None and rep.problems["c"].code == "sim_missing"

    table = render_table(rep).splitlines()
    assert table[0].split()[:3] == ["name", "port", "ICCID"]
    row_b = next(line for line in table if line.startswith("b "))
    assert identity(2)[0] in row_b and "26201" in row_b and "chosen" in row_b
    row_c = next(line for line in table if line.startswith("c "))
    assert "absent" in row_c and "no SIM" in row_c
    row_a = next(line for line in table if line.startswith("a "))
    assert "-107 RSSI" in row_a

    doc = json.loads(render_json(rep))
    assert doc["chosen"] == "b"
    assert doc["modems"][0]["signal_dbm"] == -107.0
    assert doc["modems"][2]["problem"]["code"] == "sim_missing"


def test_modems_report_with_a_missing_port_and_a_glob_port(sims: Any, tmp_path: Path) -> None:
    sims("healthy", ident=1, link=tmp_path / "by-id" / "usb-Quectel_EG25-if02-port0")
    cfg = config(
        [
            {"name": "a", "port": str(tmp_path / "gone")},
            {"name": "b", "port": str(tmp_path / "by-id" / "*Quectel*-if02*")},
        ]
    )
    rep = modems_report(cfg)
    assert rep.chosen == "b"
    assert rep.reports[1].iccid == identity(1)[0]
    assert not rep.reports[0].responding and "no such port" in (rep.reports[0].error or "")
    assert "no answer" in render_table(rep)


def test_data_not_voice_decides_at_start(sims: Any) -> None:
    a = sims("voice_only", ident=1)
    b = sims("detached", ident=2, iccid_command="AT+CCID")
    c = sims("healthy", ident=3, iccid_command="AT+CRSM")
    rep = modems_report(
        config([{"name": n, "port": s.port} for n, s in zip("abc", (a, b, c), strict=True)])
    )
    assert rep.chosen == "c"
    problems = {n: p.code for n, p in rep.problems.items() if p is not None}
    assert problems == {"a": "no_packet_service", "b": "not_attached"}
    assert "primary a: registered for voice only" in rep.why.text


def test_a_primary_above_its_rsrp_minimum_is_chosen_at_start(sims: Any) -> None:
    # RSRP -101 dBm (CESQ 40) on LTE: above min_rsrp_dbm -105, inside the 6 dB margin.
    a = sims("healthy", ident=1, rsrp=40)
    b = sims("healthy", ident=2, iccid_command="AT+CCID")
    rep = modems_report(
        config(
            [{"name": "a", "port": a.port}, {"name": "b", "port": b.port}],
            min_rsrp_dbm=-105.0,
            signal_hysteresis_db=6.0,
        )
    )
    assert rep.reports[0].signal_dbm == -101.0 and rep.reports[0].signal_source == "rsrp"
    assert (rep.chosen, rep.why.text) == ("a", "a chosen at start: the primary")
    assert "-101 RSRP" in render_table(rep).splitlines()[1]


def test_home_is_per_sim(sims: Any) -> None:
    # Two SIMs of two German operators, both on 26202: home for b's SIM (its IMSI says 26202),
    # national roaming for a's, even though 26202 is another SIM's home.
    a = sims("national_roaming", ident=1)
    b = sims("healthy", ident=2, imsi="262020000000002", operator=NATIONAL_OPERATOR)
    ra, rb = probe_sim(a), probe_sim(b)
    assert (ra.home_network, ra.operator, ra.roaming) == ("26201", "26202", True)
    assert (rb.home_network, rb.operator, rb.roaming) == ("26202", "26202", False)
    # The deprecated list for every modem still applies to a modem without its own...
    assert probe_sim(a, all_home=["26202"]).roaming is False
    # ... and a modem's own list replaces it.
    assert probe_sim(a, all_home=["26202"], home=[]).roaming is True
    assert probe_sim(a, home=["26202"]).roaming is False


def test_a_network_that_says_home_is_home_even_if_unlisted(sims: Any) -> None:
    sim = sims("healthy", operator=FOREIGN_OPERATOR)  # stat 1 on a network not in any list
    r = probe_sim(sim, home=["26203"])
    assert (r.registration, r.roaming, r.home_network) == (f.REG_HOME, False, "26201")


@pytest.mark.parametrize("mnc_length", [3, None])
def test_three_digit_mnc(sims: Any, mnc_length: int | None) -> None:
    # A US SIM (MCC 310, MNC 410) that its own network reports as roaming: home either way,
    # from EF_AD's MNC length or, without it, from the registered network's code.
    imsi = "310410000000001"
    sim = sims("iot_home", imsi=imsi, operator="310410", mnc_length=mnc_length)
    r = probe_sim(sim)
    assert (r.registration, r.home_network, r.roaming) == (f.REG_ROAMING, "310410", False)
    # On another network of the same country, with the MNC length unknown: roaming, and the
    # home network is honestly not known.
    sim.set(operator="310260")
    r = probe_sim(sim)
    assert r.roaming is True
    assert r.home_network == ("310410" if mnc_length == 3 else None)


@pytest.mark.parametrize("fmt", [0, 1])
def test_operator_format_is_put_back(sims: Any, fmt: int) -> None:
    sim = sims("healthy", cops_format=fmt)
    assert probe_sim(sim).operator == "26201"
    assert sim.state.cops_format == fmt  # another user of the modem sees what it set
    cops = [c for c in sim.commands if c.startswith("AT+COPS")]
    assert cops == ["AT+COPS?", "AT+COPS=3,2", "AT+COPS?", f"AT+COPS=3,{fmt}"]


def test_a_numeric_operator_format_is_left_untouched(sims: Any) -> None:
    sim = sims("healthy", cops_format=2)
    assert probe_sim(sim).operator == "26201"
    assert [c for c in sim.commands if c.startswith("AT+COPS")] == ["AT+COPS?"]


def test_reasons_name_each_modem_once(sims: Any) -> None:
    a = sims("no_sim", ident=1)
    b = sims("healthy", ident=2, iccid_command="AT+CICCID")
    rep = modems_report(config([{"name": "a", "port": a.port}, {"name": "b", "port": b.port}]))
    assert rep.why.text == (
        "b chosen at start: the first usable modem in order (primary a: no SIM card)"
    )
    problem = rep.problems["a"]
    assert problem is not None and problem.text == "no SIM card"
    row_a = next(line for line in render_table(rep).splitlines() if line.startswith("a "))
    assert row_a.endswith("  no SIM card")
