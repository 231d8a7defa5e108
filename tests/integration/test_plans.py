"""Collection plans on a running agent (virtual bus, real SQLite outbox): applied without a
restart (new schema, same boot, sequence continues), stored across a restart, expired back to
the config's own selection at the expiry time, consent as the upper bound, broken plans
refused with every problem and nothing changed; the signed retained form."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from agent.control.envelope import generate_key, seal
from agent.control.plans import open_retained
from agent.daemon import Agent
from agent.errors import ConfigError
from agent.spime import decode_samples, peek_schema_id
from tests.support.agentrun import VIN, Running, write_config
from tests.support.broker import free_port
from tests.support.data import HEALTH_POS_DBC
from tests.support.wait import wait_for

DBC = (
    HEALTH_POS_DBC
    + """BO_ 258 Drive: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
 SG_ Brake : 16|8@1+ (0.5,0) [0|127.5] "bar" Vector__XXX
"""
)


def _config(tmp_path: Path, channel: str) -> Path:
    (tmp_path / "car.dbc").write_text(DBC)
    return write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "virtual", "channel": channel, "dbc": ["car.dbc"]}],
        extra=(
            # Nothing listens on this port: every update stays in the outbox to be read.
            f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\nreconnect_min = 0.2\n'
            'reconnect_max = 0.5\n[outbox]\npath = "outbox.db"\ncommit_interval = 0.05\n'
            '[updates]\nmax_age = 0.05\n[[signal]]\nmatch = "Health.*"\n'
            '[consent]\ngranted = ["vehicle_health", "driving"]\nrules = [\n'
            '  { match = "Pos.*", category = "location" },\n'
            '  { match = "Health.*", category = "vehicle_health" },\n'
            '  { match = "Drive.*", category = "driving" },\n]\n'
        ),
    )


class Car:
    def __init__(self, tmp_path: Path) -> None:
        self.channel = f"plans-{uuid.uuid4().hex[:8]}"
        self.path = _config(tmp_path, self.channel)
        self.bus = can.Bus(interface="virtual", channel=self.channel, ignore_config=True)
        self.agent: Agent | None = None
        self.run: Running | None = None
        self.n = 0

    def start(self) -> Agent:
        self.run = Running(self.path, dry_run=False)
        agent = self.agent = self.run.start()
        wait_for(lambda: agent.outbox is not None and agent.pipeline.source_states()["car"] == "up")
        return agent

    def stop(self) -> None:
        assert self.run is not None
        self.run.stop()

    def drive(self, speed: int, brake: int = 0) -> None:
        """One frame of each message; values change every call."""
        self.n += 1
        self.bus.send(
            can.Message(arbitration_id=0x100, data=bytes([self.n % 200]), is_extended_id=False)
        )
        self.bus.send(
            can.Message(
                arbitration_id=0x101, data=self.n.to_bytes(4, "little"), is_extended_id=False
            )
        )
        data = speed.to_bytes(2, "little") + bytes([brake])
        self.bus.send(can.Message(arbitration_id=0x102, data=data, is_extended_id=False))

    def rows(self) -> list[tuple[Any, list[str]]]:
        """(header, signal names) of every stored update."""
        agent = self.agent
        assert agent is not None and agent.schemas is not None
        out = []
        for row in agent.outbox.iter_rows():
            schema = agent.schemas.load(peek_schema_id(row.payload))
            assert schema is not None
            head, samples = decode_samples(row.payload, schema)
            out.append((head, [schema.by_id[sid].name for _, sid, _ in samples]))
        return out

    def names(self) -> list[str]:
        return [n for _, names in self.rows() for n in names]


@pytest.fixture
def car(tmp_path: Path) -> Iterator[Car]:
    c = Car(tmp_path)
    try:
        yield c
    finally:
        if c.run is not None and c.run.thread.is_alive():
            c.stop()
        c.bus.shutdown()


PLAN = {
    "id": "brakes",
    "version": 1,
    "signal": [{"match": "Health.*"}, {"match": "Drive.Speed", "name": "speed"}],
    "trigger": [
        {
            "name": "hard_brake",
            "when": "Drive.Brake > 20",
            "before": 0.5,
            "after": 0.2,
            "capture": ["speed"],
        }
    ],
}


def _schema_names(agent: Agent) -> set[str]:
    return {s.name for s in agent.catalog.schema.signals}


def test_plan_applies_without_restart_and_survives_one(car: Car) -> None:
    agent = car.start()
    car.drive(1000)
    wait_for(lambda: "Health.Coolant" in car.names(), what="a first update")
    old_schema = agent.catalog.schema.id
    assert agent.apply_plan(json.dumps(PLAN)) == []
    assert agent.status()["plan"] == {
        "id": "brakes",
        "version": 1,
        "state": "applied",
        "reason": "",
    }
    assert agent.catalog.schema.id != old_schema and "speed" in _schema_names(agent)
    agent.pipeline.wait_reloaded(10)
    for speed in (2000, 2100, 2200):
        car.drive(speed)
    car.drive(2300, brake=60)  # fires: a capture of speed, marked with the trigger
    car.drive(2400)
    wait_for(lambda: car.names().count("speed") >= 6, what="speeds and their capture")
    rows = car.rows()
    boots = {head.boot for head, _ in rows}
    seqs = [head.seq for head, _ in rows]
    assert len(boots) == 1 and seqs == list(range(1, len(seqs) + 1))
    assert {peek_schema_id(r.payload) for r in agent.outbox.iter_rows()} >= {
        old_schema,
        agent.catalog.schema.id,
    }
    captures = [head for head, _ in rows if head.trigger is not None]
    assert captures and captures[0].trigger == "hard_brake" and captures[0].event
    # The same id and version again: nothing to do.
    before = agent.catalog.schema.id
    assert agent.apply_plan(PLAN) == []
    assert agent.catalog.schema.id == before
    car.stop()

    again = car.start()
    assert "speed" in _schema_names(again)
    assert again.status()["plan"]["state"] == "applied"
    stored = json.loads((car.path.parent / "outbox.db.plan").read_text())
    assert (stored["id"], stored["version"]) == ("brakes", 1)


def test_an_expired_plan_falls_back_at_its_expiry_time(car: Car) -> None:
    agent = car.start()
    base = agent.catalog.schema.id
    expires = int(time.time() * 1000) + 1500
    assert agent.apply_plan({**PLAN, "expires": expires}) == []
    assert agent.catalog.schema.id != base
    wait_for(lambda: agent.status()["plan"]["state"] == "expired", timeout=10, what="expiry")
    assert time.time() * 1000 >= expires
    assert agent.catalog.schema.id == base
    # Stored, but not applied again after a restart.
    car.stop()
    again = car.start()
    assert again.catalog.schema.id == base
    assert again.status()["plan"]["state"] == "expired"


def test_a_plan_cannot_select_what_the_owner_did_not_consent_to(car: Car) -> None:
    agent = car.start()
    plan = {
        "id": "where",
        "version": 3,
        "signal": [{"match": "Pos.*"}, {"match": "Health.*"}],
        "trigger": [{"name": "north", "when": "Pos.Lat > 45", "capture": ["Pos.*", "Health.*"]}],
    }
    assert agent.apply_plan(plan) == []
    status = agent.status()["plan"]
    assert status["state"] == "applied"
    assert "no consent for location" in status["reason"]
    assert "trigger north not armed" in status["reason"]
    assert "Pos.Lat" not in _schema_names(agent)
    assert agent.catalog.triggers == ()
    agent.pipeline.wait_reloaded(10)
    for _ in range(3):
        car.drive(100)
    wait_for(lambda: car.names().count("Health.Coolant") >= 3, what="updates under the plan")
    assert "Pos.Lat" not in car.names()


def test_a_broken_plan_changes_nothing_and_names_every_problem(car: Car) -> None:
    agent = car.start()
    assert agent.apply_plan(PLAN) == []
    schema = agent.catalog.schema.id
    broken = {
        "id": "broken",
        "version": 1,
        "signal": [{"match": "Health.*", "deadband": -1}],
        "trigger": [{"name": "t", "when": "Drive.Brake > > 1", "capture": ["speed"]}],
        "colour": "red",
    }
    problems = agent.apply_plan(broken)
    assert len(problems) == 3, problems
    assert any("signal[0].deadband" in p for p in problems)
    assert any("trigger[0].when: column 15" in p for p in problems)
    assert any("colour: unknown key" in p for p in problems)
    assert all(p.startswith("plan 'broken': ") for p in problems)
    # Valid models, but a name the DBC does not have: refused by the same catalog checks.
    problems = agent.apply_plan(
        {"id": "typo", "version": 1, "trigger": [{"name": "t", "when": "Drive.Brak > 1"}]}
    )
    assert problems and "no signal named 'Drive.Brak'" in problems[0]
    assert agent.apply_plan({**PLAN, "version": 0})[0].endswith("older than 1 in force")
    assert agent.catalog.schema.id == schema
    status = agent.status()["plan"]
    assert status["state"] == "rejected" and status["in_force"] == {"id": "brakes", "version": 1}
    assert agent.apply_plan(b"{not json")[0].startswith("plan: not JSON")


def test_retained_plan_envelope() -> None:
    key = generate_key()
    now = int(time.time() * 1000)

    def sealed(vin: str = VIN, command: str = "plan", expires: int = now + 60_000) -> bytes:
        return seal(
            key, vin=vin, command=command, args={"plan": PLAN}, issued=now, expires=expires
        )[1]

    assert open_retained(sealed(), key.public_key(), vin=VIN, now_ms=now) == PLAN
    cases = [
        (sealed(vin="WVWZZZ1JZXW000002"), "signed for vehicle"),
        (sealed(command="ping"), "not 'plan'"),
        (sealed(expires=now - 1), "expired"),
        (
            seal(
                generate_key(),
                vin=VIN,
                command="plan",
                args={"plan": PLAN},
                issued=now,
                expires=now + 1,
            )[1],
            "wrong_key",
        ),
    ]
    for data, words in cases:
        with pytest.raises(ConfigError, match=words):
            open_retained(data, key.public_key(), vin=VIN, now_ms=now)


def test_a_signed_retained_plan_is_applied_once(car: Car) -> None:
    agent = car.start()
    key = generate_key()
    now = int(time.time() * 1000)
    _, data = seal(
        key, vin=VIN, command="plan", args={"plan": PLAN}, issued=now, expires=now + 60_000
    )
    assert agent.apply_retained_plan(data, key.public_key()) == []
    schema = agent.catalog.schema.id
    assert "speed" in _schema_names(agent)
    # Delivered again at the next connect: the same id and version change nothing.
    assert agent.apply_retained_plan(data, key.public_key()) == []
    assert agent.catalog.schema.id == schema
    forged = seal(
        generate_key(),
        vin=VIN,
        command="plan",
        args={"plan": {**PLAN, "version": 2}},
        issued=now,
        expires=now + 60_000,
    )[1]
    assert "wrong_key" in agent.apply_retained_plan(forged, key.public_key())[0]
    assert agent.status()["plan"]["version"] == 1
