"""Signed remote commands end to end: a real mosquitto, the agent wired as `run` wires it (in
this process on a virtual bus, or as the real CLI in a subprocess), and `spime-agent command`
as a subprocess."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.control.envelope import seal_bytes
from agent.daemon import Agent
from agent.spime import decode_samples, peek_header, peek_schema_id
from tests.support.agentrun import VIN
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import PREFIX, AgentProcess
from tests.support.remotecar import CMD, NO_DATA_ACL, Car
from tests.support.wait import wait_for

RESULT = f"{PREFIX}/{VIN}/cmd/result"
OTHER_VIN = "WVWZZZ1JZXW000002"


class Requester:
    """A raw MQTT 5 backend: publishes any bytes as a command, with a Response Topic."""

    def __init__(self, broker: Mosquitto) -> None:
        self.reply = f"{PREFIX}/{VIN}/cmd/reply/test-{uuid.uuid4().hex[:8]}"
        self._answers: dict[bytes, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.reply, 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._ready.wait(15)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        corr = bytes(msg.properties.CorrelationData)  # type: ignore[union-attr]
        with self._lock:
            self._answers[corr] = json.loads(msg.payload)

    def ask(self, payload: bytes, timeout: float = 20) -> dict[str, Any]:
        corr = os.urandom(8)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply
        props.CorrelationData = corr
        self.client.publish(CMD, payload, qos=1, properties=props).wait_for_publish(10)
        wait_for(lambda: corr in self._answers, timeout, "the agent's answer")
        with self._lock:
            return self._answers[corr]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stored(agent: Agent) -> list[str]:
    names = []
    assert agent.outbox is not None and agent.schemas is not None
    for row in agent.outbox.iter_rows():
        schema = agent.schemas.load(peek_schema_id(row.payload))
        assert schema is not None
        _, samples = decode_samples(row.payload, schema)
        names += [schema.by_id[sid].name for _, sid, _ in samples]
    return names


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_command_through_the_cli(tmp_path: Path, broker: Mosquitto, protocol: str) -> None:
    car = Car(tmp_path, broker, protocol=protocol)
    agent = car.start()
    try:
        car.send_frames()
        wait_for(lambda: agent.pipeline.builder.samples_out >= 10, what="samples")
        with (
            Subscriber(broker, f"{PREFIX}/{VIN}/data") as data,
            Subscriber(broker, f"{PREFIX}/{VIN}/status") as status,
        ):
            rc, ans, err = car.command("ping")
            assert rc == 0, err
            assert ans is not None and ans["status"] == "ok"
            assert ans["result"]["vin"] == VIN and ans["result"]["remote"]["commands"] == "enabled"

            rc, ans, err = car.command("snapshot")
            assert rc == 0, err
            assert ans is not None and ans["result"]["samples"] == 2

            def snapshot_event(msgs: list[Any]) -> bool:
                heads = [peek_header(m.payload) for m in msgs]
                return any(h.snapshot and h.event for h in heads)

            assert data.wait_for(snapshot_event, 20), "no snapshot event update arrived"

            before = len(status.messages)
            rc, ans, err = car.command("resend")
            assert rc == 0 and ans is not None and ans["status"] == "ok", err
            assert status.wait_for(lambda m: len(m) > before, 20), "status not published again"

            plan = tmp_path / "plan.json"
            plan.write_text(
                json.dumps({"id": "p1", "version": 1, "signal": [{"match": "Health.*"}]})
            )
            rc, ans, err = car.command("plan", str(plan))
            assert rc == 0 and ans is not None and ans["status"] == "ok", (err, ans)
            assert ans["result"]["id"] == "p1" and ans["result"]["state"] == "applied"
            assert [s.wire for s in agent.catalog.selected] == ["Health.Coolant"]
            broken = {"id": "p2", "version": 1, "signal": [{"match": "Pos.*", "deadband": -1}]}
            plan.write_text(json.dumps(broken))
            rc, ans, err = car.command("plan", str(plan))
            assert rc == 1 and ans is not None and ans["status"] == "rejected", (err, ans)
            assert "deadband" in ans["detail"]
            assert [s.wire for s in agent.catalog.selected] == ["Health.Coolant"]

            rc, ans, err = car.command("consent", "--grant", "driving")
            assert rc == 1 and ans is not None and ans["status"] == "rejected", err
            assert "not_allowed" in ans["detail"]
            assert agent.cfg.consent is not None and "driving" not in agent.cfg.consent.granted

            rc, ans, err = car.command("consent", "--revoke", "location")
            assert rc == 0 and ans is not None, err
            assert ans["result"]["revoked"] == ["location"]
            assert agent.cfg.consent.granted == ["vehicle_health"]

        remote = agent.status()["remote"]
        assert remote["accepted"] == 5
        assert remote["rejected"] == {"bad_plan": 1, "not_allowed": 1}
    finally:
        car.stop()


def test_hostile_commands_are_refused_counted_and_never_executed(
    tmp_path: Path, broker: Mosquitto
) -> None:
    car = Car(tmp_path, broker)
    agent = car.start()
    req = Requester(broker)
    try:
        revoke = {"revoke": ["location"]}
        _, good = car.sealed("consent", revoke)
        doc = json.loads(good)
        payload = base64.b64decode(doc["payload"]).replace(b"location", b"locatioN")
        forged = json.dumps({**doc, "payload": base64.b64encode(payload).decode()}).encode()
        now = int(time.time() * 1000)
        cases: list[tuple[str, bytes, str, str]] = [
            (
                "unsigned",
                json.dumps({"id": "x", "command": "consent", "args": revoke}).encode(),
                "rejected",
                "unsigned",
            ),
            ("forged", forged, "rejected", "bad_signature"),
            ("wrong VIN", car.sealed("consent", revoke, vin=OTHER_VIN)[1], "rejected", "wrong_vin"),
            (
                "expired",
                car.sealed("consent", revoke, issued=now - 120_000, expires=now - 60_000)[1],
                "expired",
                "",
            ),
            ("garbage", os.urandom(300), "rejected", "malformed"),
            ("truncated", good[: len(good) // 2], "rejected", "malformed"),
            ("huge", b'{"v": 1, "pad": "' + b"x" * 70_000 + b'"}', "rejected", "oversized"),
            ("unknown command", car.sealed("reboot")[1], "rejected", "unknown_command"),
            ("signed junk payload", seal_bytes(car.private, b"[]"), "rejected", "malformed"),
        ]
        for name, data, status, reason in cases:
            ans = req.ask(data)
            assert ans["status"] == status, (name, ans)
            assert ans["detail"].startswith(reason), (name, ans)
        # Signed by a key that is not the car's, through the real CLI.
        rc, ans, err = car.command("consent", "--revoke", "location", key=car.other_key)
        assert rc == 1 and ans is not None and ans["detail"].startswith("wrong_key"), err

        assert agent.cfg.consent is not None
        assert agent.cfg.consent.granted == ["vehicle_health", "location"]
        # Replayed: the first copy runs, the second is refused.
        _, ping = car.sealed("ping")
        assert req.ask(ping)["status"] == "ok"
        assert req.ask(ping)["detail"].startswith("replayed")

        remote = agent.status()["remote"]
        assert remote["accepted"] == 1 and remote["expired"] == 1
        assert remote["rejected"] == {
            "bad_signature": 1,
            "malformed": 3,
            "oversized": 1,
            "replayed": 1,
            "unknown_command": 1,
            "unsigned": 1,
            "wrong_key": 1,
            "wrong_vin": 1,
        }
    finally:
        req.close()
        car.stop()


def test_a_command_id_runs_at_most_once_across_restarts(tmp_path: Path, broker: Mosquitto) -> None:
    car = Car(tmp_path, broker)
    with Subscriber(broker, CMD) as sniffer:
        car.start()
        try:
            rc, ans, err = car.command("ping")
            assert rc == 0, err
            assert sniffer.wait_for(lambda m: len(m) == 1)
        finally:
            car.stop()
        sent = sniffer.messages[0].payload  # the exact bytes the backend published
    car.start()
    req = Requester(broker)
    try:
        ans2 = req.ask(sent)
        assert ans2["status"] == "rejected" and ans2["detail"].startswith("replayed")
        assert ans2["id"] == ans["id"]
    finally:
        req.close()
        car.stop()


def test_remote_revoke_purges_stored_updates_and_survives_a_restart(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", acl=NO_DATA_ACL)
    broker.start()
    try:
        _revoke_and_restart(tmp_path, broker)
    finally:
        broker.stop()


def _revoke_and_restart(tmp_path: Path, broker: Mosquitto) -> None:
    car = Car(tmp_path, broker)
    agent = car.start()
    try:
        car.send_frames(10)
        wait_for(lambda: _stored(agent).count("Pos.Lat") >= 5, what="positions stored")
        rc, ans, err = car.command("consent", "--revoke", "location")
        assert rc == 0 and ans is not None and ans["status"] == "ok", err
        names = _stored(agent)
        assert "Pos.Lat" not in names and "Health.Coolant" in names
    finally:
        car.stop()
    # The config file still grants location; the remote revocation stays in force.
    assert '"location"' in car.config.read_text()
    agent = car.start()
    try:
        assert agent.cfg.consent is not None and agent.cfg.consent.granted == ["vehicle_health"]
        assert "location" in agent.status()["consent"]["left_out"] or any(
            "location" in k for k in agent.status()["consent"]["left_out"]
        )
    finally:
        car.stop()


def test_a_grant_is_applied_where_activation_allowed_it(tmp_path: Path, broker: Mosquitto) -> None:
    car = Car(tmp_path, broker, allow_grant=True)
    agent = car.start()
    try:
        rc, ans, err = car.command("consent", "--grant", "driving", "--revoke", "location")
        assert rc == 0 and ans is not None, err
        assert sorted(ans["result"]["granted"]) == ["driving", "vehicle_health"]
        assert agent.cfg.consent is not None
        assert sorted(agent.cfg.consent.granted) == ["driving", "vehicle_health"]
    finally:
        car.stop()


def test_without_remote_no_command_is_heard(tmp_path: Path, broker: Mosquitto) -> None:
    car = Car(tmp_path, broker, remote=False)
    agent = car.start()
    try:
        assert agent.status()["remote"] == {"commands": "disabled"}
        rc, ans, _ = car.command("consent", "--revoke", "location", timeout=2)
        assert rc == 3 and ans is None
        assert car.subscriptions() == 0
        assert agent.cfg.consent is not None and "location" in agent.cfg.consent.granted
    finally:
        car.stop()


def test_an_expired_command_delivered_late_is_answered_expired(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The car's process is frozen (an outage as it sees it) while a 3.1.1 backend, which can
    set no broker-side expiry, sends a 1-second command; it arrives after it expired."""
    car = Car(tmp_path, broker, protocol="3.1.1")
    with (
        AgentProcess(car.config, log_path=tmp_path / "agent.log") as proc,
        Subscriber(broker, RESULT) as results,
    ):
        wait_for(lambda: car.subscriptions() == 1 or proc.proc.poll() is not None, 60)
        assert proc.proc.poll() is None, proc.log()
        proc.send(signal.SIGSTOP)
        try:
            rc, ans, _ = car.command("consent", "--revoke", "location", ttl="1", timeout=2)
            assert rc == 3 and ans is None
            # The sender waited 2 s for an answer: the 1-second command has expired.
        finally:
            proc.send(signal.SIGCONT)
        assert results.wait_for(lambda m: len(m) == 1, 30), proc.log()
        answer = json.loads(results.messages[0].payload)
        assert answer["status"] == "expired", answer
        proc.send(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "consent revoked" not in proc.log()


def test_a_retained_plan_is_picked_up_by_a_car_that_was_offline(
    tmp_path: Path, broker: Mosquitto
) -> None:
    car = Car(tmp_path, broker)
    plan = tmp_path / "desired.json"
    plan.write_text(json.dumps({"id": "desired", "version": 3, "signal": [{"match": "Health.*"}]}))
    # Published through the real CLI while the car is offline: the broker keeps it retained.
    code, answer, err = car.command("plan", str(plan), "--retain")
    assert code == 0, err
    assert answer is not None and answer["status"] == "published"
    assert answer["topic"] == f"{PREFIX}/{VIN}/plan"
    # The signed envelope lives for the default 90 days, not a command's 60 s.
    assert answer["expires"] - time.time() * 1000 > 89 * 86400 * 1000
    agent = car.start()  # the car comes online after the plan was published
    try:
        wait_for(
            lambda: [s.wire for s in agent.catalog.selected] == ["Health.Coolant"],
            what="the retained plan's selection in force",
        )
        assert agent.status()["plan"]["id"] == "desired"
        assert agent.status()["plan"]["state"] == "applied"
    finally:
        car.stop()
