"""The uplink's link handling against a real mosquitto, through a loopback TCP proxy that can
stop forwarding without closing (a cellular link dying without a FIN)."""
# ruff: noqa: F811  (the mosquitto fixture is imported, then named as a test argument)

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from agent.outbox import Outbox
from tests.support.broker import (
    Mosquitto,
    Subscriber,
    make_tls_material,
    mosquitto,  # noqa: F401
    wait_until,
)
from tests.support.proxy import TcpProxy
from tests.support.uplinkrun import (
    DATA,
    VIN,
    first_seen,
    make_uplink,
    mqtt_cfg,
    outbox,  # noqa: F401
    put_rows,
)

WAIT = 30.0


def test_dead_link_is_noticed_by_missing_puback_and_nothing_is_lost(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    links: list[tuple[bool, str]] = []
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        # Keepalive 60 s: keepalive alone would take about two minutes to notice.
        up = make_uplink(mqtt_cfg(proxy, ack_timeout=2.0, keepalive=60), outbox, links=links)
        with Subscriber(mosquitto, DATA) as sub:
            before = put_rows(outbox, 0, 50)
            up.start()
            try:
                assert sub.wait_for(lambda m: {x.payload for x in m} >= set(before), WAIT)
                assert up.wait_drained(WAIT)
                proxy.blackhole()
                died = time.monotonic()
                after = put_rows(outbox, 50, 50)
                assert wait_until(lambda: any(not ok for ok, _ in links), WAIT)
                noticed = time.monotonic() - died
                assert wait_until(lambda: up.stats().connects >= 2, WAIT)
                assert sub.wait_for(lambda m: {x.payload for x in m} >= set(before + after), WAIT)
                assert up.wait_drained(WAIT)
            finally:
                up.stop(2.0)
            got = first_seen(sub.messages)
    down = [why for ok, why in links if not ok]
    assert len(down) == 1 and "no PUBACK for 2 s" in down[0]
    # Bounded by ack_timeout plus one turn of the worker loop, far below 2 x keepalive.
    assert 2.0 <= noticed < 10.0
    assert got == before + after
    assert up.stats().dead_links == 1
    assert outbox.stats().rows == 0


def test_reconnect_requested_while_connecting_is_not_lost(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    links: list[tuple[bool, str]] = []
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        up = make_uplink(mqtt_cfg(proxy), outbox, links=links)
        proxy.hold()  # the TCP connection is made, the broker's answer is held back
        up.start()
        try:
            assert wait_until(lambda: proxy.accepted >= 1, WAIT)
            assert up.stats().state == "connecting"
            up.reconnect("modem switched to b")
            proxy.release()
            assert wait_until(lambda: up.stats().state == "connected", WAIT)
            # The attempt under way when the switch came may use the old route: not kept.
            assert proxy.accepted >= 2 and proxy.first_closed()
            assert wait_until(lambda: proxy.open_connections == 1, WAIT)
        finally:
            up.stop(1.0)
    assert any(not ok and "modem switched to b" in why for ok, why in links)


def _loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("agent")
    ]


def test_plain_mqtt_to_a_tls_port_is_logged_once(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path / "broker", tls=make_tls_material(tmp_path / "tls"))
    broker.start()
    links: list[tuple[bool, str]] = []
    up = make_uplink(mqtt_cfg(broker, tls=False, reconnect_max=0.2), outbox, links=links)
    caplog.set_level(logging.DEBUG, logger="agent")
    try:
        up.start()
        assert wait_until(lambda: up.stats().attempts >= 10, WAIT)
    finally:
        up.stop(0.1)
        broker.stop()
    loud = _loud(caplog)
    assert len(loud) == 1, loud
    assert "closed before CONNACK" in loud[0]
    assert len(links) == 1 and not links[0][0]
    # paho's own lines are kept, at DEBUG only.
    assert any(r.name == "agent.uplink.paho" for r in caplog.records)
    assert not any(
        r.name == "agent.uplink.paho" and r.levelno > logging.DEBUG for r in caplog.records
    )


def test_flapping_broker_is_logged_once_per_change(
    tmp_path: Path, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    links: list[tuple[bool, str]] = []
    up = make_uplink(mqtt_cfg(broker), outbox, links=links)
    caplog.set_level(logging.DEBUG, logger="agent")
    stops = 4
    try:
        up.start()
        for n in range(1, stops + 1):
            assert wait_until(lambda: up.stats().connects >= n, WAIT)  # noqa: B023
            broker.stop()
            attempts = up.stats().attempts
            assert wait_until(lambda: up.stats().attempts >= attempts + 3, WAIT)  # noqa: B023
            broker.start()
        assert wait_until(lambda: up.stats().connects >= stops + 1, WAIT)
    finally:
        up.stop(0.5)
        broker.stop()
    loud = _loud(caplog)
    # Per stop: the lost connection, then (a change of reason) the refused reconnects.
    assert len(loud) <= 2 * stops, loud
    assert all("MQTT link down" in line for line in loud), loud
    assert [ok for ok, _ in links].count(False) <= 2 * stops


def test_subscriptions_and_messages_reach_the_handler(mosquitto: Mosquitto, outbox: Outbox) -> None:
    got: list[tuple[str, bytes]] = []
    cmd = f"spime/v1/{VIN}/cmd"
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes, properties: object) -> None:
        with lock:
            got.append((topic, payload))
        up.publish(f"spime/v1/{VIN}/rsp", b"ok:" + payload)

    up = make_uplink(mqtt_cfg(mosquitto), outbox, subscriptions=[(cmd, 1)], on_message=on_message)
    with Subscriber(mosquitto, f"spime/v1/{VIN}/rsp") as rsp:
        up.start()
        try:
            assert wait_until(lambda: up.stats().state == "connected", WAIT)
            with Subscriber(mosquitto, "unused/topic") as sender:
                # Subscribed once the broker forwards: retry until the handler saw one.
                def delivered() -> bool:
                    sender._client.publish(cmd, b"ping", qos=1)
                    return wait_until(lambda: bool(got), 1.0)

                assert wait_until(delivered, WAIT)
            assert rsp.wait_for(lambda m: any(x.payload == b"ok:ping" for x in m), WAIT)
        finally:
            up.stop(1.0)
    assert got[0] == (cmd, b"ping")
