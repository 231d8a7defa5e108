"""The real ``Uplink`` for the uplink tests: a SQLite outbox in the test's folder (the ``outbox``
fixture), rows put into it, an uplink with short reconnect delays and no drain rate that can
record its link changes, and the rows a subscriber saw, first copies in order.

Nothing here mocks MQTT or SQLite: the uplink talks to a real mosquitto (tests/support/broker),
directly or through a loopback proxy (tests/support/proxy); the outbox is a real file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from agent.config import MqttConfig, OutboxConfig
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.support.broker import Received
from tests.support.e2e import PREFIX

VIN = "WDB12345678901234"
DATA = f"{PREFIX}/{VIN}/data"
STATUS = f"{PREFIX}/{VIN}/status"
SCHEMA_ID = "0123456789abcdef"
SCHEMA_JSON = b'{"format":1,"id":"0123456789abcdef","signals":[]}'


class Endpoint(Protocol):
    """Where the uplink connects: a broker or a proxy in front of one."""

    host: str
    port: int


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(OutboxConfig(path=tmp_path / "outbox.db", commit_interval=0.05))
    box.open()
    try:
        yield box
    finally:
        box.close()


def mqtt_cfg(to: Endpoint, **kw: object) -> MqttConfig:
    kw.setdefault("reconnect_min", 0.1)
    kw.setdefault("reconnect_max", 0.5)
    kw.setdefault("drain_rate", 0)  # only the tests of the rate pay for it
    return MqttConfig(host=to.host, port=to.port, **kw)  # type: ignore[arg-type]


def make_uplink(
    cfg: MqttConfig, box: Outbox, *, links: list[tuple[bool, str]] | None = None, **kw: Any
) -> Uplink:
    """An uplink of ``box``; with ``links``, each link change is appended to it as (up, why)."""
    if links is not None:
        kw["on_link"] = lambda up, why: links.append((up, why))
    return Uplink(
        cfg,
        vin=VIN,
        boot="b00710ad",
        outbox=box,
        schema_id=SCHEMA_ID,
        schema_json=SCHEMA_JSON,
        **kw,
    )


def put_rows(box: Outbox, start: int, count: int, priority: str = "telemetry") -> list[bytes]:
    """Rows ``row-<start>`` to ``row-<start + count - 1>`` put into ``box`` and flushed."""
    rows = [b"row-%06d" % i for i in range(start, start + count)]
    for r in rows:
        box.put(r, priority)
    box.flush()
    return rows


def first_seen(msgs: list[Received]) -> list[bytes]:
    """The payloads received, each once, in the order of its first copy."""
    return list(dict.fromkeys(m.payload for m in msgs))
