"""Low voltage from a CAN signal (``[power] voltage = "Message.Signal"``): a sag below
``cutoff_volts`` for ``cutoff_after`` cuts off (radio off, sleep command), the band between the
cut-off and ``resume_volts`` keeps it cut off, and only ``resume_volts`` ends it: back to
driving (radio on) with the ignition on, or still parked (radio left off) with it off.

Real parts: the agent in this process on python-can's ``virtual`` bus, a real mosquitto (events
decoded as a backend reads them), the modem simulator on a pty (it records AT+CFUN), and a sleep
command that records its calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import can

from agent.daemon import Agent
from agent.modem.simulator import ModemSimulator
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import DATA_TOPIC
from tests.support.power import (
    BATTERY,
    BODY,
    IGNITION,
    OFF,
    RUN,
    WAIT,
    car_bus,
    decoded,
    frame,
    modem_car,
    power_events,
    running,
    sleep_calls,
    state,
)
from tests.support.wait import wait_for

CUTOFF = "battery 11.80 V below 12.2 V for 0.3 s"


class Car:
    def __init__(self, agent: Agent, sim: ModemSimulator, data: Subscriber, bus: can.BusABC):
        self.agent, self.sim, self.data, self.bus = agent, sim, data, bus

    def volts(self, volts: float) -> None:
        """Send a battery reading; return once the lifecycle has read it."""
        frame(self.bus, BATTERY, round(volts * 100))
        wait_for(lambda: self.agent.status()["power"]["volts"] == volts, WAIT, f"{volts} V read")

    def events(self) -> list[str]:
        return power_events(decoded(self.data.messages, self.agent.catalog.schema))


@contextmanager
def car(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Car, Path]]:
    power = IGNITION + 'park_upload = 1\nvoltage = "Battery.Volts"\ncutoff_volts = 12.2\n'
    power += "cutoff_after = 0.3\nresume_volts = 12.6\n"
    with ExitStack() as stack:
        rig = stack.enter_context(modem_car(tmp_path, broker.port, power))
        data = stack.enter_context(Subscriber(broker, DATA_TOPIC, client_id="sub-d"))
        agent, _ = stack.enter_context(running(rig.cfg, dry_run=False))
        bus = stack.enter_context(car_bus(rig.channel))
        yield Car(agent, rig.sim, data, bus), rig.calls


def test_a_sag_while_driving_cuts_off_holds_in_the_band_and_resumes_driving(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with car(tmp_path, broker) as (c, calls):
        frame(c.bus, BODY, RUN)
        c.volts(12.5)
        wait_for(lambda: state(c.agent) == "driving", WAIT, "driving")
        c.volts(11.8)
        wait_for(lambda: state(c.agent) == "low_voltage", WAIT, "cut off")
        doc = c.agent.status()["power"]
        assert doc["reason"] == CUTOFF and doc["volts"] == 11.8
        wait_for(lambda: sleep_calls(calls) == 1, WAIT, "sleep command run")
        wait_for(lambda: c.sim.cfun_changes[-1:] == [4], WAIT, "radio off")
        # The hysteresis band: above the cut-off but below resume_volts stays cut off, for
        # longer than cutoff_after and across readings.
        for volts in (12.3, 12.59, 12.4):
            c.volts(volts)
            assert state(c.agent) == "low_voltage"
        assert c.agent.status()["power"]["reason"] == CUTOFF
        assert c.sim.cfun_changes[-1] == 4 and sleep_calls(calls) == 1
        c.volts(12.75)
        wait_for(lambda: state(c.agent) == "driving", WAIT, "resumed")
        reason = c.agent.status()["power"]["reason"]
        assert reason == "battery 12.75 V back above 12.6 V; ignition on"
        wait_for(lambda: c.sim.cfun_changes[-1:] == [1], WAIT, "radio on")
        # Each transition once in the data (the first decided the state after the start).
        wait_for(lambda: c.events() == ["driving", "low_voltage", "driving"], WAIT, "the events")
        assert sleep_calls(calls) == 1


def test_a_sag_while_parked_recovers_into_parked_without_waking_the_radio(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with car(tmp_path, broker) as (c, calls):
        frame(c.bus, BODY, OFF)
        c.volts(12.5)
        wait_for(lambda: sleep_calls(calls) == 1, WAIT, "parked and asleep")
        assert state(c.agent) == "parked"
        wait_for(lambda: c.sim.cfun_changes[-1:] == [4], WAIT, "radio off")
        c.volts(11.8)
        wait_for(lambda: state(c.agent) == "low_voltage", WAIT, "cut off")
        wait_for(lambda: sleep_calls(calls) == 2, WAIT, "sleep command run again")
        c.volts(12.4)
        assert state(c.agent) == "low_voltage"
        c.volts(12.8)
        wait_for(lambda: state(c.agent) == "parked", WAIT, "recovered")
        reason = c.agent.status()["power"]["reason"]
        assert reason == "battery 12.80 V back above 12.6 V; still parked"
        # Still parked: the radio never came on, the box was not woken.
        assert 1 not in c.sim.cfun_changes and sleep_calls(calls) == 2
        # The car wakes: the data (held while the link was paused) has each transition once.
        frame(c.bus, BODY, RUN)
        wait_for(lambda: state(c.agent) == "driving", WAIT, "driving")
        wait_for(lambda: c.sim.cfun_changes[-1:] == [1], WAIT, "radio on")
        wait_for(
            lambda: c.events() == ["parked", "low_voltage", "parked", "driving"],
            WAIT,
            "the events",
        )
