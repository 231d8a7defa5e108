"""A live bus that opens and then fails at once keeps backing off (it is not reset by the
successful open), through the real Source and python-can's backend registry."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from agent.can_source import Item, Source
from agent.config import BusConfig
from tests.support import flakybus
from tests.support.data import DEMO_DBC
from tests.support.wait import wait_until

REOPEN_MIN, REOPEN_MAX = 0.02, 1.0
OPENS = 14


@pytest.fixture
def flaky() -> Iterator[None]:
    flakybus.register()
    flakybus.reset()
    yield
    flakybus.reset()


def test_a_bus_that_opens_then_fails_backs_off(flaky: None) -> None:
    cfg = BusConfig(
        name="car",
        interface=flakybus.NAME,
        channel="can9",
        dbc=[DEMO_DBC],
        reopen_min=REOPEN_MIN,
        reopen_max=REOPEN_MAX,
    )
    out: queue.Queue[Item] = queue.Queue(maxsize=16)
    stop = threading.Event()
    source = Source(0, cfg, out, stop)
    source.start()
    try:
        assert wait_until(lambda: len(flakybus.opens()) >= OPENS, 60)
    finally:
        stop.set()
        source.join(10)
    opens = flakybus.opens()[:OPENS]
    gaps = [b - a for a, b in zip(opens, opens[1:], strict=False)]
    # Reset on every open, each wait would be at most REOPEN_MIN (0.26 s for 13 gaps in all).
    # Backing off, the last nine waits are each drawn up to REOPEN_MAX (about 4.5 s expected):
    # their sum staying below 1 s has a chance of about 1 in a million.
    assert sum(gaps) > 1.0, gaps
    assert source.status.reopens >= OPENS - 1
    assert source.state() == "down" and "bus-off" in source.status.last_error
