"""`spime-agent run` with an NMEA receiver on a pseudo-terminal, publishing to a real mosquitto.

A drive starts inside a privacy zone ("home") and passes through another ("work"). Every row
of the SQLite outbox (read from outside, every row decoded with the stored schema) and every
published update is scanned: no position inside a zone or within trip_end_radius of the drive's
ends may appear, exact or coarse (each position sample is traced back, by its time, to the fix
it came from). When the receiver stops talking, the twin gets `gnss down`.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.policy.geo import distance_m
from agent.spime import Schema, decode_update, peek_header
from tests.support.agentrun import write_config, zones_toml
from tests.support.broker import Mosquitto, Subscriber
from tests.support.data import DEMO_DBC
from tests.support.e2e import DATA_TOPIC, AgentProcess, retained_status
from tests.support.nmea import Point, drive, epoch
from tests.support.wait import wait_for

LAT0, LON0 = 48.1, 11.5
T0 = 1767225600  # 2026-01-01T00:00:00Z: the epochs' day
TRIP_END = 500.0
WAIT = 60.0
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
STATE = "Vehicle.CurrentLocation.State"


def _zones(points: list[Point]) -> list[dict[str, Any]]:
    mid = points[900]  # on the motorway
    return [
        {"name": "home", "lat": LAT0, "lon": LON0, "radius": 300.0},
        {"name": "work", "lat": mid.lat, "lon": mid.lon, "radius": 400.0},
    ]


def _forbidden(points: list[Point], zones: list[dict[str, Any]], lat: float, lon: float) -> str:
    for z in zones:
        if distance_m(z["lat"], z["lon"], lat, lon) <= z["radius"] + 1.0:
            return f"inside zone {z['name']}"
    for end in (points[0], points[-1]):
        if distance_m(end.lat, end.lon, lat, lon) <= TRIP_END + 1.0:
            return "near a trip end"
    return ""


def _scan(points: list[Point], zones: list[dict[str, Any]], docs: list[dict[str, Any]]) -> int:
    """Asserts no sample of the updates reveals a forbidden fix; the positions seen."""
    positions = 0
    for doc in docs:
        for s in doc["samples"]:
            if not s["signal"].startswith("Vehicle.CurrentLocation.") or s["signal"] == STATE:
                continue
            # Every location sample carries its fix's receiver time: the fix it came from.
            second = round(s["t"] - T0)
            assert 0 <= second < len(points), s
            p = points[second]
            why = _forbidden(points, zones, p.lat, p.lon)
            assert not why, f"{s} comes from a fix {why}"
            if s["signal"] in (LAT, LON):
                positions += 1
                exact = p.lat if s["signal"] == LAT else p.lon
                # NMEA carries 1e-4 minutes: about 2e-6 degrees
                assert abs(s["value"] - exact) < 0.02, s
    return positions


def _outbox_docs(outbox: Path) -> list[dict[str, Any]]:
    """Every row of the outbox file, decoded with the schema stored beside it."""
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30.0)
    try:
        rows = [bytes(r[0]) for r in conn.execute("SELECT payload FROM outbox ORDER BY id")]
    finally:
        conn.close()
    docs = []
    for payload in rows:
        sid = peek_header(payload).schema_id
        schema = Schema.from_json((Path(f"{outbox}.schemas") / f"{sid}.json").read_bytes())
        docs.append(decode_update(payload, schema))
    return docs


def _states(docs: list[dict[str, Any]]) -> list[str]:
    return [s["value"] for d in docs for s in d["samples"] if s["signal"] == STATE]


def _down_after_fix(states: list[str]) -> bool:
    return "fix" in states and "gnss down" in states[states.index("fix") :]


@pytest.mark.parametrize("consent", ["location", "coarse_location"])
def test_a_drive_through_privacy_zones_stores_and_sends_no_private_position(
    tmp_path: Path, pty: tuple[int, str], consent: str
) -> None:
    master, port = pty
    points = drive(LAT0, LON0)
    zones = _zones(points)
    broker = Mosquitto(tmp_path / "broker", clientid_prefixes="sub-")
    broker.start()
    outbox = tmp_path / "outbox.db"
    extra = (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min = 0.1\n'
        "reconnect_max = 0.5\ndrain_rate = 0\n"
        f'[outbox]\npath = "{outbox}"\ncommit_interval = 0.05\n'
        "[updates]\nmax_age = 0.2\n"
        f'[gnss]\nport = "{port}"\ndown_after = 1.0\n'
        f"[privacy]\ntrip_end_radius = {TRIP_END}\nzones = [{zones_toml(zones)}]\n"
        f'[consent]\ngranted = ["{consent}"]\n'
    )
    bus = {"name": "car", "interface": "virtual", "channel": f"gnss-{os.getpid()}"}
    cfg = write_config(tmp_path / "agent.toml", [{**bus, "dbc": [str(DEMO_DBC)]}], extra=extra)
    sub = Subscriber(broker, DATA_TOPIC, client_id="sub-data")
    try:
        with AgentProcess(cfg, log_path=tmp_path / "agent.log") as agent:
            assert agent.wait_log("gnss: receiver nmea opened", WAIT), agent.log()
            # The car waits at home while the receiver's port opens (opening discards input).
            first = epoch("GN", 0, points[0].lat, points[0].lon)
            wait_for(
                lambda: os.write(master, first) and "gnss: in privacy zone" in agent.log(),
                WAIT,
                "the first fix, at home",
            )
            for second, p in enumerate(points[1:], 1):
                os.write(master, epoch("GN", second, p.lat, p.lon, p.speed_kmh, p.heading))
            # The receiver falls silent: reported, and nothing held is painted as fresh.
            stored = wait_for(
                lambda: (d := _outbox_docs(outbox)) and _down_after_fix(_states(d)) and d,
                WAIT,
                "gnss down in the outbox",
            )
            assert _scan(points, zones, stored) >= 4
            assert "in privacy zone" in _states(stored)
            broker.clientid_prefixes = None
            broker.reload()
            wanted = {(d["boot"], d["seq"]) for d in stored}

            def published() -> list[dict[str, Any]]:
                schema_of: dict[str, Schema] = {}
                for sid in {peek_header(m.payload).schema_id for m in sub.messages}:
                    path = Path(f"{outbox}.schemas") / f"{sid}.json"
                    schema_of[sid] = Schema.from_json(path.read_bytes())
                return [
                    decode_update(m.payload, schema_of[peek_header(m.payload).schema_id])
                    for m in sub.messages
                ]

            wait_for(
                lambda: wanted <= {(d["boot"], d["seq"]) for d in published()},
                WAIT,
                "every stored update published",
            )
            assert retained_status(broker)["gnss"]["state"] == "gnss down"
            agent.send(signal.SIGTERM)
            assert agent.wait(WAIT) == 0, agent.log()
        # Whatever was still held at the end (the fixes near where the car stopped) is dropped.
        assert "trailing fixes withheld" in agent.log()
        sent = published()
        assert _scan(points, zones, sent) >= 4
        _scan(points, zones, _outbox_docs(outbox))  # what is left after the drain
        assert _down_after_fix(_states(sent))
        lats = [s["value"] for d in sent for s in d["samples"] if s["signal"] == LAT]
        assert all(isinstance(v, float) and 48.0 < v < 48.5 for v in lats), lats
        if consent == "coarse_location":
            assert all(abs(v * 100 - round(v * 100)) < 1e-6 for v in lats), lats
        else:
            assert len(set(lats)) >= 4
    finally:
        sub.close()
        broker.stop()
