"""The GNSS receiver follows the lifecycle in the whole agent: parked, it is not read (the NMEA
pty closed, the gpsd watch ended, the modem's engine switched off and no longer polled), its
trip ends, and the twin sees ``paused``; at the wake it is read again and a new trip starts.

The agent runs in this process (a thread) so python-can's ``virtual`` bus can feed it the
ignition; the receivers are a real pseudo-terminal, the fake gpsd on a free port and the fake
modem on a pty.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import can

from agent.daemon import Agent
from agent.modem.simgnss import GnssScript
from agent.policy.geo import distance_m
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import DATA_TOPIC
from tests.support.fake_gpsd import T0, FakeGpsd, tpv
from tests.support.nmea import epoch, open_on, position
from tests.support.power import (
    IGNITION,
    WAIT,
    car_bus,
    decoded,
    frame,
    modem_car,
    new_channel,
    power_config,
    running,
    sleep_calls,
    state,
)
from tests.support.wait import wait_for

STATE = "Vehicle.CurrentLocation.State"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
RUN, OFF = 2, 0
# Every fix kept by the sampler; trips withheld within 500 m of their ends. A receiver that
# falls silent after its drive is "fix" for down_after more: longer than any of the test's waits
# (WAIT), so however slow the machine, the car parks before its receiver could count as down.
GNSS = "mode = 'rules'\nmin_interval = 0\ndistance = 1\ndown_after = 60\n"
PRIVACY = '[privacy]\ntrip_end_radius = 500\n[consent]\ngranted = ["location"]\n'


def _states(updates: list[dict[str, Any]]) -> list[str]:
    """The receiver's states in the data, repeats folded, "no fix" left out (a receiver that
    speaks before it has a position, or the modem past the end of its track)."""
    out: list[str] = []
    for u in list(updates):
        for s in u["samples"]:
            v = s["value"]
            if s["signal"] == STATE and v != "no fix" and (not out or out[-1] != v):
                out.append(v)
    return out


def _seconds(updates: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    """(second of the drive, lat, lon) of each position in the data."""
    by_t: dict[float, dict[str, float]] = {}
    for u in list(updates):
        for s in u["samples"]:
            if s["signal"] in (LAT, LON):
                by_t.setdefault(s["t"], {})[s["signal"]] = s["value"]
    return [
        (round(t - T0.timestamp()), v[LAT], v[LON])
        for t, v in sorted(by_t.items())
        if LAT in v and LON in v
    ]


def _private_trip(points: list[tuple[int, float, float]], first: int, last: int) -> None:
    """The positions of the drive's seconds first..last: some, none within 500 m of an end."""
    trip = [(lat, lon) for sec, lat, lon in points if first <= sec <= last]
    assert trip, (first, last, points)
    for lat, lon in trip:
        assert distance_m(*position(first), lat, lon) > 500
        assert distance_m(*position(last), lat, lon) > 500


def _gnss(agent: Agent) -> dict[str, Any]:
    return agent.status()["gnss"]  # type: ignore[no-any-return]


def _read(agent: Agent) -> int:
    """The fixes the receiver has read so far (with no zone, each one meets the track sampler,
    which keeps or drops it)."""
    track = _gnss(agent)["track"]
    return int(track["kept"] + track["dropped"])


def _park_and_wake(
    agent: Agent,
    car: can.BusABC,
    updates: Callable[[], list[dict[str, Any]]],
    drive: Callable[[range], None],
    parked: Callable[[], None],
    woken: Callable[[], None],
) -> None:
    """Drive seconds 0..59, park, check with ``parked``, wake, check with ``woken``, drive
    seconds 100..159: the states fix -> paused -> fix in status and data, private trips. The
    receiver waits for the lifecycle's first decision, and is read from ``woken`` on."""
    wait_for(lambda: _states(updates()) == ["paused"], WAIT, "paused from the start")
    assert _gnss(agent)["paused"] == "started"
    frame(car, 0x200, RUN)
    wait_for(lambda: state(agent) == "driving", WAIT, "driving")
    woken()
    drive(range(60))
    # The receiver reads the drive on its own thread: the car parks once it has read it all
    # (the state says "fix" from the drive's first second on).
    wait_for(lambda: _read(agent) >= 60, WAIT, "the drive read")
    wait_for(lambda: _states(updates())[-1:] == ["fix"], WAIT, "fix in the data")
    # (The modem answers "no fix" past the end of its track at once.)
    assert _gnss(agent)["state"] in ("fix", "no fix") and "paused" not in _gnss(agent)
    frame(car, 0x200, OFF)
    wait_for(lambda: _states(updates())[-1:] == ["paused"], WAIT, "paused in the data")
    assert state(agent) == "parked"
    doc = _gnss(agent)
    assert (doc["state"], doc["paused"]) == ("paused", "parked")
    # The parked car's trip ended: the fixes held near where it stopped were dropped.
    assert doc["privacy"]["trip_end"] > 0
    parked()
    frame(car, 0x200, RUN)
    wait_for(lambda: state(agent) == "driving", WAIT, "driving again")
    woken()
    assert "paused" not in _gnss(agent)
    drive(range(100, 160))
    wait_for(lambda: _states(updates())[-1:] == ["fix"], WAIT, "fix in the data again")
    assert _states(updates())[-3:] == ["fix", "paused", "fix"], _states(updates())
    # The trip goes on (no park ends it): the receiver releases the fixes of its middle as it
    # reads on, "fix" may be in the data before them.
    wait_for(lambda: [p for p in _seconds(updates()) if p[0] >= 100], WAIT, "the new trip")
    points = _seconds(updates())
    _private_trip(points, 0, 59)
    _private_trip(points, 100, 159)  # a new trip from the wake, its start withheld


def test_a_parked_car_closes_the_nmea_port_and_a_wake_opens_it(
    tmp_path: Path, pty: tuple[int, str]
) -> None:
    master, path = pty
    channel = new_channel()
    cfg = power_config(tmp_path, channel, f'[gnss]\nport = "{path}"\n{GNSS}{PRIVACY}{IGNITION}')
    with ExitStack() as stack:
        agent, seen = stack.enter_context(running(cfg, dry_run=True))
        car = stack.enter_context(car_bus(channel))

        def source_opens() -> int:
            src = agent.location.source if agent.location is not None else None
            return int(getattr(src, "opens", 0))

        def drive(seconds: range) -> None:
            for i in seconds:
                os.write(master, epoch("GN", i, *position(i)))

        def parked() -> None:
            assert open_on(path) == 1  # only the test's end: the agent closed the port
            drive(range(60, 70))  # never read: discarded when the port opens again

        def woken() -> None:
            opens[0] += 1
            wait_for(lambda: source_opens() == opens[0] and open_on(path) == 2, WAIT, "port open")

        opens = [0]
        assert open_on(path) == 1  # not opened before the lifecycle's first decision
        _park_and_wake(agent, car, lambda: seen, drive, parked, woken)
        assert not [p for p in _seconds(seen) if 60 <= p[0] < 100]


def test_a_parked_car_ends_the_gpsd_watch_and_a_wake_watches_again(tmp_path: Path) -> None:
    channel = new_channel()
    with ExitStack() as stack:
        gpsd = stack.enter_context(FakeGpsd())
        cfg = power_config(
            tmp_path,
            channel,
            f'[gnss]\nsource = "gpsd"\nport = {gpsd.port}\n{GNSS}{PRIVACY}{IGNITION}',
        )
        agent, seen = stack.enter_context(running(cfg, dry_run=True))
        car = stack.enter_context(car_bus(channel))

        def drive(seconds: range) -> None:
            for i in seconds:
                gpsd.send(tpv(i, *position(i)))

        def parked() -> None:
            wait_for(lambda: gpsd.watching == 0, WAIT, "the watch ended")
            assert gpsd.watches[-1] == {"enable": False}

        def woken() -> None:
            wait_for(lambda: gpsd.watching == 1, WAIT, "a watch")

        _park_and_wake(agent, car, lambda: seen, drive, parked, woken)
        assert gpsd.connections == 2


def test_a_parked_car_switches_the_modems_engine_off_before_the_radio(
    tmp_path: Path, broker: Mosquitto
) -> None:
    script = GnssScript("quectel", mode="nofix")
    gnss = f'[gnss]\nsource = "at"\nmodem = "a"\npoll_interval = 0.05\n{GNSS}{PRIVACY}'
    with ExitStack() as stack:
        rig = stack.enter_context(
            modem_car(tmp_path, broker.port, gnss + IGNITION + "park_upload = 1\n", gnss=script)
        )
        sim, calls = rig.sim, rig.calls
        sub = stack.enter_context(Subscriber(broker, DATA_TOPIC, client_id="sub-gnss"))
        agent, _ = stack.enter_context(running(rig.cfg, dry_run=False))
        car = stack.enter_context(car_bus(rig.channel))
        during: list[str] = []

        def drive(seconds: range) -> None:
            # The modem answers along its track as it is polled (one second per point), "no
            # fix" past its end. The step first: a poll between the two finds the old track
            # ended, never a point of the new one from the old step (a second of the park).
            script.step = seconds.start
            script.track = tuple(position(i) for i in range(seconds.stop))
            script.mode = "fix"
            wait_for(lambda: script.step == seconds.stop, WAIT, "the track polled")

        def parked() -> None:
            # The sleep command runs last: every park action is done by then.
            wait_for(lambda: sleep_calls(calls) == 1, WAIT, "the sleep command")
            assert not script.engine_on
            cmds = list(sim.commands)
            off = cmds.index("AT+QGPSEND")
            assert off < max(i for i, c in enumerate(cmds) if c == "AT+CFUN=4")
            during.extend(cmds[off:])

        def woken() -> None:
            enables[0] += 1
            wait_for(lambda: script.enables == enables[0], WAIT, "the engine switched on")

        enables = [0]

        _park_and_wake(
            agent, car, lambda: decoded(sub.messages, agent.catalog.schema), drive, parked, woken
        )
        # Parked (from the engine switched off to the sleep command), no position query.
        assert "AT+QGPSLOC=2" not in during
