"""Updates stored under an earlier config's schema stay decodable: the real CLI publishes the
schema of every update waiting in the outbox, retained on ``<prefix>/<vin>/schema/<id>``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.spime import Schema
from tests.support.agentrun import VIN, cli
from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.data import make_demo_drive
from tests.support.e2e import PREFIX, replay_config


def stored_schema_ids(outbox: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30.0)
    try:
        # Bytes 2..9 of an update are its schema id (README, "Wire format").
        return {bytes(p[2:10]).hex() for (p,) in conn.execute("SELECT payload FROM outbox")}
    finally:
        conn.close()


def test_schemas_of_stored_updates_are_published_after_a_config_change(tmp_path: Path) -> None:
    box = tmp_path / "outbox.db"
    drive = make_demo_drive(tmp_path / "drive.log", 3)
    port = free_port()  # nothing listens yet: the first run keeps its updates
    first = replay_config(tmp_path / "first.toml", log=drive, port=port, outbox=box)
    r = cli("run", "--config", str(first), "--drain-timeout", "1", timeout=120)
    assert r.returncode == 3, r.stderr
    (old,) = stored_schema_ids(box)

    # Another selection of signals is another schema.
    second = replay_config(tmp_path / "second.toml", log=drive, port=port, outbox=box)
    second.write_text(second.read_text() + '\n[[signal]]\nmatch = "ECM_Engine1.EngineSpeed"\n')
    broker = Mosquitto(tmp_path / "broker", port=port)
    broker.start()
    try:
        r = cli("run", "--config", str(second), timeout=120)
        assert r.returncode == 0, r.stderr
        assert not box.exists() or stored_schema_ids(box) == set()
        with Subscriber(broker, f"{PREFIX}/{VIN}/schema/#") as late:
            topic = f"{PREFIX}/{VIN}/schema/{old}"
            assert late.wait_for(lambda ms: any(m.topic == topic for m in ms), 30.0), [
                m.topic for m in late.messages
            ]
            (msg,) = [m for m in late.messages if m.topic == topic]
        assert msg.retain
        assert Schema.from_json(msg.payload).id == old
    finally:
        broker.stop()
