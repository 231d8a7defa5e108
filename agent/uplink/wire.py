"""What the uplink says besides outbox rows: its topics, its status documents, and the paho
client it says them with (MQTT 5 or 3.1.1, TLS, credentials, the retained last will).

``Topics`` names ``<prefix>/<vin>/data``, ``/status``, ``/schema`` and ``/schema/<id>``;
``status_doc`` builds the retained status JSON; ``new_client`` makes a fresh, unconnected client
for one connection attempt. It does not connect or publish (agent.uplink.uplink decides when,
agent.uplink.session sends).
"""

from __future__ import annotations

import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import __version__
from agent.config import MqttConfig
from agent.uplink.stats import UplinkStats


@dataclass(frozen=True)
class Topics:
    prefix: str  # <topic_prefix>/<vin>

    @property
    def data(self) -> str:
        return f"{self.prefix}/data"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def current_schema(self) -> str:
        """The schema in force also on a fixed topic, for consumers that want only the latest."""
        return f"{self.prefix}/schema"

    def schema(self, schema_id: str) -> str:
        return f"{self.prefix}/schema/{schema_id}"


def status_doc(
    stats: UplinkStats,
    extra: dict[str, Any],
    *,
    state: str,
    vin: str,
    boot: str,
    reason: str | None = None,
) -> bytes:
    """The retained status: the uplink's counters, then the caller's (``extra``), then the
    identity and state keys, which are ours and win."""
    doc: dict[str, Any] = {
        "uplink": {
            "connects": stats.connects,
            "attempts": stats.attempts,
            "retries": stats.retries,
            "published": stats.published,
            "acked": stats.acked,
            "refused": stats.refused,
        },
        **extra,
        "state": state,
        "version": __version__,
        "boot": boot,
        "vin": vin,
        "ts": round(time.time(), 3),
    }
    if reason is not None:
        doc["reason"] = reason
    return json.dumps(doc, default=str, separators=(",", ":")).encode()


def new_client(
    cfg: MqttConfig, *, vin: str, boot: str, status_topic: str, tls: ssl.SSLContext | None
) -> mqtt.Client:
    """A fresh client for one connection attempt, its last will the retained offline status."""
    kwargs: dict[str, Any] = {"client_id": cfg.client_id or vin}
    if cfg.protocol == "5":
        kwargs["protocol"] = mqtt.MQTTv5
    else:
        kwargs.update(protocol=mqtt.MQTTv311, clean_session=True)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
    # Our window is the limit; paho must never hold messages back in its own queue.
    client.max_inflight_messages_set(65535)
    if tls is not None:
        client.tls_set_context(tls)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    will = {"state": "offline", "boot": boot, "reason": "connection lost"}
    client.will_set(status_topic, json.dumps(will), qos=1, retain=True)
    return client
