"""A recorded drive with ignition off/on cycles, replayed in real time by ``spime-agent run``:
each transition is in the status and in the data (a ``Vehicle.PowerState`` event at the frame
that caused it), the modem's radio follows (AT+CFUN), the sleep command runs once per park, and
nothing of the drive is lost, also when the recording ends with the car parked.

Real parts: the CLI as its own process replaying a candump log written here with python-can, a
real mosquitto (every status and update collected and decoded as a backend reads them), the
modem simulator on a pty (it records AT+CFUN), and a sleep command that records its calls.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import can

from agent.catalog import POWER_SIGNAL
from agent.config import load_config
from agent.daemon import prepare
from agent.modem.simulator import ModemSimulator
from tests.support.agentrun import write_config
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import DATA_TOPIC, STATUS_TOPIC, AgentProcess
from tests.support.power import (
    BODY,
    DBC,
    ENGINE,
    IGNITION,
    OFF,
    RUN,
    SLEEPER,
    WAIT,
    decoded,
    modem,
    power_events,
    publishing,
    sleep_calls,
    sleep_command,
    values,
)

START = 1767225600.0  # 2026-01-01T00:00:00Z: the recording's clock, not this machine's
PHASE = 0.8  # seconds of each drive and each park
CYCLES = 2  # drive, park; the recording ends parked


def _message(t: float, arbitration_id: int, value: int) -> can.Message:
    return can.Message(
        timestamp=t,
        arbitration_id=arbitration_id,
        data=value.to_bytes(2, "little") + bytes(6),
        is_extended_id=False,
        channel="can0",
    )


def write_drive(path: Path) -> tuple[list[int], list[tuple[float, float]]]:
    """A candump log: per cycle a drive (ignition Run every 100 ms, a counter every 20 ms) and
    a park (ignition Off every 100 ms). Returns the counter values and each park's span."""
    counters: list[int] = []
    parks: list[tuple[float, float]] = []
    t = START
    with can.Logger(str(path)) as log:
        for _ in range(CYCLES):
            for i in range(int(PHASE / 0.02)):
                ts = t + i * 0.02
                if i % 5 == 0:
                    log.on_message_received(_message(ts, BODY, RUN))
                counters.append(len(counters) + 1)
                log.on_message_received(_message(ts + 0.001, ENGINE, counters[-1]))
            t += PHASE
            parks.append((t, t + PHASE))
            for i in range(int(PHASE / 0.1)):
                log.on_message_received(_message(t + i * 0.1, BODY, OFF))
            t += PHASE
    return counters, parks


def test_a_replayed_drive_with_ignition_cycles(tmp_path: Path, broker: Mosquitto) -> None:
    drive = tmp_path / "drive.log"
    counters, parks = write_drive(drive)
    (tmp_path / "car.dbc").write_text(DBC)
    (tmp_path / "sleeper.sh").write_text(SLEEPER)
    calls = tmp_path / "sleep-calls"
    with ExitStack() as stack:
        sim = stack.enter_context(ModemSimulator("healthy", ident=1))
        cfg = write_config(
            tmp_path / "agent.toml",
            [
                {
                    "name": "car",
                    "interface": "replay",
                    "log": str(drive),
                    "speed": 1,
                    "dbc": ["car.dbc"],
                }
            ],
            extra="[updates]\nmax_age = 0.05\n"
            + publishing(broker.port, tmp_path)
            + modem(sim.port, tmp_path)
            + IGNITION
            + "park_upload = 0.5\n"
            + sleep_command(tmp_path, calls),
        )
        statuses = stack.enter_context(Subscriber(broker, STATUS_TOPIC, client_id="sub-s"))
        data = stack.enter_context(Subscriber(broker, DATA_TOPIC, client_id="sub-d"))
        agent = stack.enter_context(AgentProcess(cfg, log_path=tmp_path / "agent.log"))
        assert agent.wait(WAIT + CYCLES * 2 * PHASE) == 0, agent.log()

    schema = prepare(load_config(cfg)).schema
    updates = decoded(data.messages, schema)
    # Nothing of the drive lost.
    assert sorted(set(values(updates, "Engine.Counter"))) == counters
    # Each transition once in the data, at the frame that caused it.
    assert power_events(updates) == ["driving"] + ["parked", "driving"] * (CYCLES - 1) + ["parked"]
    stamps = [s["t"] for u in updates for s in u["samples"] if s["signal"] == POWER_SIGNAL]
    for (begin, end), t in zip(parks, stamps[1::2], strict=True):
        assert begin <= t < end, (begin, t, end)
    # The radio followed.
    assert sim.cfun_changes == [1] + [4, 1] * (CYCLES - 1) + [4]
    # Each transition in the status; the box was put to sleep once per park (a command the
    # wake or the end found still running was ended, maybe before it recorded its call).
    docs = [json.loads(m.payload) for m in statuses.messages]
    seen: list[tuple[str, float]] = []
    for p in (d["power"] for d in docs):
        if p["reason"] != "started" and (p["state"], p["since"]) not in seen:
            seen.append((p["state"], p["since"]))
    assert [s for s, _ in seen] == ["driving", "parked"] * CYCLES, seen
    assert docs[-1]["power"]["sleep"]["runs"] == CYCLES
    assert 1 <= sleep_calls(calls) <= CYCLES
