"""Backend-side subscriber behind ``spime-agent listen``: receives schemas and spime updates from
a broker, decodes each update once and hands it to a callback.

It subscribes ``<prefix>/<vin or +>/schema/+`` and ``<prefix>/<vin or +>/data``, keeps the
schemas it has seen by id, holds updates whose schema has not arrived yet in a bounded buffer
(oldest dropped and counted), and drops duplicates (MQTT delivers at least once) by
(vin, boot, seq) with a bounded memory. It connects through agent.mqttclient (MQTT 5, or 3.1.1
when asked or when the broker refuses 5) and reconnects with the one backoff policy
(agent.backoff). Printing and argument parsing are agent.cli's job; the wire format is
agent.spime's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent import spime
from agent.backoff import Backoff
from agent.config import TlsConfig
from agent.errors import AgentError
from agent.mqttclient import BrokerError, ClientOptions, connect_client, describe_error
from agent.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

MAX_SCHEMAS = 1024
# Reconnect delays: full-jitter exponential, starting over after a connection that lasted.
_RECONNECT_MIN, _RECONNECT_MAX = 0.5, 30.0
_LOOP_WAIT = 0.2

Key = tuple[str, str, int]  # vin, boot, seq


class ListenError(AgentError):
    """The broker cannot be reached or refuses us."""


@dataclass(frozen=True)
class ListenStats:
    received: int  # data messages, duplicates included
    delivered: int
    duplicates: int
    held: int  # waiting for their schema now
    dropped: int  # held updates dropped because the buffer was full
    errors: int  # undecodable payloads and schemas, callback failures


class Listener:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        vin: str | None = None,
        prefix: str = "spime/v1",
        tls: TlsConfig | None = None,
        username: str | None = None,
        password: str | None = None,
        protocol: str | None = None,
        on_update: Callable[[dict[str, Any]], None],
        max_held: int = 10_000,
        dedupe_window: int = 100_000,
    ) -> None:
        self.host, self.port = host, port
        base = f"{prefix.strip('/')}/{vin or '+'}"
        self.topics = (f"{base}/schema/+", f"{base}/data")
        self._on_update = on_update
        self._max_held = max_held
        self._dedupe_window = dedupe_window
        self._opts = ClientOptions(host, port, tls, username, password, protocol)
        self._backoff = Backoff(_RECONNECT_MIN, _RECONNECT_MAX, stable_after=_RECONNECT_MAX)
        self._ratelog = RateLimitedLog(log)
        self._stop = threading.Event()
        self._schemas: OrderedDict[str, spime.Schema] = OrderedDict()
        self._held: deque[tuple[Key, str, bytes]] = deque()
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self._lock = threading.Lock()  # guards the counters read by stats()
        self._received = self._delivered = self._duplicates = 0
        self._dropped = self._errors = 0
        self._target: int | None = None
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._accepted = False

    def stop(self) -> None:
        self._stop.set()

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker acknowledged our subscriptions on the current connection."""
        return self._subscribed.wait(timeout)

    def schema(self, schema_id: str) -> spime.Schema | None:
        """A schema seen so far, by id (for the update handed to ``on_update``, always there)."""
        return self._schemas.get(schema_id)

    def stats(self) -> ListenStats:
        with self._lock:
            return ListenStats(
                self._received,
                self._delivered,
                self._duplicates,
                len(self._held),
                self._dropped,
                self._errors,
            )

    def run(self, count: int | None = None, timeout: float | None = None) -> int:
        """Deliver updates until ``count`` unique ones arrived, ``timeout`` seconds passed or
        ``stop()`` was called; return the number delivered. Raise ListenError if the broker
        cannot be reached at all at the start."""
        self._target = count
        deadline = None if timeout is None else time.monotonic() + timeout

        def setup(client: mqtt.Client) -> None:
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.on_subscribe = lambda c, u, mid, codes, props: self._subscribed.set()

        try:
            client = connect_client(self._opts, setup=setup, logger=log)
        except BrokerError as err:
            raise ListenError(*err.problems) from None
        self._refused = None  # refusals of MQTT 5 before a 3.1.1 connection are no refusal
        try:
            while not self._done(deadline):
                if self._refused is not None:
                    raise ListenError(f"{self.host}:{self.port}: {self._refused}")
                if client.loop(_LOOP_WAIT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._reconnect(client, deadline)
        finally:
            client.disconnect()
        return self.stats().delivered

    def _done(self, deadline: float | None) -> bool:
        if self._stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return True
        with self._lock:
            return self._target is not None and self._delivered >= self._target

    def _reconnect(self, client: mqtt.Client, deadline: float | None) -> None:
        while not self._done(deadline):
            delay = self._backoff.next_delay()
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            self._stop.wait(delay)
            try:
                client.reconnect()
                self._backoff.succeeded()
                return
            except (OSError, ValueError) as err:
                self._ratelog.warning(
                    "reconnect", "listen: %s", describe_error(err, self.host, self.port)
                )

    # ---- paho callbacks (run in run()'s thread) ---------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any, props: Any
    ) -> None:
        if reason_code.is_failure:
            self._refused = f"refused by broker: {reason_code}"
            return
        self._accepted = True
        log.info("listening on %s:%d to %s", self.host, self.port, ", ".join(self.topics))
        client.subscribe([(t, 1) for t in self.topics])

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any, props: Any
    ) -> None:
        self._subscribed.clear()
        # A connection the broker never accepted (e.g. MQTT 5 refused) was not "lost".
        accepted, self._accepted = self._accepted, False
        if accepted and not self._stop.is_set():
            self._ratelog.warning("lost", "listen: connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic.endswith("/data"):
                self._data(bytes(msg.payload))
            else:
                self._schema(msg.topic, bytes(msg.payload))
        except Exception as err:  # one bad message must not end the session
            self._error("message", f"{msg.topic}: {err}")

    def _error(self, key: str, text: str) -> None:
        with self._lock:
            self._errors += 1
        self._ratelog.warning(key, "listen: %s", text)

    def _schema(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained schema
        try:
            schema = spime.Schema.from_json(payload, where=topic)
        except AgentError as err:
            self._error("schema", str(err))
            return
        self._schemas[schema.id] = schema
        self._schemas.move_to_end(schema.id)
        while len(self._schemas) > MAX_SCHEMAS:
            self._schemas.popitem(last=False)
        waiting = [h for h in self._held if h[1] == schema.id]
        if waiting:
            self._held = deque(h for h in self._held if h[1] != schema.id)
            for key, _sid, data in waiting:
                self._deliver(key, data, schema)

    def _data(self, payload: bytes) -> None:
        with self._lock:
            self._received += 1
        try:
            head = spime.peek_header(payload)
        except AgentError as err:
            self._error("header", str(err))
            return
        key = (head.vin, head.boot, head.seq)
        if key in self._seen:
            with self._lock:
                self._duplicates += 1
            return
        self._seen[key] = None
        while len(self._seen) > self._dedupe_window:
            self._seen.popitem(last=False)
        schema = self._schemas.get(head.schema_id)
        if schema is None:
            self._hold(key, head.schema_id, payload)
        else:
            self._deliver(key, payload, schema)

    def _hold(self, key: Key, schema_id: str, payload: bytes) -> None:
        self._held.append((key, schema_id, payload))
        if len(self._held) > self._max_held:
            old_key, old_sid, _ = self._held.popleft()
            # Forget it was seen, so that a re-sent copy can still be delivered.
            self._seen.pop(old_key, None)
            with self._lock:
                self._dropped += 1
            self._ratelog.warning(
                "held",
                "listen: dropped an update waiting for schema %s (buffer of %d full)",
                old_sid,
                self._max_held,
            )

    def _deliver(self, key: Key, payload: bytes, schema: spime.Schema) -> None:
        with self._lock:
            if self._target is not None and self._delivered >= self._target:
                return
        try:
            update = spime.decode_update(payload, schema)
        except AgentError as err:
            self._error("decode", f"update {key}: {err}")
            return
        with self._lock:
            self._delivered += 1
        try:
            self._on_update(update)
        except Exception as err:
            self._error("callback", f"on_update failed: {err!r}")
