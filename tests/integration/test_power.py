"""The vehicle lifecycle in the whole agent: ignition cycles, silent buses, a battery sag.

The agent runs in this process (a thread) so python-can's ``virtual`` bus can feed it; the
modem is the simulator on a real pseudo-terminal (it records every AT+CFUN), updates and the
retained status go through a real mosquitto, and the sleep command is a small script that
records its calls in a file.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agent.catalog import POWER_SIGNAL
from agent.config import load_config
from agent.daemon import Agent, prepare
from agent.spime import decode_update
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import DATA_TOPIC, STATUS_TOPIC, retained_status
from tests.support.power import (
    IGNITION,
    WAIT,
    car_bus,
    frame,
    modem_car,
    new_channel,
    power_config,
    publishing,
    running,
    sleep_command,
    state,
)
from tests.support.wait import wait_for


def test_ignition_cycles_park_and_wake_modem_and_sleep_with_nothing_lost(
    tmp_path: Path, broker: Mosquitto
) -> None:
    cycles = 20
    power = '[power]\nignition = "Body.Ignition"\nignition_on = ["Run", 3]\n'
    with ExitStack() as stack:
        rig = stack.enter_context(
            modem_car(tmp_path, broker.port, power + "park_after = 600\npark_upload = 1\n")
        )
        sim, calls = rig.sim, rig.calls
        data = stack.enter_context(
            Subscriber(broker, DATA_TOPIC, reconnect=True, client_id="sub-d")
        )
        agent, _ = stack.enter_context(running(rig.cfg, dry_run=False))
        car = stack.enter_context(car_bus(rig.channel))
        sent: set[int] = set()
        value = 1
        for cycle in range(1, cycles + 1):
            frame(car, 0x200, 2)  # Run
            wait_for(lambda: state(agent) == "driving", WAIT, "driving")
            for _ in range(10):
                frame(car, 0x100, value)
                sent.add(value)
                value += 1
            if cycle % 2 == 0:
                broker.stop()  # the backlog waits in the outbox across the park
            frame(car, 0x200, 0)  # Off
            wait_for(lambda: state(agent) == "parked", WAIT, "parked")
            wait_for(
                lambda n=cycle: calls.exists() and len(calls.read_text().splitlines()) == n,
                WAIT,
                "sleep command called",
            )
            assert sim.cfun_changes[-1] == 4
            if cycle % 2 == 0:
                # Back first for the subscriber only, so nothing the agent sends after the
                # restart can slip past it (the agent's client id, its VIN, is refused).
                broker.clientid_prefixes = "sub-"
                broker.start()
                assert data.wait_subscribed(WAIT)
                broker.clientid_prefixes = None
                broker.reload()
        doc = agent.status()["power"]
        assert doc["reason"] == "ignition off" and doc["volts"] is None
        frame(car, 0x200, 2)
        wait_for(lambda: state(agent) == "driving", WAIT, "driving again")
        wait_for(lambda: sim.cfun_changes[-1:] == [1], WAIT, "modem at full power")
        # The first value decided the state after the start: radio on (it may have been off).
        assert sim.cfun_changes == [1] + [4, 1] * cycles
        assert agent.status()["power"]["reason"] == "ignition on"

        def received() -> tuple[set[int], list[str]]:
            values: set[int] = set()
            states: list[str] = []
            for m in data.messages:
                for s in decode_update(m.payload, agent.catalog.schema)["samples"]:
                    if s["signal"] == "Engine.Counter":
                        values.add(int(s["value"]))
                    elif s["signal"] == POWER_SIGNAL:
                        states.append(s["value"])
            return values, states

        wait_for(lambda: sent <= received()[0], WAIT, "every value delivered")
        # Each transition as an event in the data: a park and a wake per cycle (the first "Run"
        # found the agent driving already). A broker restart may repeat a QoS 1 delivery.
        wait_for(lambda: len(received()[1]) >= 2 * cycles, WAIT, "every transition")
        assert set(received()[1]) == {"parked", "driving"}
        assert retained_status(broker)["power"]["state"] == "driving"


def test_every_bus_silent_parks_and_a_frame_wakes(tmp_path: Path) -> None:
    channel = new_channel()
    cfg = power_config(tmp_path, channel, "[power]\npark_after = 0.5\n")
    with (
        running(cfg, dry_run=True) as (agent, seen),
        car_bus(channel) as car,
    ):
        frame(car, 0x100, 7)
        # (Before the frame the agent was parked only because it had just started.)
        wait_for(
            lambda: agent.status()["power"]["reason"] == "every bus silent for 0.5 s",
            WAIT,
            "parked for silence",
        )
        assert state(agent) == "parked"
        # Parked, nothing polls: the loop blocks for the heartbeat, the readers for seconds.
        wait_for(lambda: agent.pipeline.idle_timeout == 60.0, WAIT, "idle pipeline")
        assert [s.idle_recv for s in agent.pipeline.sources] == [5.0]
        frame(car, 0x100, 8)
        wait_for(lambda: state(agent) == "driving", WAIT, "woken by a frame")
        assert agent.status()["power"]["reason"] == "bus activity"
        wait_for(lambda: agent.pipeline.idle_timeout is None, WAIT, "pipeline running")
        assert [s.idle_recv for s in agent.pipeline.sources] == [0.05]

        def events() -> list[Any]:
            return [s["value"] for u in seen for s in u["samples"] if s["signal"] == POWER_SIGNAL]

        # The first frame decided the state after the start, then the park and the wake.
        wait_for(
            lambda: events() == ["driving", "parked", "driving"], WAIT, "transitions in the data"
        )


def test_voltage_sag_below_cutoff_then_recovery(tmp_path: Path) -> None:
    channel = new_channel()
    volts = tmp_path / "in_voltage0_raw"
    volts.write_text("12600\n")
    calls = tmp_path / "sleep-calls"
    cfg = power_config(
        tmp_path,
        channel,
        "[power]\npark_after = 600\ncutoff_after = 0.3\nheartbeat = 0.1\n"
        f'voltage_file = "{volts}"\nvoltage_scale = 0.001\n' + sleep_command(tmp_path, calls),
    )
    with running(cfg, dry_run=True) as (agent, _):
        wait_for(lambda: agent.status()["power"]["volts"] == 12.6, WAIT, "voltage read")
        volts.write_text("11900\n")
        wait_for(lambda: state(agent) == "low_voltage", WAIT, "low voltage")
        doc = agent.status()["power"]
        assert doc["reason"] == "battery 11.90 V below 12.2 V for 0.3 s"
        wait_for(lambda: calls.exists(), WAIT, "sleep command run")
        volts.write_text("12400\n")  # above the cut-off, below resume_volts: stays cut off
        wait_for(lambda: agent.status()["power"]["volts"] == 12.4, WAIT, "voltage read")
        assert state(agent) == "low_voltage"
        volts.write_text("12900\n")
        wait_for(lambda: state(agent) != "low_voltage", WAIT, "recovered")
        assert "back above 12.6 V" in agent.status()["power"]["reason"]


def _statuses(sub: Subscriber) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.messages]


def _link(agent: Agent) -> tuple[str, str | None]:
    u = agent.uplink.stats()
    return u.state, u.paused


def test_parking_pauses_the_link_cleanly_and_a_wake_reconnects_at_once(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Parked means no radio traffic: after the park upload the uplink says why in the retained
    status and disconnects cleanly (the last will never fires), makes no attempt while parked,
    also with the broker gone, and connects at once on the wake although its reconnect delays
    are a minute or more."""
    channel = new_channel()
    cfg = power_config(
        tmp_path,
        channel,
        publishing(broker.port, tmp_path, reconnect=(60, 120)) + IGNITION + "park_upload = 1\n",
    )
    with ExitStack() as stack:
        status = stack.enter_context(Subscriber(broker, STATUS_TOPIC, reconnect=True))
        data = stack.enter_context(Subscriber(broker, DATA_TOPIC, reconnect=True))
        agent, _ = stack.enter_context(running(cfg, dry_run=False))
        car = stack.enter_context(car_bus(channel))
        wait_for(lambda: _link(agent)[0] == "connected", WAIT, "connected")
        sent: set[int] = set()
        for cycle in range(2):
            frame(car, 0x200, 2)  # Run
            wait_for(lambda: state(agent) == "driving", WAIT, "driving")
            for _ in range(5):
                value = len(sent) + 1
                frame(car, 0x100, value)
                sent.add(value)
            if cycle == 1:
                # The broker goes away while driving: the uplink waits a minute or more
                # between attempts, and parking must end that wait too.
                wait_for(lambda: _link(agent)[0] == "connected", WAIT, "connected")
                broker.stop()
                wait_for(lambda: _link(agent)[0] == "disconnected", WAIT, "link lost")
            frame(car, 0x200, 0)  # Off
            wait_for(lambda: _link(agent) == ("paused", "parked"), WAIT, "link paused")
            assert state(agent) == "parked"
            attempts = agent.uplink.stats().attempts
            if cycle == 0:
                doc = wait_for(
                    lambda: [d for d in _statuses(status) if d.get("reason") == "paused: parked"],
                    WAIT,
                    "the paused status",
                )[0]
                assert doc["state"] == "offline" and doc["power"]["state"] == "parked"
                assert doc["uplink"]["state"] == "paused"
                assert doc["uplink"]["paused"] == "parked"
            else:
                broker.start()  # back while the car is parked: no attempt until the wake
                assert status.wait_subscribed(WAIT) and data.wait_subscribed(WAIT)
            assert agent.uplink.stats().attempts == attempts
            frame(car, 0x200, 2)  # Run: the wake
            # Within WAIT (30 s), half the shortest reconnect delay: no backoff was waited.
            wait_for(lambda: _link(agent)[0] == "connected", WAIT, "reconnected on the wake")
            assert agent.uplink.stats().attempts == attempts + 1
            if cycle == 0:
                # A will would reach the subscriber before the status of the new connection.
                wait_for(lambda: _statuses(status)[-1]["state"] == "online", WAIT, "online")
                reasons = [d.get("reason") for d in _statuses(status)]
                assert reasons.count("paused: parked") == 1, reasons
                assert "connection lost" not in reasons, reasons

        def values() -> set[int]:
            got: set[int] = set()
            for m in data.messages:
                for smp in decode_update(m.payload, agent.catalog.schema)["samples"]:
                    if smp["signal"] == "Engine.Counter":
                        got.add(int(smp["value"]))
            return got

        wait_for(lambda: sent <= values(), WAIT, "every value delivered")


def test_low_voltage_pauses_the_link_until_the_car_wakes(tmp_path: Path, broker: Mosquitto) -> None:
    channel = new_channel()
    volts = tmp_path / "in_voltage0_raw"
    volts.write_text("12600\n")
    cfg = power_config(
        tmp_path,
        channel,
        publishing(broker.port, tmp_path, reconnect=(60, 120))
        + "[power]\npark_after = 600\ncutoff_after = 0.3\nheartbeat = 0.1\n"
        f'voltage_file = "{volts}"\nvoltage_scale = 0.001\n',
    )
    with (
        Subscriber(broker, STATUS_TOPIC) as status,
        running(cfg, dry_run=False) as (agent, _),
        car_bus(channel) as car,
    ):
        wait_for(lambda: _link(agent)[0] == "connected", WAIT, "connected")
        volts.write_text("11900\n")
        wait_for(lambda: _link(agent) == ("paused", "low voltage"), WAIT, "link paused")
        assert state(agent) == "low_voltage"
        wait_for(
            lambda: any(d.get("reason") == "paused: low voltage" for d in _statuses(status)),
            WAIT,
            "the paused status",
        )
        frame(car, 0x100, 1)
        volts.write_text("12900\n")
        wait_for(lambda: state(agent) == "driving", WAIT, "driving after the recovery")
        wait_for(lambda: _link(agent) == ("connected", None), WAIT, "reconnected at once")
        assert "connection lost" not in [d.get("reason") for d in _statuses(status)]


def test_the_state_event_is_sent_only_with_driving_consent(tmp_path: Path) -> None:
    for granted, sent in (('["vehicle_health"]', False), ('["driving"]', True)):
        cfg = load_config(
            power_config(
                tmp_path,
                "unused",
                f'[power]\n[consent]\ngranted = {granted}\ndefault_category = "driving"\n',
            )
        )
        names = [s.name for s in prepare(cfg).schema.signals]
        assert (POWER_SIGNAL in names) is sent, granted
