"""GNSS from a modem's AT port through the modem manager, against fake modems on real ptys."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from agent.config import ModemConfig, ModemPolicyConfig
from agent.modem.handle import Recovery
from agent.modem.manager import ModemManager
from agent.modem.report import ModemBusy, ModemError
from agent.modem.simgnss import SIMCOM, GnssScript
from agent.modem.simulator import ModemSimulator
from agent.policy.privacy import PrivacyFilter
from agent.policy.track import TrackPolicy, TrackSampler
from agent.sources.atgnss import AtGnssSource
from tests.support.nmea import M_LAT, north_of
from tests.support.wait import wait_for

LAT0, LON0 = 48.1, 11.5
TRACK = tuple(
    (north_of(LAT0, 25.0 * i), LON0 + 60.0 * math.sin(i / 15.0) / (M_LAT * 0.6678))
    for i in range(20)
)


class Rig:
    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack

    def modem(self, script: GnssScript, **state: Any) -> tuple[ModemSimulator, ModemManager]:
        sim = self.stack.enter_context(ModemSimulator("healthy", gnss=script, **state))
        mgr = ModemManager(
            [ModemConfig(name="a", port=sim.port)],
            ModemPolicyConfig(check_interval=0.2, command_timeout=0.5),
            recovery=Recovery(reopen_interval=60.0, reset_after=100, rescan_interval=60.0),
        )
        mgr.start()
        self.stack.callback(mgr.stop, 5.0)
        wait_for(lambda: mgr.active() == "a", 30, "the modem chosen")
        return sim, mgr

    def source(self, mgr: ModemManager, **kw: Any) -> AtGnssSource:
        params: dict[str, Any] = {
            "interval": 0.05,
            "command_timeout": 1.0,
            "down_after": 0.5,
            "track": TrackSampler(TrackPolicy(mode="rules", min_interval=0.0, max_interval=0.0)),
            "privacy": PrivacyFilter(trip_end_radius=0.0),
        }
        params.update(kw)
        src = AtGnssSource(mgr, "a", **params)
        src.start()
        self.stack.callback(src.stop)
        return src


@pytest.fixture
def rig() -> Iterator[Rig]:
    with ExitStack() as stack:
        yield Rig(stack)


def test_a_quectel_track_arrives_as_fixes_between_the_managers_probes(rig: Rig) -> None:
    script = GnssScript("quectel", track=TRACK)
    sim, mgr = rig.modem(script)
    src = rig.source(mgr)
    wait_for(lambda: src.reader.counters["fixes"] == len(TRACK), 30, "the whole track")
    wait_for(lambda: src.state == "no fix", 10, "no fix once the track ends")
    checks = mgr.status()["counters"]["checks"]
    wait_for(lambda: mgr.status()["counters"]["checks"] > checks + 1, 30, "probes go on")
    src.stop()
    fixes = src.take()
    assert [(f.lat, f.lon) for f in fixes] == [(round(a, 5), round(b, 5)) for a, b in TRACK]
    assert [f.t - fixes[0].t for f in fixes] == [1000 * i for i in range(len(TRACK))]
    assert (fixes[0].altitude, fixes[0].heading, fixes[0].satellites) == (520.0, 12.5, 9)
    assert script.enables == 1 and sim.commands.count("AT+QGPS=1") == 1
    assert "AT+CGMI" in sim.commands  # the dialect from the modem's maker
    status = mgr.status()["modems"]["a"]
    assert status["usable"] and status["counters"]["asked"] >= len(TRACK)
    assert src.reader.counters["no_fix"] > 0  # +CME ERROR: 516 past the end of the track


def test_a_simcom_engine_is_switched_on_again_after_a_modem_reset(rig: Rig) -> None:
    script = GnssScript("simcom", track=TRACK)
    sim, mgr = rig.modem(script, manufacturer=SIMCOM)
    src = rig.source(mgr, enable_interval=0.1)
    wait_for(lambda: src.reader.counters["fixes"] >= 5, 30, "fixes")
    script.reset()  # the modem restarted: its engine is off, CGNSINF says run 0
    wait_for(lambda: script.enables == 2, 30, "the engine switched on again")
    wait_for(lambda: src.reader.counters["fixes"] == len(TRACK), 30, "the rest of the track")
    assert src.vendor == "simcom" and "AT+CGNSINF" in sim.commands
    fix = src.take()[0]
    assert (fix.speed, fix.heading, fix.hdop, fix.accuracy) == (50.0, 12.5, 0.8, 4.0)


@pytest.mark.parametrize(
    ("mode", "counter"),
    [("error", "errors"), ("garbage", "malformed"), ("silent", "unanswered")],
)
def test_an_engine_that_fails_is_gnss_down_and_counted(rig: Rig, mode: str, counter: str) -> None:
    script = GnssScript("quectel", track=TRACK * 50)
    sim, mgr = rig.modem(script)
    src = rig.source(mgr, vendor="quectel")
    wait_for(lambda: src.state == "fix", 30, "a fix")
    script.mode = mode  # one attribute: the simulator's thread sees it whole
    wait_for(lambda: src.state == "gnss down", 30, "gnss down")
    wait_for(lambda: src.reader.counters[counter] >= 2, 30, f"{counter} counted")
    assert "AT+CGMI" not in sim.commands  # the configured vendor is used
    # The modem itself still answers the manager's probes.
    checks = mgr.status()["counters"]["checks"]
    wait_for(lambda: mgr.status()["counters"]["checks"] > checks, 30, "a probe")
    assert mgr.status()["modems"]["a"]["usable"]
    script.mode = "fix"
    wait_for(lambda: src.state == "fix", 30, "a fix again")


def test_a_callers_command_is_bounded_and_names_its_modem(rig: Rig) -> None:
    sim, mgr = rig.modem(GnssScript("quectel"))
    assert mgr.run_command("a", "AT+QGPS?", timeout=5.0).lines == ("+QGPS: 0",)
    with pytest.raises(ModemError, match="no modem named 'b'"):
        mgr.run_command("b", "AT", timeout=1.0)
    sim.hang()  # the next probe holds the port for its AT tries
    wait_for(lambda: sim.commands[-1] == "AT", 30, "a probe waiting for its AT")
    with pytest.raises(ModemError) as err:
        mgr.run_command("a", "AT+QGPSLOC=2", timeout=0.2)
    assert isinstance(err.value, ModemBusy) or "no answer" in str(err.value)


@pytest.mark.parametrize(
    ("vendor", "query", "off"),
    [("quectel", "AT+QGPSLOC=2", "AT+QGPSEND"), ("simcom", "AT+CGNSINF", "AT+CGNSPWR=0")],
)
def test_a_paused_source_switches_the_engine_off_and_stops_polling(
    rig: Rig, vendor: str, query: str, off: str
) -> None:
    script = GnssScript(vendor, track=TRACK * 50)
    sim, mgr = rig.modem(script, **({"manufacturer": SIMCOM} if vendor == "simcom" else {}))
    src = rig.source(mgr, vendor=vendor)
    wait_for(lambda: src.state == "fix", 30, "a fix")
    assert src.pause("parked")
    assert src.state == "paused" and not script.engine_on
    assert sim.commands.count(off) == 1
    # The manager goes on probing the modem; the source asks nothing once it switched off.
    checks = mgr.status()["counters"]["checks"]
    wait_for(lambda: mgr.status()["counters"]["checks"] >= checks + 3, 30, "probes go on")
    assert query not in sim.commands[sim.commands.index(off) :]
    src.resume()
    wait_for(lambda: script.enables == 2, 30, "the engine switched on again")
    steps = script.step
    wait_for(lambda: script.step > steps + 2 and src.state == "fix", 30, "fixes again")
