"""A sleep command that fails, one that outlives its timeout, and one still running when the
car wakes: each failure is logged once and counted in the status, the agent goes on working,
wakes as usual, and nothing produced is lost.

Real parts: the agent in this process on python-can's ``virtual`` bus, a real mosquitto (updates
decoded as a backend reads them), the modem simulator on a pty (it records AT+CFUN), and a
sleep command that records its process id and then exits 3, or hangs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import can
import pytest

from agent.daemon import Agent
from agent.modem.simulator import ModemSimulator
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import DATA_TOPIC
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
    sleep_pids,
    state,
    values,
)
from tests.support.wait import wait_for, wait_until


class Car:
    """The agent, its modem, a subscriber, and the car's bus, with the values sent so far."""

    def __init__(self, agent: Agent, sim: ModemSimulator, data: Subscriber, bus: can.BusABC):
        self.agent, self.sim, self.data, self.bus = agent, sim, data, bus
        self.sent: list[int] = []

    def drive(self, n: int) -> None:
        frame(self.bus, BODY, RUN)
        wait_for(lambda: state(self.agent) == "driving", WAIT, "driving")
        for _ in range(n):
            self.sent.append(len(self.sent) + 1)
            frame(self.bus, ENGINE, self.sent[-1])

    def park(self) -> None:
        frame(self.bus, BODY, OFF)
        wait_for(lambda: state(self.agent) == "parked", WAIT, "parked")

    def sleep_status(self) -> dict[str, Any]:
        return self.agent.status()["power"]["sleep"]  # type: ignore[no-any-return]

    def everything_delivered(self) -> None:
        schema = self.agent.catalog.schema

        def got() -> set[float]:
            return set(values(decoded(self.data.messages, schema), "Engine.Counter"))

        if not wait_until(lambda: set(self.sent) <= got(), WAIT):
            missing = sorted(set(self.sent) - got())
            raise AssertionError(f"never at the broker: {missing}; {self.agent.status()}")
        events = power_events(decoded(self.data.messages, schema), self.agent.boot_id)
        assert events[-2:] == ["parked", "driving"], events


@contextmanager
def car(tmp_path: Path, broker: Mosquitto, mode: str, timeout: float) -> Iterator[Car]:
    power = IGNITION + f"park_upload = 1\nsleep_timeout = {timeout}\n"
    with ExitStack() as stack:
        rig = stack.enter_context(modem_car(tmp_path, broker.port, power, sleep_mode=mode))
        data = stack.enter_context(Subscriber(broker, DATA_TOPIC, client_id="sub-d"))
        agent, _ = stack.enter_context(running(rig.cfg, dry_run=False))
        bus = stack.enter_context(car_bus(rig.channel))
        yield Car(agent, rig.sim, data, bus)


def _sleep_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and "sleep command" in r.getMessage()
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failing_sleep_command_is_logged_once_counted_and_the_car_wakes(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    calls = tmp_path / "sleep-calls"
    with car(tmp_path, broker, "fail", 30) as c:
        for cycle in (1, 2):
            c.drive(20)
            c.park()
            wait_for(lambda n=cycle: c.sleep_status()["failures"] == n, WAIT, "failure counted")
            doc = c.sleep_status()
            assert doc["runs"] == cycle and len(sleep_pids(calls)) == cycle
            assert doc["last_error"] == "exited 3: power controller refused"
            # One line per failed sleep, not one per retry or per status.
            assert len(_sleep_errors(caplog)) == cycle, _sleep_errors(caplog)
            assert c.sim.cfun_changes[-1] == 4
            c.drive(20)
            wait_for(lambda: c.sim.cfun_changes[-1] == 1, WAIT, "modem at full power")
            c.everything_delivered()
        assert c.agent.status()["power"]["reason"] == "ignition on"


def test_a_sleep_command_past_its_timeout_is_ended_counted_and_the_car_wakes(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    calls = tmp_path / "sleep-calls"
    with car(tmp_path, broker, "hang", 0.5) as c:
        c.drive(20)
        c.park()
        wait_for(lambda: c.sleep_status()["failures"] == 1, WAIT, "timeout counted")
        assert "timed out after 0.5 s" in c.sleep_status()["last_error"]
        # (Under load the timeout may end it even before it wrote its pid.)
        for pid in sleep_pids(calls):
            wait_for(lambda pid=pid: not _alive(pid), WAIT, "the hung command ended")
        assert len(_sleep_errors(caplog)) == 1, _sleep_errors(caplog)
        c.drive(20)
        wait_for(lambda: c.sim.cfun_changes[-2:] == [4, 1], WAIT, "modem at full power")
        c.everything_delivered()
        assert c.sleep_status() == {
            "runs": 1,
            "failures": 1,
            "last_error": c.sleep_status()["last_error"],
            "running": False,
        }


def test_the_car_waking_while_the_sleep_command_hangs_wakes_the_agent_at_once(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # A timeout far beyond the test: the wake must not wait for it.
    calls = tmp_path / "sleep-calls"
    with car(tmp_path, broker, "hang", 3600) as c:
        c.drive(20)
        c.park()
        wait_for(lambda: len(sleep_pids(calls)) == 1, WAIT, "sleep command started")
        wait_for(lambda: c.sleep_status()["running"], WAIT, "sleep command running")
        [pid] = sleep_pids(calls)
        c.drive(20)
        wait_for(lambda: c.sim.cfun_changes[-2:] == [4, 1], WAIT, "modem at full power")
        c.everything_delivered()
        # The command was moot once the car woke: ended, and counted as a failed sleep.
        wait_for(lambda: not _alive(pid), WAIT, "the hung command ended")
        wait_for(lambda: c.sleep_status()["failures"] == 1, WAIT, "failure counted")
        assert "still running when the car woke" in c.sleep_status()["last_error"]
        assert len(_sleep_errors(caplog)) == 1, _sleep_errors(caplog)
