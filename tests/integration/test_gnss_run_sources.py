"""`spime-agent run` with gpsd and with a modem's GNSS engine as the receiver, publishing to a
real mosquitto: the positions arrive decoded, the state follows the receiver."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.modem.simgnss import GnssScript
from agent.modem.simulator import ModemSimulator
from agent.spime import Schema, decode_update, peek_header
from tests.support.agentrun import write_config
from tests.support.broker import Mosquitto, Subscriber
from tests.support.data import DEMO_DBC
from tests.support.e2e import DATA_TOPIC, AgentProcess
from tests.support.fake_gpsd import FakeGpsd, tpv
from tests.support.nmea import M_LAT, north_of
from tests.support.wait import wait_for

LAT0, LON0 = 48.1, 11.5
WAIT = 60.0
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
STATE = "Vehicle.CurrentLocation.State"
# A road with bends (curve logging keeps a fix at each), 25 m a second
TRACK = [
    (north_of(LAT0, 25.0 * i), LON0 + 60.0 * math.sin(i / 5.0) / (M_LAT * math.cos(0.84)))
    for i in range(40)
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def _config(tmp_path: Path, broker: Mosquitto, gnss: str) -> Path:
    extra = (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nreconnect_min = 0.1\n'
        "reconnect_max = 0.5\ndrain_rate = 0\n"
        f'[outbox]\npath = "{tmp_path / "outbox.db"}"\ncommit_interval = 0.05\n'
        "[updates]\nmax_age = 0.2\n"
        "[privacy]\ntrip_end_radius = 0\n"
        '[consent]\ngranted = ["location"]\n'
        f"{gnss}"
    )
    bus = {"name": "car", "interface": "virtual", "channel": f"gnss-src-{os.getpid()}"}
    return write_config(tmp_path / "agent.toml", [{**bus, "dbc": [str(DEMO_DBC)]}], extra=extra)


def _samples(tmp_path: Path, sub: Subscriber) -> list[dict[str, Any]]:
    out = []
    for m in list(sub.messages):
        sid = peek_header(m.payload).schema_id
        path = tmp_path / "outbox.db.schemas" / f"{sid}.json"
        out.extend(decode_update(m.payload, Schema.from_json(path.read_bytes()))["samples"])
    return out


def _positions(samples: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(s["signal"], s["value"]) for s in samples if s["signal"] in (LAT, LON)]


def _on_track(positions: list[tuple[str, float]], decimals: int) -> None:
    lats = {round(a, decimals) for a, _ in TRACK}
    lons = {round(b, decimals) for _, b in TRACK}
    for name, value in positions:
        assert round(value, decimals) in (lats if name == LAT else lons), (name, value)


def _run(
    tmp_path: Path, broker: Mosquitto, gnss: str, feed: Callable[[Subscriber], None], decimals: int
) -> None:
    cfg = _config(tmp_path, broker, gnss)
    sub = Subscriber(broker, DATA_TOPIC, client_id="sub-data")
    try:
        with AgentProcess(cfg, log_path=tmp_path / "agent.log") as agent:
            assert agent.wait_log("gnss: receiver", WAIT), agent.log()
            feed(sub)
            wait_for(
                lambda: len(_positions(_samples(tmp_path, sub))) >= 8, WAIT, "positions published"
            )
            wait_for(
                lambda: (
                    "gnss down"
                    in [s["value"] for s in _samples(tmp_path, sub) if s["signal"] == STATE]
                ),
                WAIT,
                "gnss down once the receiver is silent",
            )
            agent.send(signal.SIGTERM)
            assert agent.wait(WAIT) == 0, agent.log()
        samples = _samples(tmp_path, sub)
        _on_track(_positions(samples), decimals)
        states = [s["value"] for s in samples if s["signal"] == STATE]
        assert "fix" in states and states.index("fix") < states.index("gnss down"), states
    finally:
        sub.close()


def test_run_with_gpsd_publishes_its_positions(tmp_path: Path, broker: Mosquitto) -> None:
    with FakeGpsd() as gpsd:
        sent = [0]

        def feed(sub: Subscriber) -> None:
            wait_for(lambda: gpsd.watching, WAIT, "the agent watching gpsd")

            def drive_on() -> bool:
                # One epoch per look, round the track, until the twin has seen a fix.
                i = sent[0]
                gpsd.send(tpv(i, *TRACK[i % len(TRACK)]))
                sent[0] += 1
                states = [s["value"] for s in _samples(tmp_path, sub) if s["signal"] == STATE]
                return i >= len(TRACK) and "fix" in states

            wait_for(drive_on, WAIT, "a fix published")

        gnss = f'[gnss]\nsource = "gpsd"\nport = {gpsd.port}\ndown_after = 1.0\n'
        _run(tmp_path, broker, gnss, feed, 7)


def test_run_with_a_modems_gnss_publishes_its_positions(tmp_path: Path, broker: Mosquitto) -> None:
    script = GnssScript("quectel", track=tuple(TRACK))
    with ModemSimulator("healthy", gnss=script) as sim:
        gnss = (
            f'[[modem]]\nname = "lte"\nport = "{sim.port}"\n'
            "[modems]\ncheck_interval = 5\ncommand_timeout = 1\n"
            '[gnss]\nsource = "at"\nmodem = "lte"\npoll_interval = 0.1\ndown_after = 1.0\n'
        )

        # The modem answers along the track at once: 516 (no fix) once it ends, then
        # silence: gnss down.
        def feed(sub: Subscriber) -> None:
            wait_for(lambda: script.step == len(TRACK), WAIT, "the track polled")
            script.mode = "silent"

        _run(tmp_path, broker, gnss, feed, 5)
