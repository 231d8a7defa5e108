"""Diagnostics over python-can's virtual bus: the poller against simulated ECUs (can-isotp's
user-space ISO-TP on both sides), single and multi-frame answers, several ECUs, response
pending, a silent ECU, UDS DTC reads, DTCs set and cleared."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import BusConfig
from agent.diag.client import CATEGORIES, Asking
from agent.diag.obd import MAX_PIDS_PER_REQUEST
from agent.diag.poller import DiagPoller
from agent.diag.settings import DiagnosticsConfig
from agent.diag.signals import DTC_CATEGORY, PID_CATEGORY
from tests.support.ecusim import Ecu, EcuSim, ReadingLog, RequestLog
from tests.support.wait import wait_for

_channels = itertools.count()


@pytest.fixture
def channel() -> str:
    return f"diag-{next(_channels)}"


def bus_cfg(tmp_path: Path, channel: str) -> BusConfig:
    dbc = tmp_path / "empty.dbc"
    dbc.write_text('VERSION ""\n\nBS_:\n\nBU_:\n')
    return BusConfig(name="car", interface="virtual", channel=channel, dbc=[dbc])


@pytest.fixture
def poller_of(tmp_path: Path, channel: str) -> Iterator[Any]:
    started: list[DiagPoller] = []

    def make(
        gate: Any = lambda: None, asking: Asking | None = None, **diag: Any
    ) -> tuple[DiagPoller, ReadingLog]:
        got = ReadingLog()
        cfg = DiagnosticsConfig.model_validate({"bus": "car", "timeout": 0.5, **diag})
        p = DiagPoller(
            cfg,
            bus_cfg(tmp_path, channel),
            prefix="",
            emit=got,
            gate=gate,
            asking=asking or Asking(CATEGORIES),
        )
        p.start()
        started.append(p)
        return p, got

    yield make
    for p in started:
        p.stop()


def test_pids_from_two_ecus_multi_frame_and_never_unsupported(channel: str, poller_of: Any) -> None:
    engine = Ecu(0x7E8, pids={0x0C: 3200, 0x0D: 87, 0x05: 130, 0x2F: 200, 0xA6: 1234567})
    gearbox = Ecu(0x7E9, pids={0x0D: 88, 0x0F: 70, 0x42: 13800})
    with EcuSim([engine, gearbox], interface="virtual", channel=channel):
        wanted = {"0C": 0.2, "0D": 0.2, "05": 0.2, "2F": 0.2, "A6": 0.2, "0F": 0.2, "42": 0.2}
        wanted["11"] = 0.2  # throttle: no ECU has it
        p, got = poller_of(obd_pids=wanted, dtc_interval=0)
        wait_for(lambda: len(got.values("OBD.Odometer")) >= 2, 20, "odometer twice")
        wait_for(lambda: got.values("OBD.ControlModuleVoltage"), 20, "voltage from the 2nd ECU")
    assert got.values("OBD.EngineSpeed")[0] == 3200
    # The speed comes from the lowest ECU that supports it, never from both.
    assert set(got.values("OBD.VehicleSpeed")) == {87}
    assert got.values("OBD.IntakeAirTemperature")[0] == 70
    assert p.status()["unsupported"] == ["11"]
    for ecu in (engine, gearbox):
        mode01 = [r for r in ecu.asked if r[0] == 0x01]
        assert all(len(r) - 1 <= MAX_PIDS_PER_REQUEST for r in mode01)
        assert not any(0x11 in r[1:] for r in mode01)
    assert p.status()["ecus"] == ["7E8", "7E9"]
    assert p.status()["isotp"] == "user"  # auto, on a python-can virtual bus


def test_dtcs_set_and_cleared_pending_answers_and_a_silent_ecu(
    channel: str, poller_of: Any
) -> None:
    engine = Ecu(0x7E8, pids={0x0D: 50}, dtcs={0x03: [0x0301], 0x07: [0x0420]}, pending=1)
    body = Ecu(0x7EA, pids={0x0D: 1}, dtcs={0x03: [0xC100]})
    mute = Ecu(0x7EB, silent=True)
    with EcuSim([engine, body, mute], interface="virtual", channel=channel):
        p, got = poller_of(obd_pids={"0D": 5.0}, dtc_interval=0.3)
        wait_for(lambda: got.codes("OBD.DTC.Stored.Set"), 20, "stored DTCs")
        wait_for(lambda: len(got.codes("OBD.DTC.Stored.Set")) >= 2, 20, "both ECUs' DTCs")
        engine.dtcs = {0x03: [], 0x07: [0x0420]}
        wait_for(lambda: got.codes("OBD.DTC.Stored.Cleared"), 20, "cleared DTC")
    assert set(got.codes("OBD.DTC.Stored.Set")) == {("P0301", 0x7E8), ("U0100", 0x7EA)}
    assert got.codes("OBD.DTC.Pending.Set") == [("P0420", 0x7E8)]
    assert got.codes("OBD.DTC.Stored.Cleared") == [("P0301", 0x7E8)]
    st = p.status()
    assert st["pending"] >= 1
    assert "7EB" not in st["ecus"]  # never answered


def test_uds_dtcs_with_status_mask_pending_and_a_silent_ecu(channel: str, poller_of: Any) -> None:
    ecm = Ecu(0x7E8, uds_dtcs={0x030100: 0x08, 0x123456: 0x10, 0xC10087: 0x04}, pending=2)
    bcm = Ecu(0x7EC, silent=True)
    with EcuSim([ecm, bcm], interface="virtual", channel=channel):
        p, got = poller_of(
            obd_dtcs=False,
            dtc_interval=0.5,
            uds_ecus=[
                {"name": "ecm", "tx": 0x7E0, "rx": 0x7E8},
                {"name": "bcm", "tx": 0x7E4, "rx": 0x7EC},
            ],
        )
        wait_for(lambda: got.codes("UDS.DTC.Set"), 20, "UDS DTCs")
        wait_for(lambda: p.status()["timeouts"] >= 1, 20, "the silent ECU counted")
        result = p.read_dtcs_now(10)
    assert set(got.codes("UDS.DTC.Set")) == {("P0301", 0x7E8), ("U0100-87", 0x7E8)}
    assert result == {"ecm": {"uds": ["P0301", "U0100-87"]}}
    assert p.status()["pending"] >= 2


def test_29bit_addressing(channel: str, poller_of: Any) -> None:
    engine = Ecu(0x18DAF110, pids={0x0C: 4000, 0xA6: 99}, dtcs={0x03: [0x0301]})
    with EcuSim([engine], interface="virtual", channel=channel, extended=True):
        p, got = poller_of(addressing="29bit", obd_pids={"0C": 0.2, "A6": 0.2}, dtc_interval=1)
        wait_for(lambda: got.values("OBD.Odometer"), 20, "odometer")
        wait_for(lambda: got.codes("OBD.DTC.Stored.Set"), 20, "DTC")
    assert got.values("OBD.EngineSpeed")[0] == 4000
    assert got.codes("OBD.DTC.Stored.Set") == [("P0301", 0x18DAF110)]


def test_nothing_is_asked_while_the_gate_is_closed(channel: str, poller_of: Any) -> None:
    engine = Ecu(0x7E8, pids={0x0D: 50})
    closed = threading.Event()
    closed.set()
    with EcuSim([engine], interface="virtual", channel=channel):
        p, got = poller_of(gate=lambda: "parked" if closed.is_set() else None, obd_pids={"0D": 0.1})
        wait_for(lambda: p.status()["state"] == "paused: parked", 10, "paused")
        assert p.read_dtcs_now(5) == "not reading: parked"
        assert engine.asked == []
        closed.clear()
        wait_for(lambda: got.values("OBD.VehicleSpeed"), 20, "speed once awake")


def _grant(asking: Asking, *categories: str) -> None:
    """As the agent grants: decided, then in force once the schema has the signals."""
    asking.decided(frozenset(categories))
    asking.in_force(frozenset(categories))


def test_consent_changes_start_and_stop_requests_at_once(channel: str, poller_of: Any) -> None:
    ecm = Ecu(0x7E8, pids={0x0D: 50, 0xA6: 1234}, dtcs={0x03: [0x0301]}, uds_dtcs={0x030100: 8})
    asking = Asking(frozenset())
    with EcuSim([ecm], interface="virtual", channel=channel), RequestLog(channel) as bus:
        p, got = poller_of(
            asking=asking,
            obd_pids={"0D": 0.1, "A6": 0.1},
            dtc_interval=0.2,
            uds_ecus=[{"name": "ecm", "tx": 0x7E0, "rx": 0x7E8}],
            max_bus_load=0.05,
        )
        wait_for(lambda: p.status()["state"] == "not asking: no consent", 10, "no consent")
        with pytest.raises(PermissionError):
            p.read_dtcs_now(5)
        # DTCs only: the ECUs are found (bitmap 0x00 only), DTC lists read, no PID value asked.
        _grant(asking, DTC_CATEGORY)
        wait_for(lambda: got.codes("OBD.DTC.Stored.Set") and got.codes("UDS.DTC.Set"), 20, "DTCs")
        assert set(bus.categories()) == {"discovery", DTC_CATEGORY}
        assert [r for r in bus.after(0) if r[:1] == b"\x01"] == [bytes([1, 0])]
        # PIDs too: discovery now covers A6 (bitmaps up to 0xA0), then the values come.
        _grant(asking, DTC_CATEGORY, PID_CATEGORY)
        wait_for(lambda: got.values("OBD.Odometer"), 20, "odometer")
        assert bytes([1, 0xA0]) in bus.after(0)
        # DTCs revoked: not one DTC request after decided() returned, while PIDs go on.
        asking.decided(frozenset({PID_CATEGORY}))
        mark = bus.mark()
        with pytest.raises(PermissionError):
            p.read_dtcs_now(5)
        wait_for(lambda: bus.categories(mark).count(PID_CATEGORY) >= 10, 20, "PIDs go on")
        assert set(bus.categories(mark)) == {PID_CATEGORY}
        # Granted again: every code present is reported again, as at start.
        _grant(asking, DTC_CATEGORY, PID_CATEGORY)
        wait_for(lambda: len(got.codes("OBD.DTC.Stored.Set")) == 2, 20, "DTCs again")
