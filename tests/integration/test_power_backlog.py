"""A park upload cut short by ``park_upload`` is finished after the wake: with the broker down
at park time, and with a backlog larger than the upload can send in time (events first). Every
update reaches the broker exactly once, counted by decoding each one's (boot, seq).

Real parts: the agent in this process on python-can's ``virtual`` bus, its SQLite outbox, a real
mosquitto (stopped and started again on the same port), the modem simulator on a pty, and a
sleep command that records its calls. Nothing here needs the MQTT link to stay up while the car
is parked: what is asserted reaches the broker in the park upload or after the wake.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import can

from agent.daemon import Agent
from tests.support.broker import Mosquitto
from tests.support.e2e import DataCollector
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
    values,
)
from tests.support.wait import wait_for


class Car:
    def __init__(self, agent: Agent, data: DataCollector, bus: can.BusABC, calls: Path):
        self.agent, self.data, self.bus, self.calls = agent, data, bus, calls
        self.sent: list[int] = []
        self.parks = 0

    def drive(self, n: int) -> None:
        frame(self.bus, BODY, RUN)
        wait_for(lambda: state(self.agent) == "driving", WAIT, "driving")
        for _ in range(n):
            self.sent.append(len(self.sent) + 1)
            frame(self.bus, ENGINE, self.sent[-1])

    def park(self) -> None:
        """Park and return once the park actions ran (the sleep command is the last)."""
        self.parks += 1
        frame(self.bus, BODY, OFF)
        wait_for(lambda: sleep_calls(self.calls) == self.parks, WAIT, "parked, asleep")
        assert state(self.agent) == "parked"

    def rows(self) -> int:
        return int(self.agent.status()["outbox"]["rows"])

    def updates(self) -> list[dict[str, object]]:
        return decoded(self.data.sub.messages, self.agent.catalog.schema)

    def all_delivered_once(self) -> None:
        """Every update the agent made reached the broker, each exactly once."""
        a = self.agent
        wait_for(
            lambda: set(values(self.updates(), "Engine.Counter")) == set(self.sent),
            WAIT,
            "every value at the broker",
        )
        wait_for(lambda: a.status()["outbox"]["rows"] == 0, WAIT, "outbox empty")
        made = {(a.boot_id, seq) for seq in range(1, a.pipeline.builder.seq + 1)}
        wait_for(lambda: made <= set(self.data.received()), WAIT, "every update at the broker")
        assert set(self.data.received()) == made
        assert self.data.duplicates() == 0
        assert sorted(values(self.updates(), "Engine.Counter")) == self.sent


@contextmanager
def car(
    tmp_path: Path, broker: Mosquitto, park_upload: float, mqtt: str = "", updates: str = ""
) -> Iterator[Car]:
    power = IGNITION + f"park_upload = {park_upload}\n"
    with ExitStack() as stack:
        rig = stack.enter_context(
            modem_car(tmp_path, broker.port, power, mqtt=mqtt, updates=updates)
        )
        data = stack.enter_context(DataCollector(broker))
        agent, _ = stack.enter_context(running(rig.cfg, dry_run=False))
        bus = stack.enter_context(car_bus(rig.channel))
        yield Car(agent, data, bus, rig.calls)


def test_the_broker_down_at_park_time_gets_everything_once_after_the_wake(
    tmp_path: Path, broker: Mosquitto
) -> None:
    with car(tmp_path, broker, 0.3) as c:
        c.drive(20)
        # Nothing in flight when it goes: a resend after the restart could not be a duplicate.
        wait_for(lambda: c.rows() == 0 and c.agent.uplink.stats().in_flight == 0, WAIT, "sent")
        broker.stop()
        c.drive(20)
        c.park()
        assert c.rows() > 0  # the park upload could send nothing
        # Back for the subscriber first, so nothing sent after the wake can slip past it (the
        # agent's client id, its VIN, is refused until then).
        broker.clientid_prefixes = "sub-"
        broker.start()
        assert c.data.sub.wait_subscribed(WAIT)
        broker.clientid_prefixes = None
        broker.reload()
        c.drive(20)
        c.all_delivered_once()
        events = power_events(c.updates())
        assert events == ["driving", "parked", "driving"], events


def test_a_backlog_larger_than_park_upload_goes_events_first_and_the_rest_after_the_wake(
    tmp_path: Path, broker: Mosquitto
) -> None:
    # One update per sample, sent at most 10 a second (after a one-second burst): 40 updates
    # take seconds, the park upload has one.
    with car(tmp_path, broker, 1.0, mqtt="drain_rate = 10\n", updates="max_samples = 1\n") as c:
        c.drive(40)
        c.park()
        assert c.rows() > 0, "the park upload was not cut short"
        # Events first: the park's event went out within the park upload (not after the wake).
        wait_for(lambda: "parked" in power_events(c.updates()), WAIT, "the park's event")
        c.drive(5)
        c.all_delivered_once()
        assert power_events(c.updates()) == ["driving", "parked", "driving"]
