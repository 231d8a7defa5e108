"""SIGHUP-style reload: new selection and consent without a restart; revoked categories are
purged from the outbox before they are sent."""

from __future__ import annotations

import uuid
from pathlib import Path

import can

from agent.daemon import Agent
from agent.spime import decode_samples, peek_schema_id
from tests.support.agentrun import Running, write_config
from tests.support.broker import free_port
from tests.support.data import HEALTH_POS_DBC
from tests.support.wait import wait_for

DBC = HEALTH_POS_DBC

CONSENT = """
[consent]
granted = [{granted}]
rules = [
  {{ match = "Pos.*", category = "location" }},
  {{ match = "Health.*", category = "vehicle_health" }},
]
"""


def _config(tmp_path: Path, channel: str, port: int, granted: str, bus_extra: dict | None = None):
    (tmp_path / "car.dbc").write_text(DBC)
    return write_config(
        tmp_path / "agent.toml",
        [
            {
                "name": "car",
                "interface": "virtual",
                "channel": channel,
                "dbc": ["car.dbc"],
                **(bus_extra or {}),
            }
        ],
        extra=(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min = 0.2\nreconnect_max = 0.5\n'
            '[outbox]\npath = "outbox.db"\ncommit_interval = 0.05\n'
            "[updates]\nmax_age = 0.05\n" + CONSENT.format(granted=granted)
        ),
    )


def _stored(agent: Agent) -> list[str]:
    """Signal names of every sample waiting in the outbox."""
    names = []
    for row in agent.outbox.iter_rows():
        schema = agent.schemas.load(peek_schema_id(row.payload))
        _, samples = decode_samples(row.payload, schema)
        names += [schema.by_id[sid].name for _, sid, _ in samples]
    return names


def test_revoking_location_purges_it_from_the_outbox(tmp_path: Path) -> None:
    channel = f"reload-{uuid.uuid4().hex[:8]}"
    port = free_port()  # nothing listens there: updates stay in the outbox
    path = _config(tmp_path, channel, port, '"vehicle_health", "location"')
    with Running(path, dry_run=False) as run:
        agent = run.agent
        with can.Bus(interface="virtual", channel=channel, ignore_config=True) as car:
            wait_for(
                lambda: agent.outbox is not None and agent.pipeline.source_states()["car"] == "up"
            )
            for i in range(20):
                car.send(
                    can.Message(arbitration_id=0x100, data=bytes([60 + i]), is_extended_id=False)
                )
                car.send(
                    can.Message(
                        arbitration_id=0x101,
                        data=(525200000 + i * 1000).to_bytes(4, "little", signed=True),
                        is_extended_id=False,
                    )
                )
            wait_for(lambda: _stored(agent).count("Pos.Lat") == 20, what="20 positions stored")
            old_schema = agent.catalog.schema.id
            ids = [row.id for row in agent.outbox.iter_rows()]

            # A bus change cannot be reloaded: refused, the running config stays.
            _config(tmp_path, channel, port, '"vehicle_health"', {"silent_after": 9})
            assert agent.reload() is False
            assert agent.catalog.schema.id == old_schema

            _config(tmp_path, channel, port, '"vehicle_health"')
            assert agent.reload() is True
            names = _stored(agent)
            assert "Pos.Lat" not in names and names.count("Health.Coolant") == 20
            # Rewritten in place: no new ids, so the updates keep their place in the queue (an
            # update that held only positions is deleted instead).
            kept = {row.id for row in agent.outbox.iter_rows()}
            assert kept and kept <= set(ids)
            assert agent.catalog.schema.id != old_schema

            # After the reload, new positions are not even decoded.
            car.send(can.Message(arbitration_id=0x101, data=bytes(4), is_extended_id=False))
            car.send(can.Message(arbitration_id=0x100, data=bytes([99]), is_extended_id=False))
            wait_for(lambda: _stored(agent).count("Health.Coolant") == 21, what="new sample")
            assert "Pos.Lat" not in _stored(agent)
