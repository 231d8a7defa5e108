"""The uplink against real mosquitto processes and a real SQLite outbox."""
# ruff: noqa: F811  (the mosquitto fixture is imported, then named as a test argument)

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import agent
from agent.config import TlsConfig
from agent.outbox import Outbox
from tests.support.broker import (
    Mosquitto,
    Received,
    Subscriber,
    make_tls_material,
    mosquitto,  # noqa: F401
    wait_until,
)
from tests.support.e2e import PREFIX
from tests.support.uplinkrun import (
    DATA,
    SCHEMA_ID,
    SCHEMA_JSON,
    STATUS,
    VIN,
    first_seen,
    make_uplink,
    mqtt_cfg,
    outbox,  # noqa: F401
    put_rows,
)

WAIT = 30.0


def has_all(rows: list[bytes]):  # type: ignore[no-untyped-def]
    want = set(rows)
    return lambda msgs: want <= {m.payload for m in msgs}


def outbox_empty(box: Outbox) -> bool:
    return box.stats().rows == 0 and not box.next_batch(1)


def status_docs(msgs: list[Received]) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(m.payload) for m in msgs]


def test_rows_arrive_in_order_and_are_acked(mosquitto: Mosquitto, outbox: Outbox) -> None:
    rows = put_rows(outbox, 0, 500)
    up = make_uplink(mqtt_cfg(mosquitto), outbox)
    with Subscriber(mosquitto, DATA) as sub:
        up.start()
        assert sub.wait_for(has_all(rows), WAIT)
        assert up.wait_drained(WAIT)
        more = put_rows(outbox, 500, 300)
        assert sub.wait_for(has_all(more), WAIT)
        assert up.wait_drained(WAIT)
        assert up.stop(5.0) is True
        got = sub.messages
    assert [m.payload for m in got] == rows + more  # exactly once, in order, on a stable link
    assert all(not m.retain and m.qos == 1 for m in got)
    assert wait_until(lambda: outbox_empty(outbox), WAIT)
    s = up.stats()
    assert (s.state, s.published, s.acked, s.refused, s.in_flight) == ("stopped", 800, 800, 0, 0)
    assert s.bytes_sent > sum(len(r) + len(DATA) for r in rows + more)


def test_events_go_first_and_are_not_held_back_by_drain_rate(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    telemetry = put_rows(outbox, 0, 200)
    up = make_uplink(mqtt_cfg(mosquitto, drain_rate=10.0), outbox)
    with Subscriber(mosquitto, DATA) as sub:
        up.start()
        assert sub.wait_for(lambda m: len(m) >= 3, WAIT)
        event = put_rows(outbox, 1000, 1, priority="event")
        assert sub.wait_for(has_all(event), WAIT)
        # At 10 messages/s the 200 telemetry rows take 20 s; the event did not queue behind them.
        seen = [m.payload for m in sub.messages]
        assert seen.index(event[0]) < 100
        assert first_seen(sub.messages)[: seen.index(event[0])] == telemetry[: seen.index(event[0])]
        assert up.stop(0.2) is False  # not drained: the rest stays in the outbox
    assert outbox.stats().rows > 0


def test_an_event_overtakes_a_backlog_read_ahead_in_pieces(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    # Fast enough that the read-ahead never grows stale (each read continues after the last),
    # slow enough that the backlog takes seconds: the event committed meanwhile must still be
    # the next row read, not the one after the backlog.
    telemetry = put_rows(outbox, 0, 3000)
    up = make_uplink(mqtt_cfg(mosquitto, drain_rate=500.0), outbox)
    with Subscriber(mosquitto, DATA) as sub:
        up.start()
        assert sub.wait_for(lambda m: len(m) >= 100, WAIT)
        event = put_rows(outbox, 9000, 1, priority="event")
        # Counted once the event was committed: the rows handed on before (but those of a
        # publishing call still under way, at most one read-ahead, counted at its end).
        published = up.stats().published
        assert sub.wait_for(has_all(event), WAIT)
        seen = first_seen(sub.messages)
        at = seen.index(event[0])
        # Ahead of the event only what was read ahead before its commit: the read-ahead being
        # published, and one read while it was committed (it continues after the last row
        # read, which the event does not). A read-ahead is 4 windows of 20 rows. The backlog
        # is far longer: an event read after it would come after row 3000.
        assert at <= published + 3 * 4 * 20, (at, published)
        assert seen[:at] == telemetry[:at]
        up.stop(0.2)


def test_birth_status_schema_and_clean_stop(mosquitto: Mosquitto, outbox: Outbox) -> None:
    up = make_uplink(
        mqtt_cfg(mosquitto), outbox, status=lambda: {"modem": "sim-a", "state": "bogus"}
    )
    up.start()
    try:
        # Drained: the schemas and the birth status are acknowledged, so retained by now.
        assert up.wait_drained(WAIT)
        # A subscriber arriving later gets the retained birth status and schema.
        with Subscriber(mosquitto, f"{PREFIX}/{VIN}/#") as sub:
            assert sub.wait_for(lambda m: len(m) >= 3, WAIT)
            by_topic = {m.topic: m for m in sub.messages}
            schema = by_topic[f"{PREFIX}/{VIN}/schema/{SCHEMA_ID}"]
            assert schema.retain and schema.payload == SCHEMA_JSON
            current = by_topic[f"{PREFIX}/{VIN}/schema"]  # the schema in force, fixed topic
            assert current.retain and current.payload == SCHEMA_JSON
            birth = json.loads(by_topic[STATUS].payload)
            assert by_topic[STATUS].retain
            assert birth["state"] == "online"  # our state wins over the status() dict
            assert birth["version"] == agent.__version__
            assert birth["boot"] == "b00710ad" and birth["modem"] == "sim-a"
            up.publish_status()
            assert sub.wait_for(lambda m: len([x for x in m if x.topic == STATUS]) >= 2, WAIT)
    finally:
        assert up.stop(5.0) is True
    with Subscriber(mosquitto, STATUS) as late:
        assert late.wait_for(lambda m: len(m) >= 1, WAIT)
        last = json.loads(late.messages[-1].payload)
    assert last["state"] == "offline" and last["reason"] == "shutdown"
    assert up.stats().state == "stopped"


def test_broker_killed_and_restarted_loses_nothing(tmp_path: Path, outbox: Outbox) -> None:
    broker = Mosquitto(tmp_path / "broker", max_inflight_messages=0)
    broker.start()
    links: list[tuple[bool, str]] = []
    up = make_uplink(mqtt_cfg(broker, drain_rate=400.0), outbox, links=links)
    stop_producing = threading.Event()
    produced: list[bytes] = []

    def produce() -> None:
        i = 0
        while not stop_producing.is_set():
            produced.extend(put_rows(outbox, i, 20))
            i += 20
            stop_producing.wait(0.05)

    producer = threading.Thread(target=produce)
    try:
        sub = Subscriber(broker, DATA, reconnect=True, client_id="sub-1")
        up.start()
        producer.start()
        assert sub.wait_for(lambda m: len(m) >= 200, WAIT)
        broker.kill()
        assert wait_until(lambda: "connection refused" in (up.stats().last_error or ""), WAIT)
        attempts = up.stats().attempts
        assert wait_until(lambda: up.stats().attempts >= attempts + 2, WAIT)
        # Restart on the same port admitting only the subscriber until it is back, so nothing
        # the uplink sends after the restart can slip past it; the uplink is refused meanwhile.
        broker.clientid_prefixes = "sub-"
        broker.start()
        assert sub.wait_subscribed(WAIT)
        assert wait_until(lambda: "refused" in (up.stats().last_error or ""), WAIT)
        broker.clientid_prefixes = None
        broker.reload()
        assert wait_until(lambda: up.stats().connects >= 2, WAIT)
        stop_producing.set()
        producer.join()
        assert sub.wait_for(has_all(produced), WAIT)
        assert up.wait_drained(WAIT)
        assert first_seen(sub.messages) == produced
        assert up.stop(5.0) is True
        sub.close()
    finally:
        stop_producing.set()
        if producer.is_alive():
            producer.join()
        up.stop(0)
        broker.stop()
    assert wait_until(lambda: outbox_empty(outbox), WAIT)
    assert [ok for ok, _ in links][0] is True and links[-1] == (True, "connected")
    assert [ok for ok, _ in links].count(True) == 2


CHILD = """
import sys, time, threading
from pathlib import Path
from agent.config import MqttConfig, OutboxConfig
from agent.outbox import Outbox
from agent.uplink import Uplink
box = Outbox(OutboxConfig(path=Path(sys.argv[3]))); box.open()
up = Uplink(MqttConfig(host="127.0.0.1", port=int(sys.argv[1])), vin=sys.argv[2], boot="dead0001",
            outbox=box, schema_id="0123456789abcdef", schema_json=b"{}")
up.start()
threading.Event().wait(120)
"""


def test_last_will_when_the_agent_dies(mosquitto: Mosquitto, tmp_path: Path) -> None:
    with Subscriber(mosquitto, STATUS) as sub:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(mosquitto.port), VIN, str(tmp_path / "o.db")],
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            assert sub.wait_for(lambda m: any(d["state"] == "online" for d in status_docs(m)), WAIT)
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(WAIT)
        assert sub.wait_for(lambda m: status_docs(m)[-1]["state"] == "offline", WAIT)
    with Subscriber(mosquitto, STATUS) as late:
        assert late.wait_for(lambda m: len(m) >= 1, WAIT)
        doc = json.loads(late.messages[-1].payload)
        assert late.messages[-1].retain
    assert doc == {"state": "offline", "boot": "dead0001", "reason": "connection lost"}


def test_refused_publishes_are_counted_and_rows_kept(tmp_path: Path, outbox: Outbox) -> None:
    acl = "topic readwrite spime/v1/+/status\ntopic readwrite spime/v1/+/schema/#\n"
    broker = Mosquitto(tmp_path / "broker", acl=acl)
    broker.start()
    rows = put_rows(outbox, 0, 5)
    up = make_uplink(mqtt_cfg(broker), outbox)
    try:
        up.start()
        assert wait_until(lambda: up.stats().refused >= 10, WAIT)  # retried, after a pause
        s = up.stats()
        assert s.acked == 0 and "Not authorized" in (s.last_error or "")
        assert s.state == "connected"
        assert up.stop(0.5) is False
    finally:
        broker.stop()
    assert [e.payload for e in outbox.next_batch(10)] == rows


def test_tls_with_client_certificate(tmp_path: Path, outbox: Outbox) -> None:
    tls = make_tls_material(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=tls, require_certificate=True)
    broker.start()
    rows = put_rows(outbox, 0, 50)
    cfg = mqtt_cfg(broker, tls=TlsConfig(ca=tls.ca, cert=tls.client_cert, key=tls.client_key))
    assert cfg.tls_config is not None
    up = make_uplink(cfg, outbox)
    try:
        with Subscriber(
            broker,
            DATA,
            ca_certs=str(tls.ca),
            certfile=str(tls.client_cert),
            keyfile=str(tls.client_key),
        ) as sub:
            up.start()
            assert sub.wait_for(has_all(rows), WAIT)
            assert up.stop(5.0) is True
            assert first_seen(sub.messages) == rows
    finally:
        up.stop(0)
        broker.stop()


def test_wrong_ca_is_logged_once_and_retried(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    tls = make_tls_material(tmp_path / "tls")
    broker = Mosquitto(tmp_path / "broker", tls=tls)
    broker.start()
    rows = put_rows(outbox, 0, 5)
    links: list[tuple[bool, str]] = []
    cfg = mqtt_cfg(broker, tls=TlsConfig(ca=tls.other_ca))
    up = make_uplink(cfg, outbox, links=links)
    caplog.set_level(logging.INFO, logger="agent.uplink")
    try:
        up.start()
        assert wait_until(lambda: up.stats().attempts >= 4, WAIT)
        assert up.stop(0.2) is False
    finally:
        broker.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "certificate verify failed" in warnings[0]
    assert len(links) == 1 and not links[0][0] and "certificate verify failed" in links[0][1]
    assert up.stats().connects == 0
    assert [e.payload for e in outbox.next_batch(10)] == rows


def test_receive_maximum_is_respected(tmp_path: Path, outbox: Outbox) -> None:
    broker = Mosquitto(tmp_path / "broker", max_inflight_messages=3)
    broker.start()
    rows = put_rows(outbox, 0, 2000)
    up = make_uplink(mqtt_cfg(broker, max_inflight=50), outbox)
    peak = 0
    try:
        with Subscriber(broker, DATA) as sub:
            up.start()

            def done() -> bool:
                nonlocal peak
                peak = max(peak, up.stats().in_flight)
                return len(sub.messages) >= len(rows)

            assert wait_until(done, WAIT, interval=0.001)
            assert up.stats().receive_maximum == 3
            assert first_seen(sub.messages) == rows
            assert up.stop(5.0) is True
    finally:
        up.stop(0)
        broker.stop()
    assert 1 <= peak <= 3


def test_mqtt_311(mosquitto: Mosquitto, outbox: Outbox) -> None:
    rows = put_rows(outbox, 0, 100)
    up = make_uplink(mqtt_cfg(mosquitto, protocol="3.1.1", client_id="car-311"), outbox)
    with Subscriber(mosquitto, DATA) as sub:
        up.start()
        assert sub.wait_for(has_all(rows), WAIT)
        assert up.stop(5.0) is True
        assert [m.payload for m in sub.messages] == rows
    s = up.stats()
    assert s.acked == 100 and s.receive_maximum is None
