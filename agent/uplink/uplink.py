"""The uplink's worker: one thread that connects, serves one session at a time, and reconnects.

The public API (``start``, ``stop``, ``wait_drained``, ``publish_status``, ``add_schema``,
``reconnect``, ``pause``, ``resume``, ``publish``, ``stats``) may be called from any thread;
everything paho runs on the worker thread, callbacks included, so no lock of ours is ever held
across a paho call.

Paused (the vehicle parked, the battery low): the worker publishes the retained status as
``offline`` with the reason ``paused: <why>``, disconnects cleanly (so the broker does not send
the last will) and then makes no connection attempt and runs no timer until ``resume``, which
connects at once (the reconnect delays start over). Waits between attempts end early on
``pause``, ``resume``, ``reconnect`` and ``stop``.

Reconnect delays (``agent.backoff``, from ``reconnect_min`` to ``reconnect_max``): one after every
failed attempt and after every connection that ended by itself (dropped by the broker or the
link, or ended by an internal error such as the outbox failing), none after ``reconnect()``, a
pause or a stop. They grow while connections keep failing and start over from the shortest
after a connection on which the broker acknowledged stored updates, one that lasted 30 s, or a
wake from a pause.

Failures are reported once per change of reason, never per attempt: the first failure and every
new reason are logged (and told to ``on_link``, which the daemon hands to the modem manager as a
data-path failure); repeats are counted and summed up when the link comes back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent import __version__
from agent.backoff import Backoff
from agent.config import MqttConfig
from agent.mqttclient import PahoLog, describe_error, tls_context
from agent.ratelimit import RateLimitedLog
from agent.uplink.linkreport import LinkReport
from agent.uplink.pacing import TokenBucket
from agent.uplink.session import MessageHandler, OutboxLike, Outgoing, Session
from agent.uplink.stats import Counters, UplinkStats
from agent.uplink.wakeup import Wakeup

log = logging.getLogger("agent.uplink")

_CONNACK_TIMEOUT = 15.0
_CLOSE_WAIT = 3.0
# A connection that ends by itself is followed by one reconnect delay. The delays start again
# from the shortest only after a connection on which the broker acknowledged stored updates,
# or one that lasted this long: a broker that accepts and drops every connection keeps being
# backed off.
_STABLE_AFTER = 30.0
MAX_PENDING = 256  # control messages queued by publish() while not connected


class Uplink:
    """Publishes outbox rows on ``<prefix>/<vin>/data``, plus schemas and status.

    Downlink hook: ``subscriptions`` (topic filter, QoS) are subscribed on every connection
    (clean start, so the broker keeps nothing between them) and every message that arrives is
    handed to ``on_message(topic, payload, properties)`` on the worker thread (``properties``:
    paho's MQTT 5 properties or None). The handler must not block; it may call ``publish()``.
    """

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
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: MessageHandler | None = None,
    ) -> None:
        self.cfg = cfg
        self.vin = vin
        self.boot = boot
        self._outbox = outbox
        self._status_fn = status
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        base = f"{cfg.topic_prefix}/{vin}"
        self.data_topic = f"{base}/data"
        self.status_topic = f"{base}/status"
        self.schema_topic = f"{base}/schema/{schema_id}"
        # The schema in force also on a fixed topic, for consumers that want only the latest.
        self.current_schema_topic = f"{base}/schema"
        tls = cfg.tls_config
        self._tls = tls_context(tls) if tls is not None else None

        self._counters = Counters()
        self._ratelog = RateLimitedLog(log)
        self._paho_log = PahoLog(logging.getLogger("agent.uplink.paho"))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stop_deadline = float("inf")
        self._status_requested = threading.Event()
        self._drained_at_stop = False
        # Ends the worker's waits between attempts and while paused: stop, pause, resume,
        # reconnect requests.
        self._kick = threading.Event()

        # Shared with other threads, guarded by _lock: schemas, reconnect requests, publish().
        self._lock = threading.Lock()
        self._schemas: dict[str, bytes] = {schema_id: bytes(schema_json)}
        self._current_schema = schema_id
        self._new_schemas: deque[str] = deque()
        self._reconnects = 0  # reconnect() requests so far
        self._reconnect_reason = ""
        self._pending: deque[Outgoing] = deque()
        self._pending_dropped = 0
        self._paused: str | None = None  # why radio traffic is stopped, until resume()
        # With a downlink the idle wait watches the socket too, woken by publish() and commits.
        self._wakeup: Wakeup | None = None
        if self._subscriptions:
            self._wakeup = Wakeup()
            if hasattr(outbox, "on_commit"):
                outbox.on_commit = self._wakeup.set

        # Worker-thread state that outlives a connection.
        self._link = LinkReport(
            f"{cfg.host}:{cfg.port}",
            (cfg.reconnect_min, cfg.reconnect_max),
            self._counters,
            on_link,
            self._count_error,
        )
        # Reset by _serve when a connection proved healthy (see _STABLE_AFTER), not by time.
        self._backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self._bucket = TokenBucket(cfg.drain_rate, time.monotonic)

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
            self._counters.set(state="stopped")
            return False
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()
        self._kick.set()
        # Beyond the drain time: one connect attempt and the clean close may still be running.
        self._thread.join(timeout + _CONNACK_TIMEOUT + 2 * _CLOSE_WAIT)
        if self._thread.is_alive():
            log.warning("uplink thread did not finish within its stop timeout")
        return self._drained_at_stop

    def wait_drained(self, timeout: float) -> bool:
        """Wait until the outbox has no rows and nothing is in flight (as seen by the worker
        after this call began)."""
        return self._counters.wait_drained(timeout)

    def publish_status(self) -> None:
        self._status_requested.set()

    def add_schema(self, schema_id: str, schema_json: bytes, *, current: bool = False) -> None:
        """Publish another schema (retained, on its own topic), now if connected and after every
        reconnect: rows written under an earlier schema stay decodable after a reload.
        ``current``: it replaces the schema in force (also on ``<prefix>/<vin>/schema``)."""
        with self._lock:
            if current:
                self._current_schema = schema_id
            if schema_id not in self._schemas or current:
                self._schemas[schema_id] = bytes(schema_json)
                self._new_schemas.append(schema_id)

    def reconnect(self, reason: str) -> None:
        """Drop the connection and connect again (e.g. another modem now carries the data).

        A request made while a connection is being set up is kept: that connection may be
        going over the old route, so it is dropped as soon as it is up."""
        with self._lock:
            self._reconnects += 1
            self._reconnect_reason = reason
        self._kick.set()

    def pause(self, reason: str, timeout: float = 10.0) -> bool:
        """Stop radio traffic: publish the retained status (``offline``, reason ``paused:
        <reason>``) if connected, disconnect cleanly, and attempt no connection until
        ``resume``. Waits until the link is closed: True, or False after ``timeout``. Rows
        committed meanwhile stay in the outbox; a later ``pause`` only changes the reason."""
        with self._lock:
            self._paused = reason
        self._kick.set()
        if self._wakeup is not None:
            self._wakeup.set()
        if self._thread is None:
            self._counters.set(paused=reason, state="paused", closed_for=reason)
            return True
        return self._counters.wait_paused(reason, timeout)

    def resume(self) -> None:
        """End a pause: connect at once, without waiting for a reconnect delay."""
        with self._lock:
            self._paused = None
        self._kick.set()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, properties: Any = None
    ) -> bool:
        """Queue a QoS 1 message (e.g. a response) ahead of data rows, on the current or the
        next connection. Not durable: at most MAX_PENDING wait; False (and counted) if full."""
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._pending_dropped += 1
                return False
            self._pending.append(Outgoing(topic, bytes(payload), retain, properties))
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def stats(self) -> UplinkStats:
        return self._counters.snapshot()

    # ---- worker -----------------------------------------------------------------------------

    def _count_error(self, where: str, err: BaseException) -> None:
        self._counters.add(errors=1)
        self._ratelog.log(
            logging.ERROR, ("error", where), "uplink: unexpected error in %s: %r", where, err
        )

    def _stopping_done(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._stop_deadline

    def _should_end(self) -> bool:
        return self._stop.is_set() and (self._stopping_done() or not self._outbox.next_batch(1))

    def _run(self) -> None:
        while True:
            try:
                if self._should_end():
                    break
                if self._pause_reason() is not None:
                    if not self._wait_paused():
                        break
                    continue
                # Any kick so far is answered by this attempt.
                self._kick.clear()
                seen = self._reconnect_count()
                session = self._connect(seen)
                if session is None:
                    if self._pause_reason() is None:
                        self._retry_wait()
                    continue
                if self._serve(session, seen):
                    # Dropped by the broker or the link, or an internal error: a broker that
                    # accepts and drops every connection must not get a reconnect storm.
                    self._retry_wait()
            except Exception as err:  # the worker must outlive any single failure
                self._count_error("worker", err)
                self._retry_wait()
        try:
            self._drained_at_stop = not self._outbox.next_batch(1)
        except Exception as err:
            self._count_error("stop", err)
        self._counters.set(state="stopped")
        self._counters.wake()

    def _retry_wait(self) -> None:
        """One backoff delay before the next attempt, shown in the stats while it lasts."""
        delay = self._backoff.next_delay()
        self._counters.set(retries=self._backoff.attempts, retry_delay=round(delay, 3))
        self._sleep(delay)
        self._counters.set(retry_delay=None)

    def _reset_backoff(self) -> None:
        self._backoff.reset()
        self._counters.set(retries=0)

    def _sleep(self, seconds: float) -> None:
        """Wait before the next attempt; a kick (stop, pause, resume, reconnect) ends it."""
        until = min(time.monotonic() + seconds, self._stop_deadline)
        while not self._stopping_done():
            left = until - time.monotonic()
            if left <= 0 or self._kick.wait(left):
                return

    def _pause_reason(self) -> str | None:
        with self._lock:
            return self._paused

    def _wait_paused(self) -> bool:
        """Disconnected and paused: block (no timer) until resume() or stop(). False on stop."""
        reason = self._pause_reason()
        log.info("MQTT paused (%s): no connection until resumed", reason)
        while reason is not None:
            self._counters.set(paused=reason, state="paused", closed_for=reason)
            if self._stop.is_set():
                return False
            self._kick.wait()
            self._kick.clear()
            reason = self._pause_reason()
        self._counters.set(paused=None, state="disconnected", closed_for=None)
        # The radio was off, not the broker failing: the first attempt goes at once, and the
        # delays after it start from the shortest.
        self._reset_backoff()
        log.info("MQTT resumed: connecting to %s:%d", self.cfg.host, self.cfg.port)
        return True

    def _reconnect_count(self) -> int:
        with self._lock:
            return self._reconnects

    def _reconnect_requested(self, seen: int) -> str | None:
        """The reason of a reconnect() made since ``seen`` requests, if any."""
        with self._lock:
            return self._reconnect_reason if self._reconnects > seen else None

    # ---- connecting ---------------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        cfg = self.cfg
        kwargs: dict[str, Any] = {"client_id": cfg.client_id or self.vin}
        if cfg.protocol == "5":
            kwargs["protocol"] = mqtt.MQTTv5
        else:
            kwargs.update(protocol=mqtt.MQTTv311, clean_session=True)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        # Our window is the limit; paho must never hold messages back in its own queue.
        client.max_inflight_messages_set(65535)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        will = {"state": "offline", "boot": self.boot, "reason": "connection lost"}
        client.will_set(self.status_topic, json.dumps(will), qos=1, retain=True)
        return client

    def _connect(self, seen: int) -> Session | None:
        cfg = self.cfg
        self._counters.add(attempts=1)
        self._counters.set(state="connecting")
        client = self._new_client()
        session = Session(
            client,
            cfg,
            data_topic=self.data_topic,
            outbox=self._outbox,
            counters=self._counters,
            bucket=self._bucket,
            paho_log=self._paho_log,
            ratelog=self._ratelog,
            count_error=self._count_error,
            stop=self._stop,
            subscriptions=self._subscriptions,
            on_message=self._on_message,
            wakeup=self._wakeup,
        )
        self._paho_log.take()  # what an earlier client said is not this attempt's reason
        try:
            if cfg.protocol == "5":
                client.connect(cfg.host, cfg.port, cfg.keepalive, clean_start=True)
            else:
                client.connect(cfg.host, cfg.port, cfg.keepalive)
        except (OSError, ValueError) as err:
            session.drop()
            self._link.down(describe_error(err, cfg.host, cfg.port))
            return None

        def abort() -> str | None:
            if self._stopping_done():
                return "stopping"
            if self._pause_reason() is not None:
                return "paused"
            return self._reconnect_requested(seen)

        why = session.wait_connack(time.monotonic() + _CONNACK_TIMEOUT, abort)
        if why is not None and self._tls is None and "before CONNACK" in why:
            why += "; a TLS listener ends plain MQTT like this: is [mqtt] tls needed?"
        if why is not None:
            session.drop()
            if why not in ("stopping", "paused"):
                self._link.down(f"{cfg.host}:{cfg.port}: {why}")
            return None
        return session

    # ---- one connected session ----------------------------------------------------------------

    def _serve(self, session: Session, seen: int) -> bool:
        """Publish until the connection ends. True if it ended by itself (the broker or the
        link dropped it, an internal error), False for a stop, a pause or reconnect()."""
        self._link.up(f"MQTT {self.cfg.protocol}, window {session.window}")
        with self._lock:
            schemas = list(self._schemas.items())
            current = self._current_schema
            self._new_schemas.clear()
        for sid, doc in schemas:
            session.ctrl.append(Outgoing(self._schema_topic_of(sid), doc, retain=True))
        session.ctrl.append(Outgoing(self.current_schema_topic, dict(schemas)[current], True))
        session.ctrl.append(Outgoing(self.status_topic, self._status_doc("online"), True))
        began = time.monotonic()
        next_status = began + self.cfg.status_interval
        healthy = False
        try:
            while True:
                iteration = self._counters.next_iteration()
                session.flush_acks()
                if not healthy and (session.acked or time.monotonic() - began >= _STABLE_AFTER):
                    # The broker took stored updates, or the link held: the next delay after
                    # this connection ends is again the shortest.
                    healthy = True
                    self._reset_backoff()
                if self._should_end():
                    session.close(
                        Outgoing(self.status_topic, self._status_doc("offline", "shutdown"), True)
                    )
                    self._counters.set(state="disconnected")
                    log.info(
                        "MQTT disconnected from %s:%d (shutdown)", self.cfg.host, self.cfg.port
                    )
                    return False
                paused = self._pause_reason()
                if paused is not None:
                    self._close_paused(session, paused)
                    return False
                self._queue_shared(session)
                now = time.monotonic()
                if self._status_requested.is_set() or now >= next_status:
                    self._status_requested.clear()
                    next_status = now + self.cfg.status_interval
                    session.ctrl.append(
                        Outgoing(self.status_topic, self._status_doc("online"), True)
                    )
                session.lost = session.lost or self._reconnect_requested(seen)
                if not session.step(iteration):
                    break
        except Exception as err:  # e.g. the outbox failing: end this session cleanly, retry
            self._count_error("session", err)
            session.lost = session.lost or f"internal error: {err!r}"
        why = session.reason()
        session.drop()
        if not healthy and session.acked:  # PUBACKs read in the turn the connection ended
            self._reset_backoff()
        self._link.down(f"{self.cfg.host}:{self.cfg.port}: {why}")
        return self._reconnect_requested(seen) is None

    def _close_paused(self, session: Session, reason: str) -> None:
        """The clean pause: the retained status says why, then DISCONNECT (no last will)."""
        self._counters.set(paused=reason, state="paused")
        doc = self._status_doc("offline", f"paused: {reason}")
        session.close(Outgoing(self.status_topic, doc, True))
        log.info("MQTT disconnected from %s:%d (paused: %s)", self.cfg.host, self.cfg.port, reason)
        self._counters.set(closed_for=reason)

    def _queue_shared(self, session: Session) -> None:
        """Hand schemas added and messages published from other threads to the session."""
        with self._lock:
            fresh = [(i, self._schemas[i]) for i in self._new_schemas]
            self._new_schemas.clear()
            current = self._current_schema
            pending = list(self._pending)
            self._pending.clear()
        for sid, doc in fresh:
            session.ctrl.append(Outgoing(self._schema_topic_of(sid), doc, retain=True))
            if sid == current:
                session.ctrl.append(Outgoing(self.current_schema_topic, doc, retain=True))
        session.ctrl.extend(pending)

    def _schema_topic_of(self, schema_id: str) -> str:
        return f"{self.cfg.topic_prefix}/{self.vin}/schema/{schema_id}"

    # ---- status documents -----------------------------------------------------------------------

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
                "attempts": s.attempts,
                "retries": s.retries,
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
