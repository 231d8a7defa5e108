"""Lifecycle test support: a small car (a counter and an ignition with labels, a battery
voltage), its config (publishing, a simulated modem, [power]: ``modem_car``), the agent run in
this process on python-can's ``virtual`` bus, a sleep command that records its calls (and can
fail or hang), and readers of the power state in status and data.

Nothing here mocks the agent: ``running`` starts the real ``Agent`` in a thread
(tests.support.agentrun); frames go over a real (virtual) python-can bus; the modem is the
simulator on a pseudo-terminal; the sleep command is a real child process.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can

from agent.catalog import POWER_SIGNAL
from agent.daemon import Agent
from agent.modem.simulator import ModemSimulator
from agent.spime import decode_update
from agent.spime.schema import Schema
from tests.support.agentrun import Running, write_config
from tests.support.broker import Received
from tests.support.wait import wait_for

WAIT = 30.0
DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Engine: 8 ECU
 SG_ Counter : 0|16@1+ (1,0) [0|65535] "" Vector__XXX
BO_ 512 Body: 8 ECU
 SG_ Ignition : 0|8@1+ (1,0) [0|3] "" Vector__XXX
VAL_ 512 Ignition 0 "Off" 1 "Acc" 2 "Run" ;
BO_ 768 Battery: 8 ECU
 SG_ Volts : 0|16@1+ (0.01,0) [0|655.35] "V" Vector__XXX
"""
ENGINE, BODY, BATTERY = 0x100, 0x200, 0x300
OFF, RUN = 0, 2
# The lifecycle by the ignition: parked only once it is switched off (more [power] keys follow).
IGNITION = '[power]\nignition = "Body.Ignition"\nignition_on = ["Run"]\npark_after = 600\n'
# The sleep command, a shell script (it starts at once, so even a quick wake finds its call
# recorded): appends its pid per call to the file $1; $2 "fail" makes it exit 3 after saying
# why, "hang" makes it outlive any timeout (exec: the pid recorded is the one that hangs).
SLEEPER = """echo $$ >> "$1"
case "$2" in
fail) echo "power controller refused" >&2; exit 3 ;;
hang) exec sleep 3600 ;;
esac
"""


def power_config(tmp_path: Path, channel: str, extra: str, updates: str = "") -> Path:
    """A config for the small car on the virtual bus ``channel``; ``extra``: more TOML,
    ``updates``: more lines for [updates]."""
    (tmp_path / "car.dbc").write_text(DBC)
    (tmp_path / "sleeper.sh").write_text(SLEEPER)
    return write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "virtual", "channel": channel, "dbc": ["car.dbc"]}],
        extra=f"[updates]\nmax_age = 0.05\n{updates}" + extra,
    )


def sleep_command(tmp_path: Path, calls: Path, mode: str = "") -> str:
    """The TOML line of a sleep command recording its calls in ``calls``."""
    argv = ["/bin/sh", str(tmp_path / "sleeper.sh"), str(calls), *([mode] if mode else [])]
    return "sleep_command = [" + ", ".join(f'"{a}"' for a in argv) + "]\n"


def sleep_calls(calls: Path) -> int:
    return len(sleep_pids(calls))


def sleep_pids(calls: Path) -> list[int]:
    """The process ids of the sleep command's calls, in order."""
    return [int(n) for n in calls.read_text().split()] if calls.exists() else []


def publishing(
    port: int, tmp_path: Path, mqtt: str = "", reconnect: tuple[float, float] = (0.1, 0.5)
) -> str:
    """[mqtt] and [outbox] TOML for a broker on 127.0.0.1:port, with quick reconnects (or the
    ``reconnect`` delays); ``mqtt``: more lines for [mqtt]."""
    low, high = reconnect
    return (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
        + f"reconnect_min = {low}\nreconnect_max = {high}\n"
        + mqtt
        + f'[outbox]\npath = "{tmp_path / "outbox.db"}"\ncommit_interval = 0.05\n'
    )


def modem(port: str, tmp_path: Path) -> str:
    """[[modem]] TOML for one (simulated) modem on ``port``."""
    return (
        f'[[modem]]\nname = "a"\nport = "{port}"\n'
        f'[modems]\ncheck_interval = 0.2\npin_ledger = "{tmp_path / "pins"}"\n'
    )


def new_channel() -> str:
    """A virtual bus channel of this test alone."""
    return f"power-{uuid.uuid4().hex[:8]}"


def car_bus(channel: str) -> can.BusABC:
    """The car's end of the virtual bus ``channel``: frames sent on it reach the agent."""
    return can.Bus(interface="virtual", channel=channel, ignore_config=True)


@dataclass(frozen=True)
class ModemCar:
    """The config of the small car with a modem, and what the test watches of it."""

    cfg: Path
    channel: str  # its virtual bus
    sim: ModemSimulator
    calls: Path  # the sleep command's calls (``sleep_calls``, ``sleep_pids``)


@contextmanager
def modem_car(
    tmp_path: Path,
    broker_port: int,
    power: str,
    *,
    sleep_mode: str = "",
    mqtt: str = "",
    updates: str = "",
    **sim: Any,
) -> Iterator[ModemCar]:
    """The small car publishing to the broker on ``broker_port`` through a healthy simulated
    modem, with the ``power`` TOML ([power] and its keys) and a sleep command recording its
    calls (``sleep_mode`` as for ``sleep_command``); ``mqtt``, ``updates``: more lines for
    [mqtt] and [updates]; ``sim``: the simulated modem's state (agent.modem.simat)."""
    channel = new_channel()
    calls = tmp_path / "sleep-calls"
    with ModemSimulator("healthy", ident=1, **sim) as modem_sim:
        extra = publishing(broker_port, tmp_path, mqtt) + modem(modem_sim.port, tmp_path) + power
        extra += sleep_command(tmp_path, calls, sleep_mode)
        yield ModemCar(power_config(tmp_path, channel, extra, updates), channel, modem_sim, calls)


@contextmanager
def running(
    cfg_path: Path, *, dry_run: bool, wait_bus: bool = True
) -> Iterator[tuple[Agent, list[dict[str, Any]]]]:
    """The agent of ``cfg_path`` in a thread; yields it and (dry run) the updates decoded.
    Stopped on exit, which must end with exit code 0."""
    with Running(cfg_path, dry_run=dry_run) as run:
        agent = run.agent
        if wait_bus:
            wait_for(lambda: agent.pipeline.source_states().get("car") == "up", WAIT, "bus up")
        yield agent, run.updates
    assert run.result is not None and run.result.exit_code == 0


def state(agent: Agent) -> str:
    return agent.status()["power"]["state"]  # type: ignore[no-any-return]


def frame(car: can.BusABC, arbitration_id: int, value: int) -> None:
    """Send ``value`` as the first 16 bits (little endian) of a frame."""
    car.send(
        can.Message(
            arbitration_id=arbitration_id,
            data=value.to_bytes(2, "little") + bytes(6),
            is_extended_id=False,
        )
    )


def decoded(messages: Iterable[Received], schema: Schema) -> list[dict[str, Any]]:
    """Every update received, decoded as a backend reads it."""
    return [decode_update(m.payload, schema) for m in messages]


def power_events(updates: Iterable[dict[str, Any]], boot: str | None = None) -> list[str]:
    """The ``Vehicle.PowerState`` event values in ``updates`` (of ``boot`` if given), in order."""
    return [
        s["value"]
        for u in updates
        if boot is None or u["boot"] == boot
        for s in u["samples"]
        if s["signal"] == POWER_SIGNAL
    ]


def values(updates: Iterable[dict[str, Any]], signal: str) -> list[float]:
    """Every value of ``signal`` in ``updates``, duplicates included."""
    return [s["value"] for u in updates for s in u["samples"] if s["signal"] == signal]
