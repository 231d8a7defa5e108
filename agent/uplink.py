"""The MQTT uplink: publishes rows of the durable outbox to the broker, one paho session at a time.

One worker thread owns everything paho: it connects (TLS or plain TCP, MQTT 5 or 3.1.1), sends
the schema and a retained "online" status, then publishes outbox rows on ``<prefix>/<vin>/data``
within an in-flight window and acks rows in the outbox only on a successful PUBACK. When the
link drops, everything in flight is simply no longer in flight: the rows are still in the outbox
and are sent again on the next connection (duplicates possible, losses not). Reconnects wait with
exponential backoff and full jitter (tenacity).

Because the network loop, the publishes and paho's callbacks all run on the worker thread, no
lock of ours is ever held across a paho call. A fresh paho client is made for every connection:
paho's own queue of unacknowledged messages dies with it, so only the outbox decides what is
re-sent.

It leaves to others: what goes into the outbox (pipeline), its storage (agent.outbox), choosing
a modem (agent.modem, told of link changes through ``on_link``) and wiring (agent.daemon).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import tenacity
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent import __version__
from agent.config import MqttConfig, TlsConfig
from agent.errors import ConfigError
from agent.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

# Rows are read from the outbox a few windows at a time and published from memory as PUBACKs
# free the window: one SQLite read per many messages, not one per PUBACK. The read-ahead is
# short-lived so that new events and purged rows are noticed within a fraction of a second.
_PREFETCH_WINDOWS = 4
_PREFETCH_MAX_AGE = 0.25
_CONNACK_TIMEOUT = 15.0
_IDLE_WAIT = 0.5
_CLOSE_WAIT = 3.0
_MAX_OVERSIZE_IDS = 1024


class OutboxLike(Protocol):
    def next_batch(self, limit: int, exclude: Collection[int] = ()) -> list[Any]: ...
    def ack(self, ids: Iterable[int]) -> None: ...
    def wait_for_data(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class UplinkStats:
    state: str  # "connecting", "connected", "disconnected", "stopped"
    last_error: str | None
    connects: int
    attempts: int  # connection attempts, successful or not
    published: int
    acked: int
    refused: int
    in_flight: int
    receive_maximum: int | None
    # Payload plus estimated MQTT framing per PUBLISH sent (see _publish_size).
    bytes_sent: int
    errors: int  # exceptions caught in callbacks or in the worker loop


def _varint_len(n: int) -> int:
    size = 1
    while n > 0x7F:
        n >>= 7
        size += 1
    return size


def _publish_size(topic_len: int, payload_len: int, v5: bool) -> int:
    """Estimated bytes of one QoS 1 PUBLISH on the wire (TLS and TCP overhead not counted):
    fixed header byte + remaining-length varint + 2-byte topic length + topic + 2-byte packet id
    + (MQTT 5) 1-byte empty property length + payload."""
    remaining = 2 + topic_len + 2 + (1 if v5 else 0) + payload_len
    return 1 + _varint_len(remaining) + remaining


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"mqtt.tls.ca: cannot load CA file {tls.ca}: {err}") from None
    if tls.cert is not None and tls.key is not None:
        try:
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"mqtt.tls.cert: cannot load client certificate {tls.cert} / key {tls.key}: {err}"
            ) from None
    ctx.check_hostname = tls.check_hostname
    return ctx


def describe_error(err: BaseException, host: str, port: int) -> str:
    """One line naming the layer that failed: DNS, TCP or TLS."""
    where = f"{host}:{port}"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS to {where}: certificate verify failed ({err.verify_message})"
    if isinstance(err, ssl.SSLError):
        return f"TLS to {where}: {err.reason or err}"
    if isinstance(err, socket.gaierror):
        return f"DNS: cannot resolve {host} ({err.strerror})"
    if isinstance(err, ConnectionRefusedError):
        return f"TCP to {where}: connection refused"
    if isinstance(err, TimeoutError):
        return f"TCP to {where}: connection timed out"
    if isinstance(err, OSError):
        return f"TCP to {where}: {err.strerror or err}"
    return f"{where}: {type(err).__name__}: {err}"


class _Backoff:
    """Full-jitter exponential backoff computed by tenacity; ``reset()`` after a success."""

    def __init__(self, low: float, high: float) -> None:
        self._wait = tenacity.wait_random_exponential(multiplier=low, min=low, max=high)
        self._attempt = 0

    def next(self) -> float:
        self._attempt += 1
        state = tenacity.RetryCallState(
            retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={}
        )
        state.attempt_number = self._attempt
        return float(self._wait(state))

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt


class _TokenBucket:
    """Messages per second with a one-second burst; rate 0 means unlimited."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._last = clock()

    def available(self) -> float:
        if not self.rate:
            return float("inf")
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        return self._tokens

    def take(self) -> None:
        if self.rate:
            self._tokens -= 1.0

    def time_to_token(self) -> float:
        return 0.0 if not self.rate else max(0.0, (1.0 - self._tokens) / self.rate)


class Uplink:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        vin: str,
        boot: str,
        outbox: OutboxLike,
        schema_id: str,
        schema_json: bytes,
        status: Callable[[], dict[str, Any]] = dict,
        on_link: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.vin = vin
        self.boot = boot
        self._outbox = outbox
        self._schema_id = schema_id
        self._schema_json = bytes(schema_json)
        # Every schema published on each connection (guarded by _cond); new ones queued too.
        self._schemas: dict[str, bytes] = {schema_id: self._schema_json}
        self._current_schema = schema_id
        self._new_schemas: deque[str] = deque()
        self._status_fn = status
        self._on_link = on_link
        self._v5 = cfg.protocol == "5"
        base = f"{cfg.topic_prefix}/{vin}"
        self.data_topic = f"{base}/data"
        self.status_topic = f"{base}/status"
        self.schema_topic = f"{base}/schema/{schema_id}"
        # The schema in force also on a fixed topic, for consumers that want only the latest.
        self.current_schema_topic = f"{base}/schema"
        self._data_topic_len = len(self.data_topic.encode())
        tls = cfg.tls_config
        self._tls = tls_context(tls) if tls is not None else None

        self._ratelog = RateLimitedLog(log)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_deadline = float("inf")
        self._status_requested = threading.Event()
        self._drained_at_stop = False

        # Counters and the drained observation, read from other threads.
        self._cond = threading.Condition()
        self._state = "disconnected"
        self._last_error: str | None = None
        self._connects = self._attempts = self._published = self._acked = self._refused = 0
        self._bytes = self._errors = 0
        self._receive_max: int | None = None
        self._iteration = 0
        self._drained_iteration = -1

        # Worker-thread state (paho callbacks run on the worker thread too).
        self._in_flight: dict[int, int] = {}  # mid -> outbox id
        self._ctrl_in_flight: set[int] = set()
        self._ctrl_queue: deque[tuple[str, bytes]] = deque()
        self._to_ack: list[int] = []
        self._prefetch: deque[Any] = deque()
        self._prefetch_at = 0.0
        self._oversize: set[int] = set()
        self._window = cfg.max_inflight
        self._max_packet: int | None = None
        self._connack: Any = None
        self._lost: str | None = None
        self._link_up: bool | None = None
        self._down_reason: str | None = None
        self._reconnect = _Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self._refusal = _Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self._paused_until = 0.0
        self._bucket = _TokenBucket(cfg.drain_rate, time.monotonic)

    # ---- public API -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("uplink already started")
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Keep publishing until the outbox is empty or ``timeout`` passes, then publish the
        retained offline status and disconnect. True if the outbox was drained."""
        if self._thread is None:
            self._set_state("stopped")
            return False
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        # Beyond the drain time: one connect attempt and the clean close may still be running.
        self._thread.join(timeout + _CONNACK_TIMEOUT + 2 * _CLOSE_WAIT)
        if self._thread.is_alive():
            log.warning("uplink thread did not finish within its stop timeout")
        return self._drained_at_stop

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox has no rows and nothing is in flight (as seen by the worker
        after this call began)."""
        with self._cond:
            start = self._iteration
            return self._cond.wait_for(lambda: self._drained_iteration > start, timeout)

    def publish_status(self) -> None:
        self._status_requested.set()

    def add_schema(self, schema_id: str, schema_json: bytes, *, current: bool = False) -> None:
        """Publish another schema (retained, on its own topic), now if connected and after every
        reconnect: rows written under an earlier schema stay decodable after a reload.
        ``current``: it replaces the schema in force (also on ``<prefix>/<vin>/schema``)."""
        with self._cond:
            if current:
                self._current_schema = schema_id
            if schema_id not in self._schemas or current:
                self._schemas[schema_id] = bytes(schema_json)
                self._new_schemas.append(schema_id)

    def reconnect(self, reason: str) -> None:
        """Drop the connection and connect again (e.g. another modem now carries the data)."""
        self._lost = self._lost or reason

    def stats(self) -> UplinkStats:
        with self._cond:
            return UplinkStats(
                state=self._state,
                last_error=self._last_error,
                connects=self._connects,
                attempts=self._attempts,
                published=self._published,
                acked=self._acked,
                refused=self._refused,
                in_flight=len(self._in_flight),
                receive_maximum=self._receive_max,
                bytes_sent=self._bytes,
                errors=self._errors,
            )

    # ---- worker -----------------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        with self._cond:
            self._state = state

    def _count_error(self, where: str, err: BaseException) -> None:
        with self._cond:
            self._errors += 1
        self._ratelog.log(
            logging.ERROR, ("error", where), "uplink: unexpected error in %s: %r", where, err
        )

    def _stopping_done(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._stop_deadline

    def _run(self) -> None:
        while True:
            try:
                if self._stop.is_set() and (self._stopping_done() or self._outbox_empty()):
                    break
                client = self._connect()
                if client is None:
                    self._sleep(self._reconnect.next())
                    continue
                self._reconnect.reset()
                self._session(client)
            except Exception as err:  # the worker must outlive any single failure
                self._count_error("worker", err)
                self._sleep(self._reconnect.next())
        try:
            self._drained_at_stop = self._outbox_empty()
        except Exception as err:
            self._count_error("stop", err)
        self._set_state("stopped")
        with self._cond:
            self._cond.notify_all()

    def _sleep(self, seconds: float) -> None:
        until = min(time.monotonic() + seconds, self._stop_deadline)
        while not self._stopping_done():
            left = until - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, _IDLE_WAIT))

    def _outbox_empty(self) -> bool:
        return not self._in_flight and not self._outbox.next_batch(1)

    # ---- connecting ---------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        cfg = self.cfg
        kwargs: dict[str, Any] = {"client_id": cfg.client_id or self.vin}
        if self._v5:
            kwargs["protocol"] = mqtt.MQTTv5
        else:
            kwargs.update(protocol=mqtt.MQTTv311, clean_session=True)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.enable_logger(logging.getLogger(__name__ + ".paho"))
        # Our window is the limit; paho must never hold messages back in its own queue.
        client.max_inflight_messages_set(65535)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        will = {"state": "offline", "boot": self.boot, "reason": "connection lost"}
        client.will_set(self.status_topic, json.dumps(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _connect(self) -> mqtt.Client | None:
        cfg = self.cfg
        with self._cond:
            self._state = "connecting"
            self._attempts += 1
        self._connack = None
        self._lost = None
        client = self._new_client()
        try:
            if self._v5:
                client.connect(cfg.host, cfg.port, cfg.keepalive, clean_start=True)
            else:
                client.connect(cfg.host, cfg.port, cfg.keepalive)
        except (OSError, ValueError) as err:
            self._link_down(describe_error(err, cfg.host, cfg.port))
            return None
        deadline = time.monotonic() + _CONNACK_TIMEOUT
        while self._connack is None and self._lost is None:
            if time.monotonic() >= deadline or self._stopping_done():
                self._lost = "no CONNACK from the broker in time"
                break
            if client.loop(_IDLE_WAIT) != MQTTErrorCode.MQTT_ERR_SUCCESS and self._lost is None:
                self._lost = "connection closed before CONNACK"
        if self._connack is None or self._connack.is_failure:
            reason = (
                f"refused by broker: {self._connack}"
                if self._connack is not None
                else self._lost or "connection lost"
            )
            self._close_socket(client)
            self._link_down(f"{cfg.host}:{cfg.port}: {reason}")
            return None
        return client

    def _close_socket(self, client: mqtt.Client) -> None:
        try:
            client.disconnect()
        except Exception as err:
            self._count_error("disconnect", err)

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        try:
            self._connack = reason_code
            rm = getattr(properties, "ReceiveMaximum", None) if self._v5 else None
            mps = getattr(properties, "MaximumPacketSize", None) if self._v5 else None
            self._max_packet = int(mps) if mps else None
            # MQTT 5 says an absent Receive Maximum means 65535.
            broker_max = int(rm) if rm else (65535 if self._v5 else None)
            self._window = min(self.cfg.max_inflight, broker_max or self.cfg.max_inflight)
            with self._cond:
                self._receive_max = broker_max
        except Exception as err:
            self._count_error("on_connect", err)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        try:
            self._lost = f"connection lost ({reason_code})"
        except Exception as err:
            self._count_error("on_disconnect", err)

    def _link_down(self, reason: str) -> None:
        """Report a failure once per change of state or reason, never per attempt."""
        with self._cond:
            self._state = "disconnected"
            self._last_error = reason
        if self._link_up is False and reason == self._down_reason:
            return
        self._link_up, self._down_reason = False, reason
        log.warning(
            "MQTT link down: %s (retrying every %.1f-%.1f s with jitter)",
            reason,
            self.cfg.reconnect_min,
            self.cfg.reconnect_max,
        )
        self._tell_link(False, reason)

    def _link_is_up(self) -> None:
        with self._cond:
            self._state = "connected"
            self._connects += 1
        was_down = self._link_up is False
        self._link_up, self._down_reason = True, None
        log.info(
            "MQTT connected to %s:%d (MQTT %s, window %d)%s",
            self.cfg.host,
            self.cfg.port,
            self.cfg.protocol,
            self._window,
            " after an outage" if was_down else "",
        )
        self._tell_link(True, "connected")

    def _tell_link(self, up: bool, reason: str) -> None:
        if self._on_link is None:
            return
        try:
            self._on_link(up, reason)
        except Exception as err:
            self._count_error("on_link", err)

    # ---- one connected session -----------------------------------------------------------------

    def _session(self, client: mqtt.Client) -> None:
        self._in_flight.clear()
        self._ctrl_in_flight.clear()
        self._ctrl_queue.clear()
        self._oversize.clear()
        self._prefetch.clear()
        self._paused_until = 0.0
        self._link_is_up()
        with self._cond:
            schemas = list(self._schemas.items())
            self._new_schemas.clear()
        for sid, doc in schemas:
            self._ctrl_queue.append((self._schema_topic_of(sid), doc))
        self._ctrl_queue.append((self.current_schema_topic, self._schemas[self._current_schema]))
        self._ctrl_queue.append((self.status_topic, self._status_doc("online")))
        next_status = time.monotonic() + self.cfg.status_interval
        try:
            while True:
                with self._cond:
                    self._iteration += 1
                    iteration = self._iteration
                self._flush_acks()
                if self._stop.is_set() and (self._stopping_done() or self._outbox_empty()):
                    self._close(client)
                    return
                if self._new_schemas:
                    with self._cond:
                        fresh = [(i, self._schemas[i]) for i in self._new_schemas]
                        self._new_schemas.clear()
                        current = self._current_schema
                    for sid, doc in fresh:
                        self._ctrl_queue.append((self._schema_topic_of(sid), doc))
                        if sid == current:
                            self._ctrl_queue.append((self.current_schema_topic, doc))
                now = time.monotonic()
                if self._status_requested.is_set() or now >= next_status:
                    self._status_requested.clear()
                    next_status = now + self.cfg.status_interval
                    self._ctrl_queue.append((self.status_topic, self._status_doc("online")))
                sent = self._send_ctrl(client)
                pumped, wait = self._pump(client, iteration)
                if self._lost is not None:
                    break
                if sent or pumped:
                    timeout = 0.0
                elif self._in_flight or self._ctrl_in_flight or wait is not None:
                    timeout = _IDLE_WAIT if wait is None else min(wait, _IDLE_WAIT)
                else:
                    timeout = -1.0  # idle: wait on the outbox rather than the socket
                rc = client.loop(max(timeout, 0.0))
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._lost is not None:
                    break
                if timeout < 0 and not self._in_flight:
                    if self._oversize:  # the outbox would report those rows at once: no spin
                        self._stop.wait(_IDLE_WAIT)
                    else:
                        self._outbox.wait_for_data(_IDLE_WAIT)
        except Exception as err:  # e.g. the outbox failing: end this session cleanly, retry
            self._count_error("session", err)
            self._lost = self._lost or f"internal error: {err!r}"
        finally:
            self._flush_acks()
            self._in_flight.clear()
            self._ctrl_in_flight.clear()
        self._close_socket(client)
        self._link_down(f"{self.cfg.host}:{self.cfg.port}: {self._lost or 'connection lost'}")

    def _schema_topic_of(self, schema_id: str) -> str:
        return f"{self.cfg.topic_prefix}/{self.vin}/schema/{schema_id}"

    def _free(self) -> int:
        return self._window - len(self._in_flight) - len(self._ctrl_in_flight)

    def _send_ctrl(self, client: mqtt.Client) -> bool:
        sent = False
        while self._ctrl_queue and self._free() > 0:
            topic, payload = self._ctrl_queue.popleft()
            info = client.publish(topic, payload, qos=1, retain=True)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost = self._lost or f"publish failed ({mqtt.error_string(info.rc)})"
                return sent
            self._ctrl_in_flight.add(info.mid)
            self._count_sent(len(topic.encode()), len(payload))
            sent = True
        return sent

    def _pump(self, client: mqtt.Client, iteration: int) -> tuple[bool, float | None]:
        """Publish outbox rows into the free window. Returns (published any, seconds to wait
        before trying again when held back by a refusal pause or the rate limit)."""
        now = time.monotonic()
        if now < self._paused_until:
            self._prefetch.clear()
            return False, self._paused_until - now
        free = self._free()
        if free <= 0:
            return False, None
        if not self._prefetch or now - self._prefetch_at > _PREFETCH_MAX_AGE:
            self._prefetch.clear()
            exclude = set(self._in_flight.values()) | self._oversize
            batch = self._outbox.next_batch(self._window * _PREFETCH_WINDOWS, exclude=exclude)
            if not batch:
                if not self._in_flight:
                    with self._cond:
                        self._drained_iteration = iteration
                        self._cond.notify_all()
                return False, None
            self._prefetch.extend(batch)
            self._prefetch_at = now
        published = False
        while self._prefetch and self._free() > 0:
            entry = self._prefetch[0]
            is_event = entry.priority == "event"
            if not is_event and self._bucket.available() < 1.0:
                return published, max(self._bucket.time_to_token(), 0.005)
            self._prefetch.popleft()
            payload = entry.payload
            size = _publish_size(self._data_topic_len, len(payload), self._v5)
            if self._max_packet is not None and size > self._max_packet:
                self._skip_oversize(entry.id, size)
                continue
            info = client.publish(self.data_topic, payload, qos=1, retain=False)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost = self._lost or f"publish failed ({mqtt.error_string(info.rc)})"
                return published, None
            self._in_flight[info.mid] = entry.id
            if not is_event:
                self._bucket.take()
            self._count_sent(self._data_topic_len, len(payload), data=True)
            published = True
        return published, None

    def _skip_oversize(self, row_id: int, size: int) -> None:
        # Sending it would make the broker drop the connection, again and again: leave the row
        # in the outbox and skip it for this connection (the limit may differ on the next).
        if len(self._oversize) < _MAX_OVERSIZE_IDS:
            self._oversize.add(row_id)
        with self._cond:
            self._refused += 1
        self._ratelog.warning(
            "oversize",
            "outbox row %d (%d bytes) exceeds the broker's "
            "maximum packet size %s; kept in the outbox",
            row_id,
            size,
            self._max_packet,
        )

    def _count_sent(self, topic_len: int, payload_len: int, data: bool = False) -> None:
        with self._cond:
            self._bytes += _publish_size(topic_len, payload_len, self._v5)
            if data:
                self._published += 1

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason_code: Any, properties: Any
    ) -> None:
        try:
            if mid in self._ctrl_in_flight:
                self._ctrl_in_flight.discard(mid)
                if reason_code.is_failure:
                    self._ratelog.warning(
                        "ctrl-refused", "broker refused a status/schema publish: %s", reason_code
                    )
                return
            row_id = self._in_flight.pop(mid, None)
            if row_id is None:
                return
            if reason_code.is_failure:
                self._refused_row(row_id, reason_code)
            else:
                self._to_ack.append(row_id)
                self._refusal.reset()
        except Exception as err:
            self._count_error("on_publish", err)

    def _refused_row(self, row_id: int, reason_code: Any) -> None:
        with self._cond:
            self._refused += 1
            self._last_error = f"publish refused by broker: {reason_code}"
        now = time.monotonic()
        if now >= self._paused_until:
            # Refusals (e.g. an ACL) usually hit every row: pause all data, never a hot loop.
            self._paused_until = now + self._refusal.next()
        self._ratelog.warning(
            "refused",
            "broker refused data publish of outbox row %d: %s; kept in the outbox, retrying later",
            row_id,
            reason_code,
        )

    def _flush_acks(self) -> None:
        if not self._to_ack:
            return
        ids, self._to_ack = self._to_ack, []
        self._outbox.ack(ids)
        with self._cond:
            self._acked += len(ids)

    # ---- status and clean close ---------------------------------------------------------------

    def _status_doc(self, state: str, reason: str | None = None) -> bytes:
        extra: dict[str, Any] = {}
        try:
            extra = dict(self._status_fn())
        except Exception as err:
            self._count_error("status()", err)
        s = self.stats()
        # The caller's counters come first; the identity and state keys are ours and win.
        doc: dict[str, Any] = {
            "uplink": {
                "connects": s.connects,
                "published": s.published,
                "acked": s.acked,
                "refused": s.refused,
            },
            **extra,
            "state": state,
            "version": __version__,
            "boot": self.boot,
            "vin": self.vin,
            "ts": round(time.time(), 3),
        }
        if reason is not None:
            doc["reason"] = reason
        return json.dumps(doc, default=str, separators=(",", ":")).encode()

    def _close(self, client: mqtt.Client) -> None:
        """Retained offline status (the will is not sent on a clean disconnect), then
        DISCONNECT, each waited for a bounded time."""
        info = client.publish(
            self.status_topic, self._status_doc("offline", "shutdown"), qos=1, retain=True
        )
        deadline = time.monotonic() + _CLOSE_WAIT
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._ctrl_in_flight.add(info.mid)
            while info.mid in self._ctrl_in_flight and time.monotonic() < deadline:
                if client.loop(0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        self._flush_acks()
        client.disconnect()
        deadline = time.monotonic() + _CLOSE_WAIT
        while self._lost is None and time.monotonic() < deadline:
            if client.loop(0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        with self._cond:
            self._state = "disconnected"
        log.info("MQTT disconnected from %s:%d (shutdown)", self.cfg.host, self.cfg.port)
