"""Restarting the agent in a parked car keeps it parked: the state comes from the car's inputs
(an ignition-off value, or every bus silent for ``park_after``), so the new run neither claims
to drive (status, data) nor wakes the modem, and it puts the box back to sleep.

Real parts: the agent in this process on python-can's ``virtual`` bus, a real mosquitto (every
retained status and update collected), the modem simulator on a pty (it records AT+CFUN), and a
sleep command that records its calls.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import DATA_TOPIC, STATUS_TOPIC
from tests.support.power import (
    BODY,
    ENGINE,
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


def _restart_parked(tmp_path: Path, broker: Mosquitto, power: str, *, ignition: bool) -> None:
    with ExitStack() as stack:
        rig = stack.enter_context(modem_car(tmp_path, broker.port, power))
        cfg, sim, calls = rig.cfg, rig.sim, rig.calls
        statuses = stack.enter_context(Subscriber(broker, STATUS_TOPIC, client_id="sub-s"))
        data = stack.enter_context(Subscriber(broker, DATA_TOPIC, client_id="sub-d"))
        car = stack.enter_context(car_bus(rig.channel))

        # First run: a drive, then the car parks.
        with running(cfg, dry_run=False) as (agent, _):
            frame(car, BODY, RUN)
            frame(car, ENGINE, 1)
            wait_for(lambda: state(agent) == "driving", WAIT, "driving")
            if ignition:
                frame(car, BODY, OFF)
            wait_for(lambda: state(agent) == "parked", WAIT, "parked")
            wait_for(lambda: sleep_calls(calls) == 1, WAIT, "sleep command run")
            wait_for(lambda: sim.cfun_changes[-1:] == [4], WAIT, "modem in low power")
        cfun_before = list(sim.cfun_changes)

        # The restart, in the same parked car.
        with running(cfg, dry_run=False) as (agent, _):
            boot = agent.boot_id
            if ignition:
                frame(car, BODY, OFF)  # the cyclic ignition message, still saying off
            wait_for(lambda: sleep_calls(calls) == 2, WAIT, "box put back to sleep")
            assert state(agent) == "parked"
            wait_for(lambda: sim.cfun_changes[-1:] == [4], WAIT, "modem in low power")
            reason = agent.status()["power"]["reason"]
            # Every status this run published (at connect, at the settled state) said parked.
            wait_for(
                lambda: any(
                    json.loads(m.payload).get("power", {}).get("reason") == reason
                    for m in statuses.messages
                ),
                WAIT,
                "the parked status published",
            )
            mine = [json.loads(m.payload) for m in statuses.messages]
            mine = [d for d in mine if d.get("boot") == boot]
            assert mine and all(d["power"]["state"] == "parked" for d in mine), mine
            assert 1 not in sim.cfun_changes[len(cfun_before) :], sim.cfun_changes
            schema = agent.catalog.schema
            assert "driving" not in power_events(decoded(data.messages, schema), boot)

            # And the car still wakes it.
            frame(car, BODY, RUN)
            frame(car, ENGINE, 2)
            wait_for(lambda: state(agent) == "driving", WAIT, "woken")
            wait_for(lambda: sim.cfun_changes[-1:] == [1], WAIT, "modem at full power")
            wait_for(
                lambda: power_events(decoded(data.messages, schema), boot)[-1:] == ["driving"],
                WAIT,
                "the wake in the data",
            )


def test_restart_with_the_ignition_off_stays_parked(tmp_path: Path, broker: Mosquitto) -> None:
    _restart_parked(tmp_path, broker, IGNITION + "park_upload = 1\n", ignition=True)


def test_restart_with_every_bus_silent_stays_parked(tmp_path: Path, broker: Mosquitto) -> None:
    _restart_parked(
        tmp_path, broker, "[power]\npark_after = 0.5\npark_upload = 1\n", ignition=False
    )
