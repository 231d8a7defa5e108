"""A privacy zone added, or consent revoked, while the agent is stopped covers what the last run
left in the outbox.

The agent runs as `run` wires it, with a real mosquitto that refuses its updates (an ACL: they
wait in the SQLite outbox) and, for positions, an NMEA receiver on a pseudo-terminal. The
agent is stopped, restarted once with the config unchanged (nothing is rewritten), stopped,
the config gains a zone (or loses a category) and the broker takes updates; the agent starts
again. Every published update and every row left in the outbox is decoded and scanned.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import can
import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.schemastore import SchemaStore
from agent.spime import decode_samples, encode_update, peek_header
from tests.support.agentrun import VIN, zones_toml
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import PREFIX, AgentProcess, Key, decode_updates, outbox_payloads
from tests.support.nmea import epoch, position
from tests.support.privacy import (
    BOOT,
    FIXES,
    HOME,
    LON,
    SCHEMA,
    STATE,
    T0,
    drive_zone,
    inside,
    is_gnss,
    lat_seconds,
    north,
)
from tests.support.remotecar import NO_DATA_ACL, Car
from tests.support.wait import wait_for

WAIT = 60.0
ZONE = drive_zone("depot", 100, 200.0)
DRIVEN = range(FIXES // 2 + 50)  # the zone lies well inside the drive


def _wait_old_boot_gone(car: Car, boot: str) -> None:
    """Every update of the earlier run is acknowledged by the broker (or purged)."""
    agent = car.agent
    assert agent is not None

    def gone() -> bool:
        agent.outbox.flush()
        return all(peek_header(r.payload).boot != boot for r in agent.outbox.iter_rows())

    wait_for(gone, WAIT, "the earlier run's updates sent")


def _until_ready(notify: socket.socket) -> list[str]:
    """What the agent told systemd, up to READY=1."""
    fields: list[str] = []
    while "READY=1" not in fields:
        fields += notify.recv(4096).decode().split("\n")
    return fields


def test_a_zone_added_while_the_agent_was_stopped_takes_back_stored_positions(
    tmp_path: Path, pty: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    master, port = pty
    broker = Mosquitto(tmp_path / "broker", acl=NO_DATA_ACL)
    broker.start()
    car = Car(tmp_path, broker)
    own, gnss = car.add_receiver(port, down_after=600)
    db = tmp_path / "outbox.db"
    schemas = tmp_path / "outbox.db.schemas"
    record = tmp_path / "outbox.db.privacy"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(WAIT)
    sub = Subscriber(broker, f"{PREFIX}/{VIN}/data", client_id="sub-data")
    try:
        agent = car.start()
        try:
            location = agent.location
            assert location is not None
            wait_for(lambda: getattr(location.source, "opens", 0) == 1, WAIT, "the port open")
            with can.Bus(interface="virtual", channel=car.channel, ignore_config=True) as bus:
                for second in DRIVEN:
                    os.write(master, epoch("GN", second, *position(second)))
                    if second % 10 == 9:
                        bus.send(can.Message(arbitration_id=0x100, data=bytes([second % 100])))
                        wait_for(lambda n=second + 1: location.fixes == n, WAIT, "fixes taken")
                    if second % 40 == 39:
                        assert agent.request_snapshot(WAIT) is not None
        finally:
            car.stop()  # the open update is stored on the way out
        stored = outbox_payloads(db)
        first = decode_updates(stored, schemas)
        assert lat_seconds(first) == set(DRIVEN)
        boot = next(iter(first))[0]
        assert record.exists()
        mark = record.stat().st_mtime_ns

        # systemd's side of the next starts.
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))

        # Unchanged config: nothing owed, nothing rewritten, the record not even written.
        agent = car.start()
        try:
            assert not [f for f in _until_ready(notify) if f.startswith("EXTEND_TIMEOUT_USEC=")]
            assert "last_purge" not in agent.status()["outbox"]
            agent.outbox.flush()
            assert set(stored) <= {r.payload for r in agent.outbox.iter_rows()}
        finally:
            car.stop()
        assert record.stat().st_mtime_ns == mark

        # The owner adds a zone while the agent is stopped; the broker takes updates from now.
        car.config.write_text(
            own + gnss.replace("[privacy]\n", f"[privacy]\nzones = [{zones_toml([ZONE])}]\n")
        )
        broker.acl = NO_DATA_ACL + f"topic readwrite {PREFIX}/{VIN}/data\n"
        broker.reload()
        agent = car.start()
        try:
            # The purge asked systemd for time before READY (a big outbox on slow flash).
            assert "EXTEND_TIMEOUT_USEC=60000000" in _until_ready(notify)
            purge = agent.status()["outbox"]["last_purge"]
            assert purge["rewritten"] >= 1 and purge["location_samples"] >= 10, purge
            assert "depot" in purge["why"]
            _wait_old_boot_gone(car, boot)
        finally:
            car.stop()
    finally:
        sub.close()
        broker.stop()
        notify.close()
    published = decode_updates([m.payload for m in sub.messages], schemas)
    final = {**decode_updates(outbox_payloads(db), schemas), **published}
    for doc in final.values():
        private = [s for s in doc["samples"] if is_gnss(s) and inside([ZONE], s["t"])]
        assert not private, (doc["seq"], private)
    # Nothing else is lost: each stored update is sent with the same boot and seq, with every
    # sample it had but those of fixes inside the zone.
    for key, doc in first.items():
        wanted = [s for s in doc["samples"] if not (is_gnss(s) and inside([ZONE], s["t"]))]
        sent = final[key]["samples"] if key in final else []
        got = [s for s in sent if s["signal"] != STATE or s in doc["samples"]]
        assert got == wanted, key
    kept = lat_seconds({k: v for k, v in final.items() if k[0] == boot})
    assert kept == {i for i in DRIVEN if not inside([ZONE], T0 + i)}
    assert kept != set(DRIVEN)  # the zone did cover stored fixes


def test_consent_revoked_while_the_agent_was_stopped_takes_back_stored_samples(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "broker", acl=NO_DATA_ACL)
    broker.start()
    car = Car(tmp_path, broker, remote=False)
    db = tmp_path / "outbox.db"
    schemas = tmp_path / "outbox.db.schemas"
    sub = Subscriber(broker, f"{PREFIX}/{VIN}/data", client_id="sub-data")
    try:
        agent = car.start()
        try:
            car.send_frames(10)
            wait_for(lambda: _names(_stored_docs(car, schemas)).count("Pos.Lat") >= 5, WAIT)
        finally:
            car.stop()
        first = decode_updates(outbox_payloads(db), schemas)
        assert "Pos.Lat" in _names(first) and "Health.Coolant" in _names(first)
        boot = next(iter(first))[0]
        text = car.config.read_text()
        assert 'granted = ["vehicle_health", "location"]' in text
        car.config.write_text(text.replace('"vehicle_health", "location"', '"vehicle_health"'))
        broker.acl = NO_DATA_ACL + f"topic readwrite {PREFIX}/{VIN}/data\n"
        broker.reload()
        agent = car.start()
        try:
            purge = agent.status()["outbox"]["last_purge"]
            assert purge["why"] == "consent revoked for location", purge
            _wait_old_boot_gone(car, boot)
        finally:
            car.stop()
    finally:
        sub.close()
        broker.stop()
    sent = decode_updates([m.payload for m in sub.messages], schemas)
    assert "Pos.Lat" not in _names(sent)
    assert _names(sent).count("Health.Coolant") == _names(first).count("Health.Coolant")
    assert "Pos.Lat" not in _names(decode_updates(outbox_payloads(db), schemas))


def _stored_docs(car: Car, schemas: Path) -> dict[Key, dict[str, Any]]:
    assert car.agent is not None
    car.agent.outbox.flush()
    return decode_updates([r.payload for r in car.agent.outbox.iter_rows()], schemas)


def _names(docs: dict[Key, dict[str, Any]]) -> list[str]:
    return [s["signal"] for d in docs.values() for s in d["samples"]]


def test_a_purge_cut_short_by_a_kill_is_done_again_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outbox left by a run under no zone; the config now has one. The agent is killed
    (SIGKILL) once the purge at start has rewritten some rows but not all; the next start
    purges the rest before anything is sent."""
    broker = Mosquitto(tmp_path / "broker", acl=NO_DATA_ACL)
    broker.start()
    # Paced so that the test's subscriber keeps up (the broker drops what queues up for it).
    car = Car(tmp_path, broker, remote=False, mqtt_extra="drain_rate = 300")
    zone = zones_toml([dataclasses.asdict(HOME)])
    car.config.write_text(car.config.read_text() + f"\n[privacy]\nzones = [{zone}]\n")
    db = tmp_path / "outbox.db"
    SchemaStore(tmp_path / "outbox.db.schemas").save(SCHEMA)
    # Every third update lies inside the zone (each fix: coolant, latitude, longitude).
    box = Outbox(OutboxConfig(path=db, commit_interval=600))
    box.open()
    rows = 2000
    for seq in range(1, rows + 1):
        lat = north(0 if seq % 3 == 0 else 3000)  # 3 km: outside any coarse cell's reach
        samples = [(seq * 10 + k, sid, v) for k in range(10) for sid, v in ((0, k), (1, lat))]
        samples += [(seq * 10 + k, 2, LON) for k in range(10)]
        box.put(encode_update(SCHEMA, boot=BOOT, seq=seq, vin=VIN, samples=samples), "telemetry")
    box.close()
    original = dict(_rows(db))
    record = tmp_path / "outbox.db.privacy"
    sub = Subscriber(broker, f"{PREFIX}/{VIN}/data", client_id="sub-data")
    try:
        with AgentProcess(car.config, log_path=tmp_path / "first.log") as proc:

            def rewritten() -> int:
                assert proc.proc.poll() is None, proc.log()
                return sum(p != original[i] for i, p in _rows(db))

            wait_for(lambda: rewritten() > 0, WAIT, "the purge under way")
            proc.kill()
        # The kill landed mid-purge: rows inside the zone are left as they were stored.
        left = [i for i, p in _rows(db) if p == original[i] and _seq(p) % 3 == 0]
        assert left, "the purge finished before the kill: nothing proven"
        assert not record.exists()  # recorded only once a purge has committed

        broker.acl = NO_DATA_ACL + f"topic readwrite {PREFIX}/{VIN}/data\n"
        broker.reload()
        with AgentProcess(car.config, log_path=tmp_path / "second.log") as proc:
            wait_for(lambda: len(sub.messages) >= rows or proc.proc.poll() is not None, WAIT * 2)
            assert proc.proc.poll() is None, proc.log()
            assert "privacy zones now home" in proc.log()
            proc.send(signal.SIGTERM)
            assert proc.wait(30) == 0
        assert record.exists()
    finally:
        sub.close()
        broker.stop()
    sent = {}
    for m in sub.messages:
        head, samples = decode_samples(m.payload, SCHEMA)
        if head.boot == BOOT.hex():
            sent[head.seq] = samples
    assert sorted(sent) == list(range(1, rows + 1))
    for seq, samples in sent.items():
        positions = [s for s in samples if s[1] != 0]
        assert len([s for s in samples if s[1] == 0]) == 10, seq
        assert len(positions) == (0 if seq % 3 == 0 else 20), (seq, positions)


def _rows(db: Path) -> list[tuple[int, bytes]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)
    try:
        return [(r[0], bytes(r[1])) for r in conn.execute("SELECT id, payload FROM outbox")]
    finally:
        conn.close()


def _seq(payload: bytes) -> int:
    return peek_header(payload).seq
