"""Reconnect delays after connections that end by themselves, against a real mosquitto behind a
loopback proxy that forwards the broker's CONNACK and then closes the connection (a broker that
accepts and drops every connection)."""
# ruff: noqa: F811  (the mosquitto fixture is imported, then named as a test argument)

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

from agent.outbox import Outbox
from tests.support.broker import Mosquitto, Subscriber, mosquitto  # noqa: F401
from tests.support.proxy import TcpProxy
from tests.support.uplinkrun import (
    DATA,
    make_uplink,
    mqtt_cfg,
    outbox,  # noqa: F401
    put_rows,
)
from tests.support.wait import wait_until

WAIT = 30.0
LOW, HIGH = 0.05, 0.8


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_a_broker_dropping_every_connection_is_backed_off(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    links: list[tuple[bool, str]] = []
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.drop_after_connack = True
        up = make_uplink(
            mqtt_cfg(proxy, reconnect_min=LOW, reconnect_max=HIGH), outbox, links=links
        )
        put_rows(outbox, 0, 5)
        up.start()
        try:
            retries: list[int] = []
            delays: list[float] = []

            def sixteen_connects() -> bool:
                s = up.stats()
                retries.append(s.retries)
                if s.retry_delay is not None:
                    delays.append(s.retry_delay)
                return s.connects >= 16

            assert wait_until(sixteen_connects, WAIT)
            times = proxy.accept_times[:16]
        finally:
            up.stop(0)
    g = gaps(times)
    # Every connection the broker accepted (CONNACK) was followed by a delay of at least
    # reconnect_min: without it this loop made thousands of connections a second.
    assert min(g) >= LOW, g
    # The delays grew: after the fourth the draws are from [LOW, HIGH]; eight of them averaging
    # under 3 x LOW has a probability of about 4e-5.
    assert sum(g[6:14]) / 8 > 3 * LOW, g
    # The stats showed it: retries counted up without starting over, delays within the range.
    assert max(retries) >= 14 and retries == sorted(retries), retries
    assert delays and all(LOW <= d <= HIGH for d in delays), delays
    assert up.stats().state == "stopped"


def test_after_the_broker_recovers_the_backlog_drains_and_the_delays_start_over(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    links: list[tuple[bool, str]] = []
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.drop_after_connack = True
        up = make_uplink(
            mqtt_cfg(proxy, reconnect_min=LOW, reconnect_max=HIGH), outbox, links=links
        )
        rows = put_rows(outbox, 0, 200)
        with Subscriber(mosquitto, DATA) as sub:
            up.start()
            try:
                assert wait_until(lambda: up.stats().retries >= 5, WAIT)
                assert up.stats().acked == 0
                proxy.drop_after_connack = False
                assert sub.wait_for(lambda m: {x.payload for x in m} >= set(rows), WAIT)
                assert up.wait_drained(WAIT)
                assert wait_until(lambda: up.stats().retries == 0, WAIT)
                s = up.stats()
                assert s.state == "connected" and s.acked == len(rows)
                assert s.retry_delay is None
            finally:
                up.stop(0)
    assert outbox.next_batch(1) == []


def test_reconnect_pause_and_stop_end_the_delay_at_once(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    links: list[tuple[bool, str]] = []
    with TcpProxy(mosquitto.host, mosquitto.port) as proxy:
        proxy.drop_after_connack = True
        # A delay of at least 30 s after each drop: anything sooner was not waited for.
        up = make_uplink(mqtt_cfg(proxy, reconnect_min=30, reconnect_max=60), outbox, links=links)
        up.start()
        try:
            assert wait_until(lambda: up.stats().retry_delay is not None, WAIT)
            assert proxy.accepted == 1
            up.reconnect("modem switched to b")
            assert wait_until(lambda: proxy.accepted == 2, WAIT)
            assert wait_until(lambda: up.stats().retries == 2, WAIT)
            assert up.pause("parked")
            assert up.stats().state == "paused"
            up.resume()  # the wake connects at once, and the delays start over
            assert wait_until(lambda: proxy.accepted == 3, WAIT)
            assert wait_until(lambda: up.stats().retries == 1, WAIT)
            began = time.monotonic()
        finally:
            up.stop(0)
        assert up.stats().state == "stopped"
        assert time.monotonic() - began < 30
        assert proxy.accepted == 3


class FailingReads:
    """The real outbox, whose reads fail once ``failing`` is set (a disk error, a corrupt page)."""

    def __init__(self, box: Outbox) -> None:
        self._box = box
        self.failing = False

    def next_batch(self, limit: int, exclude: Collection[int] = (), after: Any = None) -> list[Any]:
        if self.failing:
            raise OSError("disk I/O error")
        return self._box.next_batch(limit, exclude=exclude, after=after)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._box, name)


def test_a_session_ended_by_an_internal_error_is_followed_by_a_delay(
    mosquitto: Mosquitto, outbox: Outbox
) -> None:
    links: list[tuple[bool, str]] = []
    box = FailingReads(outbox)
    up = make_uplink(mqtt_cfg(mosquitto, reconnect_min=30, reconnect_max=60), box, links=links)  # type: ignore[arg-type]
    up.start()
    try:
        assert wait_until(lambda: up.stats().state == "connected", WAIT)
        box.failing = True
        put_rows(outbox, 0, 1)
        assert wait_until(lambda: up.stats().retry_delay is not None, WAIT)
        s = up.stats()
        assert s.connects == 1 and s.retries == 1 and s.errors >= 1
        assert "internal error" in (s.last_error or "")
    finally:
        up.stop(0)
    assert up.stats().state == "stopped"
