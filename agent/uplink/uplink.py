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

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.config import MqttConfig
from agent.mqttclient import PahoLog, describe_error, tls_context
from agent.ratelimit import RateLimitedLog
from agent.uplink.linkreport import LinkReport
from agent.uplink.pacing import TokenBucket
from agent.uplink.requests import Requests
from agent.uplink.session import MessageHandler, OutboxLike, Outgoing, Session
from agent.uplink.stats import Counters, UplinkStats
from agent.uplink.waits import Waits
from agent.uplink.wakeup import Wakeup
from agent.uplink.wire import Topics, new_client, status_doc

log = logging.getLogger("agent.uplink")

_CONNACK_TIMEOUT = 15.0
_CLOSE_WAIT = 3.0
# A connection that ends by itself is followed by one reconnect delay. The delays start again
# from the shortest only after a connection on which the broker acknowledged stored updates,
# or one that lasted this long: a broker that accepts and drops every connection keeps being
# backed off.
_STABLE_AFTER = 30.0


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
        self.topics = Topics(f"{cfg.topic_prefix}/{vin}")
        tls = cfg.tls_config
        self._tls = tls_context(tls) if tls is not None else None

        self._counters = Counters()
        self._ratelog = RateLimitedLog(log)
        self._paho_log = PahoLog(logging.getLogger("agent.uplink.paho"))
        self._thread: threading.Thread | None = None
        self._status_requested = threading.Event()
        self._drained_at_stop = False
        # Reconnect delays (reset when a connection proved healthy, see _STABLE_AFTER), the
        # pause, the stop; kicked by stop, pause, resume and reconnect requests.
        self._waits = Waits(cfg.reconnect_min, cfg.reconnect_max, self._counters)

        # Shared with other threads: schemas, reconnect requests, the pause, publish().
        self._requests = Requests(schema_id, schema_json)
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
        self._waits.stop(timeout)
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
        self._requests.add_schema(schema_id, schema_json, current=current)

    def reconnect(self, reason: str) -> None:
        """Drop the connection and connect again (e.g. another modem now carries the data).

        A request made while a connection is being set up is kept: that connection may be
        going over the old route, so it is dropped as soon as it is up."""
        self._requests.reconnect(reason)
        self._waits.kick()

    def pause(self, reason: str, timeout: float = 10.0) -> bool:
        """Stop radio traffic: publish the retained status (``offline``, reason ``paused:
        <reason>``) if connected, disconnect cleanly, and attempt no connection until
        ``resume``. Waits until the link is closed: True, or False after ``timeout``. Rows
        committed meanwhile stay in the outbox; a later ``pause`` only changes the reason."""
        self._requests.set_paused(reason)
        self._waits.kick()
        if self._wakeup is not None:
            self._wakeup.set()
        if self._thread is None:
            self._counters.set(paused=reason, state="paused", closed_for=reason)
            return True
        return self._counters.wait_paused(reason, timeout)

    def resume(self) -> None:
        """End a pause: connect at once, without waiting for a reconnect delay."""
        self._requests.set_paused(None)
        self._waits.kick()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, properties: Any = None
    ) -> bool:
        """Queue a QoS 1 message (e.g. a response) ahead of data rows, on the current or the
        next connection. Not durable: at most MAX_PENDING wait; False (and counted) if full."""
        if not self._requests.queue(Outgoing(topic, bytes(payload), retain, properties)):
            return False
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

    def _should_end(self) -> bool:
        waits = self._waits
        return waits.stopping() and (waits.stopping_done() or not self._outbox.next_batch(1))

    def _run(self) -> None:
        cfg = self.cfg
        while True:
            try:
                if self._should_end():
                    break
                if self._requests.paused() is not None:
                    if not self._waits.paused(self._requests.paused, f"{cfg.host}:{cfg.port}"):
                        break
                    continue
                self._waits.clear_kick()
                seen = self._requests.reconnect_count()
                session = self._connect(seen)
                if session is None:
                    if self._requests.paused() is None:
                        self._waits.retry_wait()
                    continue
                if self._serve(session, seen):
                    # Dropped by the broker or the link, or an internal error: a broker that
                    # accepts and drops every connection must not get a reconnect storm.
                    self._waits.retry_wait()
            except Exception as err:  # the worker must outlive any single failure
                self._count_error("worker", err)
                self._waits.retry_wait()
        try:
            self._drained_at_stop = not self._outbox.next_batch(1)
        except Exception as err:
            self._count_error("stop", err)
        self._counters.set(state="stopped")
        self._counters.wake()

    # ---- connecting ---------------------------------------------------------------------------

    def _connect(self, seen: int) -> Session | None:
        cfg, t = self.cfg, self.topics
        self._counters.add(attempts=1)
        self._counters.set(state="connecting")
        client = new_client(cfg, vin=self.vin, boot=self.boot, status_topic=t.status, tls=self._tls)
        session = Session(
            client,
            cfg,
            data_topic=t.data,
            outbox=self._outbox,
            counters=self._counters,
            bucket=self._bucket,
            paho_log=self._paho_log,
            ratelog=self._ratelog,
            count_error=self._count_error,
            stop=self._waits.stop_event,
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
            if self._waits.stopping_done():
                return "stopping"
            if self._requests.paused() is not None:
                return "paused"
            return self._requests.reconnect_requested(seen)

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
        self._link.up(f"MQTT {self.cfg.protocol}, window {session.window.size}")
        t = self.topics
        schemas, current = self._requests.all_schemas()
        for sid, doc in schemas:
            session.ctrl.append(Outgoing(t.schema(sid), doc, retain=True))
        session.ctrl.append(Outgoing(t.current_schema, dict(schemas)[current], True))
        session.ctrl.append(Outgoing(t.status, self._status_doc("online"), True))
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
                    self._waits.reset_backoff()
                if self._should_end():
                    session.close(Outgoing(t.status, self._status_doc("offline", "shutdown"), True))
                    self._counters.set(state="disconnected")
                    log.info(
                        "MQTT disconnected from %s:%d (shutdown)", self.cfg.host, self.cfg.port
                    )
                    return False
                paused = self._requests.paused()
                if paused is not None:
                    self._close_paused(session, paused)
                    return False
                self._queue_shared(session)
                now = time.monotonic()
                if self._status_requested.is_set() or now >= next_status:
                    self._status_requested.clear()
                    next_status = now + self.cfg.status_interval
                    session.ctrl.append(Outgoing(t.status, self._status_doc("online"), True))
                session.lost = session.lost or self._requests.reconnect_requested(seen)
                if not session.step(iteration):
                    break
        except Exception as err:  # e.g. the outbox failing: end this session cleanly, retry
            self._count_error("session", err)
            session.lost = session.lost or f"internal error: {err!r}"
        why = session.reason()
        session.drop()
        if not healthy and session.acked:  # PUBACKs read in the turn the connection ended
            self._waits.reset_backoff()
        self._link.down(f"{self.cfg.host}:{self.cfg.port}: {why}")
        return self._requests.reconnect_requested(seen) is None

    def _close_paused(self, session: Session, reason: str) -> None:
        """The clean pause: the retained status says why, then DISCONNECT (no last will)."""
        self._counters.set(paused=reason, state="paused")
        doc = self._status_doc("offline", f"paused: {reason}")
        session.close(Outgoing(self.topics.status, doc, True))
        log.info("MQTT disconnected from %s:%d (paused: %s)", self.cfg.host, self.cfg.port, reason)
        self._counters.set(closed_for=reason)

    def _queue_shared(self, session: Session) -> None:
        """Hand schemas added and messages published from other threads to the session."""
        fresh = self._requests.take()
        for sid, doc in fresh.schemas:
            session.ctrl.append(Outgoing(self.topics.schema(sid), doc, retain=True))
            if sid == fresh.current:
                session.ctrl.append(Outgoing(self.topics.current_schema, doc, retain=True))
        session.ctrl.extend(fresh.pending)

    # ---- status documents -----------------------------------------------------------------------

    def _status_doc(self, state: str, reason: str | None = None) -> bytes:
        extra: dict[str, Any] = {}
        try:
            extra = dict(self._status_fn())
        except Exception as err:
            self._count_error("status()", err)
        return status_doc(
            self.stats(), extra, state=state, vin=self.vin, boot=self.boot, reason=reason
        )
