"""The listen subscriber against a real mosquitto, with updates made by the real spime encoder."""
# ruff: noqa: F811  (the mosquitto fixture is imported, then named as a test argument)

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import spime
from agent.config import MqttConfig, OutboxConfig
from agent.listen import Listener, ListenError
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.support.broker import (
    Mosquitto,
    free_port,
    mosquitto,  # noqa: F401
    wait_until,
)
from tests.support.data import REPO
from tests.support.proxy import TcpProxy

VIN = "WDB12345678901234"
OTHER_VIN = "WVWZZZ1JZXW000001"
BOOT = bytes.fromhex("0011223344556677")
SCHEMA = spime.Schema.build(
    [
        spime.SignalDef(id=1, name="speed", scale=0.5, unit="km/h"),
        spime.SignalDef(id=2, name="gear"),
    ]
)
SCHEMA_JSON = SCHEMA.dumps().encode()
WAIT = 30.0


def update(seq: int, vin: str = VIN) -> bytes:
    samples = [(1_700_000_000_000 + seq, 1, 2 * seq), (1_700_000_000_000 + seq, 2, 3)]
    return spime.encode_update(SCHEMA, boot=BOOT, seq=seq, vin=vin, samples=samples)


class Publisher:
    def __init__(self, broker: Mosquitto) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT)

    def data(self, seq: int, vin: str = VIN) -> None:
        self.send(f"spime/v1/{vin}/data", update(seq, vin))

    def schema(self, vin: str = VIN) -> None:
        self.send(f"spime/v1/{vin}/schema/{SCHEMA.id}", SCHEMA_JSON, retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto)
    try:
        yield pub
    finally:
        pub.close()


class Running:
    """A Listener's run() in a thread, with what it delivered."""

    def __init__(self, broker: Mosquitto, count: int | None, **kw: Any) -> None:
        self.updates: list[dict[str, Any]] = []
        self.result: int | None = None
        self.listener = Listener(broker.host, broker.port, on_update=self.updates.append, **kw)
        self.thread = threading.Thread(target=self._run, args=(count,))
        self.thread.start()
        assert self.listener.wait_subscribed(WAIT)

    def _run(self, count: int | None) -> None:
        self.result = self.listener.run(count=count, timeout=WAIT * 2)

    def join(self) -> int | None:
        self.thread.join(WAIT * 3)
        return self.result


def test_data_before_schema_is_held_then_decoded_once(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    run = Running(mosquitto, count=3, vin=VIN)
    # The schema is not retained yet: updates wait for it. Each is sent twice (at least once).
    for seq in (1, 1, 2, 3, 2):
        publisher.data(seq)
    assert wait_until(lambda: run.listener.stats().held == 3, WAIT)
    assert run.updates == []
    publisher.schema()
    assert run.join() == 3
    assert [u["seq"] for u in run.updates] == [1, 2, 3]
    first = run.updates[0]
    assert first["vin"] == VIN and first["schema"] == SCHEMA.id
    assert first["samples"] == [
        {"t": 1_700_000_000.001, "signal": "speed", "value": 1.0},
        {"t": 1_700_000_000.001, "signal": "gear", "value": 3},
    ]
    s = run.listener.stats()
    assert (s.duplicates, s.held, s.dropped, s.errors) == (2, 0, 0, 0)


def test_full_buffer_drops_oldest_and_counts(mosquitto: Mosquitto, publisher: Publisher) -> None:
    run = Running(mosquitto, count=None, max_held=3)
    for seq in range(1, 6):
        publisher.data(seq)
    assert wait_until(lambda: run.listener.stats().dropped == 2, WAIT)
    publisher.schema()
    assert wait_until(lambda: len(run.updates) == 3, WAIT)
    run.listener.stop()
    assert run.join() == 3
    assert [u["seq"] for u in run.updates] == [3, 4, 5]
    assert run.listener.stats().held == 0


def test_vin_filter_and_retained_schema(mosquitto: Mosquitto, publisher: Publisher) -> None:
    publisher.schema()  # retained: a listener starting later still gets it
    publisher.schema(OTHER_VIN)
    run = Running(mosquitto, count=2, vin=VIN)
    publisher.data(1, OTHER_VIN)
    publisher.data(7)
    publisher.data(8)
    assert run.join() == 2
    assert [(u["vin"], u["seq"]) for u in run.updates] == [(VIN, 7), (VIN, 8)]


def test_end_to_end_from_the_uplink(mosquitto: Mosquitto, tmp_path: Path) -> None:
    box = Outbox(OutboxConfig(path=tmp_path / "o.db", commit_interval=0.05))
    box.open()
    cfg = MqttConfig(host=mosquitto.host, port=mosquitto.port, reconnect_min=0.1, reconnect_max=0.5)
    up = Uplink(
        cfg, vin=VIN, boot=BOOT.hex(), outbox=box, schema_id=SCHEMA.id, schema_json=SCHEMA_JSON
    )
    try:
        for seq in range(50):
            box.put(update(seq))
        box.flush()
        up.start()
        assert up.wait_drained(WAIT)
        run = Running(mosquitto, count=10)
        for seq in range(50, 60):
            box.put(update(seq))
        box.flush()
        assert run.join() == 10
    finally:
        up.stop(5.0)
        box.close()
    # The first 50 were sent before the listener subscribed: only live data is delivered.
    assert [u["seq"] for u in run.updates] == list(range(50, 60))


def test_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(ListenError, match="connection refused"):
        Listener("127.0.0.1", free_port(), on_update=lambda u: None).run(timeout=5)


def test_falls_back_to_311_when_the_broker_refuses_mqtt5(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    publisher.schema()
    with TcpProxy(mosquitto.host, mosquitto.port, refuse_mqtt5=True) as gateway:
        updates: list[dict[str, Any]] = []
        listener = Listener(gateway.host, gateway.port, vin=VIN, on_update=updates.append)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(listener.run(count=2, timeout=WAIT)))
        thread.start()
        assert listener.wait_subscribed(WAIT)
        publisher.data(1)
        publisher.data(2)
        thread.join(WAIT * 2)
        assert gateway.refused_mqtt5 == 1  # tried 5 once, then spoke 3.1.1
    assert result == [2] and [u["seq"] for u in updates] == [1, 2]
    assert "(p2," in mosquitto.log_path.read_text()  # mosquitto logs MQTT 3.1.1 as p2


def test_explicit_mqtt5_to_a_311_broker_is_one_clear_error(mosquitto: Mosquitto) -> None:
    with TcpProxy(mosquitto.host, mosquitto.port, refuse_mqtt5=True) as gateway:
        listener = Listener(gateway.host, gateway.port, protocol="5", on_update=lambda u: None)
        with pytest.raises(ListenError, match="Unsupported protocol version"):
            listener.run(timeout=5)


SCALED = spime.Schema.build([spime.SignalDef(id=1, name="torque", scale=0.1, unit="Nm")])
FLOAT = spime.Schema.build([spime.SignalDef(id=1, name="lambda", kind="f64")])


def _listen_cli(
    broker: Mosquitto,
    publisher: Publisher,
    *extra: str,
    schema: spime.Schema = SCALED,
    raw: int | float = 6,  # 6 x 0.1 is 0.6000000000000001 in floats
) -> str:
    """`spime-agent listen --protocol 3.1.1 --count 1` as a process, fed until it exits."""
    publisher.send(f"spime/v1/{VIN}/schema/{schema.id}", schema.dumps().encode(), retain=True)
    argv = [sys.executable, "-m", "agent.cli", "listen", "--port", str(broker.port)]
    argv += ["--protocol", "3.1.1", "--vin", VIN, "--count", "1", "--timeout", str(WAIT), *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    seq = 0

    def exited() -> bool:
        nonlocal seq
        seq += 1  # a new seq each time: the listener drops repeats as duplicates
        samples = [(1_700_000_000_000, 1, raw)]
        payload = spime.encode_update(schema, boot=BOOT, seq=seq, vin=VIN, samples=samples)
        publisher.send(f"spime/v1/{VIN}/data", payload)
        return proc.poll() is not None

    try:
        assert wait_until(exited, WAIT, interval=0.2)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out.decode()


def test_listen_cli_over_311_brief_at_the_scale_precision(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    out = _listen_cli(mosquitto, publisher, "--brief")
    assert "torque=0.6" in out and "0.6000000000000001" not in out
    assert "(p2," in mosquitto.log_path.read_text()


def test_listen_cli_json_stays_exact(mosquitto: Mosquitto, publisher: Publisher) -> None:
    out = _listen_cli(mosquitto, publisher)
    assert json.loads(out)["samples"][0]["value"] == 6 * 0.1


def test_listen_brief_names_a_nan_instead_of_none(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    out = _listen_cli(mosquitto, publisher, "--brief", schema=FLOAT, raw=float("nan"))
    assert "lambda=NaN" in out and "None" not in out
