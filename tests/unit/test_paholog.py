"""PahoLog: paho's log lines at DEBUG only, the first problem kept for the caller's reason."""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.mqttclient import PahoLog


def unconnected_client(paho_log: PahoLog) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paholog-test")
    client.enable_logger(paho_log)
    return client


def test_the_first_problem_is_kept_once_and_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    paho_log = PahoLog(logging.getLogger("agent.test.paholog"))
    client = unconnected_client(paho_log)
    caplog.set_level(logging.DEBUG, logger="agent.test")
    # Looping a client that is not connected: paho logs an error each time.
    assert client.loop(0) == MQTTErrorCode.MQTT_ERR_NO_CONN
    assert client.loop(0) == MQTTErrorCode.MQTT_ERR_NO_CONN
    first = paho_log.take()
    assert first is not None and "not connected" in first
    assert paho_log.take() is None
    lines = [r for r in caplog.records if r.name == "agent.test.paholog"]
    assert len(lines) == 2
    assert all(r.levelno == logging.DEBUG for r in lines)
    assert all(r.getMessage().startswith("paho: Client is not connected") for r in lines)


def test_nothing_is_logged_when_debug_is_off(caplog: pytest.LogCaptureFixture) -> None:
    paho_log = PahoLog(logging.getLogger("agent.test.paholog"))
    client = unconnected_client(paho_log)
    caplog.set_level(logging.INFO, logger="agent.test")
    client.loop(0)
    assert not [r for r in caplog.records if r.name.startswith("agent.test")]
    first = paho_log.take()
    assert first is not None and "not connected" in first  # the reason is kept all the same
