"""Backend-side sender behind ``spime-agent command``: publishes one signed command to a car and
waits for its answer.

It subscribes first, then publishes the envelope (QoS 1) on ``<prefix>/<vin>/cmd``. With MQTT 5
the request carries a Response Topic of its own (``<prefix>/<vin>/cmd/reply/<random>``),
Correlation Data and a Message Expiry Interval equal to the command's time to live, so a broker
drops it once it could only be answered ``expired``. A car on MQTT 3.1.1 (or a sender on 3.1.1)
answers on ``<prefix>/<vin>/cmd/result``: that topic is always watched too, and an answer there
is matched by the command id. Signing is agent.control.envelope's; printing is agent.cli's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.mqttclient import BrokerError, ClientOptions, connect_client

log = logging.getLogger(__name__)

_LOOP_WAIT = 0.05


class CommandSender:
    def __init__(self, opts: ClientOptions, *, vin: str, prefix: str = "spime/v1") -> None:
        self.opts = opts
        base = f"{prefix.strip('/')}/{vin}"
        self.cmd_topic = f"{base}/cmd"
        self.result_topic = f"{base}/cmd/result"
        self.reply_topic = f"{base}/cmd/reply/{os.urandom(8).hex()}"
        self._v5 = True
        self._lock = threading.Lock()
        self._answer: dict[str, Any] | None = None
        self._subscribed = False
        self._problem: str | None = None
        self._command_id = ""
        self._correlation = os.urandom(16)

    def send(
        self, envelope: bytes, command_id: str, *, ttl: float, timeout: float
    ) -> dict[str, Any] | None:
        """Publish ``envelope`` and return the car's answer, or None after ``timeout`` s.
        BrokerError when the broker cannot be reached, refuses us or our subscription."""
        self._command_id = command_id
        deadline = time.monotonic() + timeout

        def setup(client: mqtt.Client) -> None:
            self._v5 = client.protocol == mqtt.MQTTv5
            client.on_connect = self._on_connect
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message

        client = connect_client(self.opts, setup=setup, logger=log)
        try:
            if not self._loop(client, deadline, lambda: self._subscribed):
                return None
            props = None
            if self._v5:
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = self.reply_topic
                props.CorrelationData = self._correlation
                props.MessageExpiryInterval = max(1, math.ceil(ttl))
            info = client.publish(self.cmd_topic, envelope, qos=1, properties=props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"publish failed: {mqtt.error_string(info.rc)}")
            self._loop(client, deadline, lambda: self._answer is not None)
            with self._lock:
                return self._answer
        finally:
            client.disconnect()

    def publish_plan(self, envelope: bytes, *, timeout: float) -> str:
        """Publish a signed plan retained on the plan topic and wait for the broker's PUBACK.
        Returns the topic; BrokerError when the broker is unreachable or refuses it."""
        topic = self.cmd_topic.removesuffix("/cmd") + "/plan"
        deadline = time.monotonic() + timeout
        client = connect_client(self.opts, logger=log)  # returns once the broker accepted us
        try:
            info = client.publish(topic, envelope, qos=1, retain=True)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"publish failed: {mqtt.error_string(info.rc)}")
            if not self._loop(client, deadline, info.is_published):
                raise BrokerError(f"{self.opts.host}:{self.opts.port}: no PUBACK in time")
            return topic
        finally:
            client.disconnect()

    def _loop(self, client: mqtt.Client, deadline: float, done: Any) -> bool:
        where = f"{self.opts.host}:{self.opts.port}"
        while not done():
            if self._problem is not None:
                raise BrokerError(f"{where}: {self._problem}")
            if time.monotonic() >= deadline:
                return False
            if client.loop(_LOOP_WAIT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise BrokerError(f"{where}: connection lost")
        return True

    # ---- paho callbacks (run in send()'s thread) ---------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            self._problem = f"refused by broker: {reason_code}"
            return
        topics = [(self.result_topic, 1)] + ([(self.reply_topic, 1)] if self._v5 else [])
        client.subscribe(topics)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, codes: Any, props: Any
    ) -> None:
        refused = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if refused:
            self._problem = f"subscription refused: {', '.join(refused)}"
        else:
            self._subscribed = True

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            log.warning("ignored an answer that is not JSON on %s", msg.topic)
            return
        if not isinstance(doc, dict):
            return
        if msg.topic == self.reply_topic:
            corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
            if corr is None or bytes(corr) != self._correlation:
                return
        elif doc.get("id") not in (self._command_id, None):
            # Someone else's answer on the shared result topic. An answer without an id is a
            # refusal before the signature verified: on 3.1.1 it cannot be told apart.
            return
        with self._lock:
            if self._answer is None or self._answer.get("id") is None:
                self._answer = doc
