"""One MQTT connection of the uplink and everything that lives and dies with it.

A ``Session`` is made for every connection attempt, around a fresh paho client: the CONNACK,
the broker's limits (Receive Maximum, Maximum Packet Size), the in-flight window with its PUBACK
watchdog (agent.uplink.window), the queue of control messages (schemas, status, responses), the
read-ahead of outbox rows with the rows skipped as oversize (agent.uplink.readahead) and the
pause after refused publishes (agent.uplink.pacing). When the connection ends the object is
dropped, so no per-connection state can leak into the next one; paho's own queue of
unacknowledged messages dies with its client, and only the outbox decides what is re-sent
(duplicates possible, losses not). paho's network loop runs through agent.uplink.netloop.

Every method runs on the uplink's worker thread, paho's callbacks included. It leaves to
``agent.uplink.uplink.Uplink`` connecting, reconnecting, link reports and the public API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent.config import MqttConfig
from agent.mqttclient import PahoLog
from agent.ratelimit import RateLimitedLog
from agent.uplink import netloop
from agent.uplink.pacing import RefusalPause, TokenBucket, publish_size
from agent.uplink.readahead import ReadAhead
from agent.uplink.stats import Counters
from agent.uplink.wakeup import Wakeup
from agent.uplink.window import Window

log = logging.getLogger("agent.uplink")

# Rows are read from the outbox this many windows at a time (agent.uplink.readahead) and
# published from memory as PUBACKs free the window.
_PREFETCH_WINDOWS = 4
IDLE_WAIT = 0.5
_CLOSE_WAIT = 3.0

MessageHandler = Callable[[str, bytes, Any], None]


class OutboxLike(Protocol):
    def next_batch(
        self, limit: int, exclude: Collection[int] = (), after: Any = None
    ) -> list[Any]: ...
    def generation(self) -> int: ...
    def ack(self, ids: Iterable[int]) -> None: ...
    def wait_for_data(self, timeout: float) -> bool: ...


@dataclass(frozen=True)
class Outgoing:
    """A control message: QoS 1, published ahead of data rows, not kept across connections."""

    topic: str
    payload: bytes
    retain: bool = False
    properties: Any = None  # paho Properties(PacketTypes.PUBLISH), MQTT 5 only


class Session:
    def __init__(
        self,
        client: mqtt.Client,
        cfg: MqttConfig,
        *,
        data_topic: str,
        outbox: OutboxLike,
        counters: Counters,
        bucket: TokenBucket,
        paho_log: PahoLog,
        ratelog: RateLimitedLog,
        count_error: Callable[[str, BaseException], None],
        stop: threading.Event,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: MessageHandler | None = None,
        wakeup: Wakeup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.v5 = cfg.protocol == "5"
        self._data_topic = data_topic
        self._data_topic_len = len(data_topic.encode())
        self._outbox = outbox
        self._counters = counters
        self._bucket = bucket
        self._paho_log = paho_log
        self._ratelog = ratelog
        self._count_error = count_error
        self._stop = stop
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._wakeup = wakeup
        self._clock = clock

        self.connack: Any = None
        self.lost: str | None = None  # why this connection is over, once it is
        self.window = Window(cfg.max_inflight, cfg.ack_timeout, counters, clock)
        self.max_packet: int | None = None
        self.ctrl: deque[Outgoing] = deque()
        self._to_ack: list[int] = []
        self.acked = 0  # outbox rows the broker acknowledged on this connection
        self._ahead = ReadAhead(outbox)
        self._refusal = RefusalPause(cfg.reconnect_min, cfg.reconnect_max)

        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message_cb
        client.enable_logger(paho_log)

    # ---- connecting --------------------------------------------------------------------------

    def wait_connack(self, deadline: float, abort: Callable[[], str | None]) -> str | None:
        """Run the network loop until the broker answers. None when accepted, else why not."""
        while self.connack is None and self.lost is None:
            why = abort()
            if why is not None:
                self.lost = why
            elif self._clock() >= deadline:
                self.lost = "no CONNACK from the broker in time"
            elif netloop.turn(self.client, IDLE_WAIT) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.lost = self.lost or "connection closed before CONNACK"
        if self.connack is not None and self.connack.is_failure:
            return f"refused by broker: {self.connack}"
        if self.connack is None:
            return self.reason()
        if self._subscriptions:
            self.client.subscribe(self._subscriptions)
        return None

    def reason(self) -> str:
        """Why the connection ended, naming what paho saw (a reset, a timeout) if anything."""
        why = self.lost or "connection lost"
        detail = self._paho_log.take()
        return f"{why} ({detail})" if detail else why

    # ---- one turn of the worker loop ---------------------------------------------------------

    def step(self, iteration: int) -> bool:
        """Publish what the window allows, run paho's network loop once, and wait a little when
        idle. False once the connection is over (``lost`` says why)."""
        sent = self._send_ctrl()
        pumped, wait = self._pump(iteration)
        dead = self.window.dead()
        if dead is not None and self.lost is None:
            self.lost = dead
            self._counters.add(dead_links=1)
        if self.lost is not None:
            return False
        if sent or pumped:
            timeout = 0.0
        elif self.window.busy() or wait is not None:
            timeout = IDLE_WAIT if wait is None else min(wait, IDLE_WAIT)
        else:
            timeout = -1.0  # idle: wait on the outbox rather than the socket
        rc = netloop.turn(self.client, max(timeout, 0.0))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.lost = self.lost or f"connection lost ({mqtt.error_string(rc)})"
        self.window.report()
        if self.lost is not None:
            return False
        if timeout < 0 and not self.window.rows:
            if self._ahead.skipped:  # the outbox would report those rows at once: no spin
                self._stop.wait(IDLE_WAIT)
            elif self._wakeup is not None:
                # A downlink: a command on the socket, its answer or a new row ends the wait.
                self._wakeup.wait(self.client.socket(), IDLE_WAIT)
            else:
                self._outbox.wait_for_data(IDLE_WAIT)
        return True

    def _send_ctrl(self) -> bool:
        sent = False
        while self.ctrl and self.window.free() > 0:
            msg = self.ctrl.popleft()
            props = msg.properties if self.v5 else None
            info = self.client.publish(
                msg.topic, msg.payload, qos=1, retain=msg.retain, properties=props
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.lost = self.lost or f"publish failed ({mqtt.error_string(info.rc)})"
                return sent
            self.window.ctrl.add(info.mid)
            self._count_sent(len(msg.topic.encode()), len(msg.payload))
            sent = True
        return sent

    def _pump(self, iteration: int) -> tuple[bool, float | None]:
        """Publish outbox rows into the free window. Returns (published any, seconds to wait
        before trying again when held back by a refusal pause or the rate limit)."""
        now = self._clock()
        ahead = self._ahead
        held = self._refusal.left(now)
        if held > 0:
            ahead.drop()
            return False, held
        if self.window.free() <= 0:
            return False, None
        if not ahead.fresh(now):
            limit = self.window.size * _PREFETCH_WINDOWS
            if not ahead.read(limit, set(self.window.rows.values()), now):
                if not (self.window.busy() or self.ctrl):
                    self._counters.saw_drained(iteration)
                return False, None
        published = 0
        sent_bytes = 0
        try:
            while ahead and self.window.free() > 0:
                entry = ahead.first()
                is_event = entry.priority == "event"
                if not is_event and self._bucket.available() < 1.0:
                    return bool(published), max(self._bucket.time_to_token(), 0.005)
                ahead.take()
                size = publish_size(self._data_topic_len, len(entry.payload), self.v5)
                if self.max_packet is not None and size > self.max_packet:
                    self._skip_oversize(entry.id, size)
                    continue
                info = self.client.publish(self._data_topic, entry.payload, qos=1, retain=False)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self.lost = self.lost or f"publish failed ({mqtt.error_string(info.rc)})"
                    return bool(published), None
                self.window.rows[info.mid] = entry.id
                if not is_event:
                    self._bucket.take()
                published += 1
                sent_bytes += size
        finally:
            # Counted once per call, not per PUBLISH: the counters sit behind a lock.
            if published:
                self._counters.add(bytes_sent=sent_bytes, published=published)
                self.window.report()
        return bool(published), None

    def _skip_oversize(self, row_id: int, size: int) -> None:
        # Sending it would make the broker drop the connection, again and again: leave the row
        # in the outbox and skip it for this connection (the limit may differ on the next).
        self._ahead.skip(row_id)
        self._counters.add(refused=1)
        self._ratelog.warning(
            "oversize",
            "outbox row %d (%d bytes) exceeds the broker's "
            "maximum packet size %s; kept in the outbox",
            row_id,
            size,
            self.max_packet,
        )

    def _count_sent(self, topic_len: int, payload_len: int, data: bool = False) -> None:
        self._counters.add(
            bytes_sent=publish_size(topic_len, payload_len, self.v5), published=int(data)
        )

    def flush_acks(self) -> None:
        if not self._to_ack:
            return
        ids, self._to_ack = self._to_ack, []
        self.acked += len(ids)
        self._outbox.ack(ids)
        self._counters.add(acked=len(ids))

    # ---- paho callbacks (worker thread, inside client.loop) ----------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        try:
            self.connack = reason_code
            rm = getattr(properties, "ReceiveMaximum", None) if self.v5 else None
            mps = getattr(properties, "MaximumPacketSize", None) if self.v5 else None
            self.max_packet = int(mps) if mps else None
            # MQTT 5 says an absent Receive Maximum means 65535.
            broker_max = int(rm) if rm else (65535 if self.v5 else None)
            self.window.size = min(self.cfg.max_inflight, broker_max or self.cfg.max_inflight)
            self._counters.set(receive_maximum=broker_max)
        except Exception as err:
            self._count_error("on_connect", err)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self.connack is None:
            self.lost = self.lost or "connection closed before CONNACK"
        else:
            self.lost = self.lost or f"connection lost ({reason_code})"

    def _on_publish(
        self, client: mqtt.Client, userdata: object, mid: int, reason_code: Any, properties: Any
    ) -> None:
        try:
            window = self.window
            window.progress()
            if mid in window.ctrl:
                window.ctrl.discard(mid)
                if reason_code.is_failure:
                    self._ratelog.warning(
                        "ctrl-refused", "broker refused a control publish: %s", reason_code
                    )
                return
            row_id = window.rows.pop(mid, None)
            if row_id is None:
                return
            if reason_code.is_failure:
                self._refused_row(row_id, reason_code)
            else:
                self._to_ack.append(row_id)
                self._refusal.accepted()
        except Exception as err:
            self._count_error("on_publish", err)

    def _refused_row(self, row_id: int, reason_code: Any) -> None:
        self._counters.add(refused=1)
        self._counters.set(last_error=f"publish refused by broker: {reason_code}")
        self._ahead.start_over()  # the row is to be sent again
        self._refusal.refused(self._clock())
        self._ratelog.warning(
            "refused",
            "broker refused data publish of outbox row %d: %s; kept in the outbox, retrying later",
            row_id,
            reason_code,
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, codes: Any, properties: Any
    ) -> None:
        refused = [str(c) for c in codes if getattr(c, "is_failure", False)]
        if refused:
            self._ratelog.warning("suback", "broker refused a subscription: %s", ", ".join(refused))

    def _on_message_cb(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(msg.topic, bytes(msg.payload), getattr(msg, "properties", None))
        except Exception as err:  # a handler's failure must not end the connection
            self._count_error("on_message", err)

    # ---- ending --------------------------------------------------------------------------------

    def close(self, offline: Outgoing) -> None:
        """Clean shutdown: the retained offline status (the will is not sent on a clean
        disconnect), then DISCONNECT, each waited for a bounded time."""
        info = self.client.publish(offline.topic, offline.payload, qos=1, retain=offline.retain)
        deadline = self._clock() + _CLOSE_WAIT
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.window.ctrl.add(info.mid)
            while info.mid in self.window.ctrl and self._clock() < deadline:
                if netloop.turn(self.client, 0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        self.flush_acks()
        self.client.disconnect()
        deadline = self._clock() + _CLOSE_WAIT
        while self.lost is None and self._clock() < deadline:
            if netloop.turn(self.client, 0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self.drop()

    def drop(self) -> None:
        """Forget the connection: acknowledged rows are acked, the socket is closed now (a dead
        link would otherwise hold it until the garbage collector finds the client)."""
        try:
            self.flush_acks()
        finally:
            self.window.clear()
            try:
                self.client.disconnect()
            except Exception as err:
                self._count_error("disconnect", err)
            sock = self.client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError as err:
                    log.debug("closing the MQTT socket: %s", err)
