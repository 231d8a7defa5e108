"""Diagnostics inside the agent (virtual bus, in-process): PID values and DTC events arrive
decoded in the updates beside the broadcast signals, which lose no frame meanwhile; consent
decides what is asked, also when it changes remotely while running; the status shows the
counters."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from agent.spime import decode_samples, peek_schema_id
from tests.support.agentrun import VIN, Running, write_config
from tests.support.broker import Subscriber
from tests.support.data import SPEED_FD_DBC
from tests.support.ecusim import Ecu, EcuSim, RequestLog
from tests.support.power import frame
from tests.support.wait import wait_for


@pytest.fixture()
def channel() -> str:
    return f"spime-diag-{uuid.uuid4().hex[:8]}"


def _config(tmp_path: Path, channel: str, extra: str = "") -> Path:
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    return write_config(
        tmp_path / "agent.toml",
        [{"name": "pt", "interface": "virtual", "channel": channel, "dbc": ["car.dbc"]}],
        extra="[updates]\nmax_age = 0.05\n\n"
        '[[diagnostics]]\nbus = "pt"\nobd_pids = { "0D" = 0.2, "0C" = 0.1, "A6" = 0.3 }\n'
        'obd_names = { "0D" = "Vehicle.Speed" }\n'
        "dtc_interval = 0.3\ntimeout = 0.5\n"
        'uds_ecus = [{ name = "ecm", tx = 0x7E0, rx = 0x7E8 }]\n' + extra,
    )


def _dtcs(run: Running) -> list[tuple[str, Any, Any]]:
    return [
        (s["signal"], s["value"], s.get("ecu"))
        for u in list(run.updates)
        for s in u["samples"]
        if "DTC" in s["signal"]
    ]


def test_pids_and_dtcs_arrive_decoded_and_no_broadcast_frame_is_lost(
    tmp_path: Path, channel: str
) -> None:
    ecm = Ecu(
        0x7E8,
        pids={0x0C: 3000, 0x0D: 72, 0xA6: 123456},
        dtcs={0x03: [0x0301]},
        uds_dtcs={0xC10087: 0x08},
        pending=1,
    )
    sent = 0
    with (
        EcuSim([ecm], interface="virtual", channel=channel),
        Running(_config(tmp_path, channel)) as run,
        can.Bus(interface="virtual", channel=channel, ignore_config=True) as car,
    ):

        def broadcast() -> None:
            nonlocal sent
            sent += 1
            frame(car, 0x100, sent)

        def have(name: str) -> bool:
            broadcast()
            return any(n == name for _, n, _ in run.samples())

        states = run.agent.pipeline.source_states
        wait_for(lambda: states()["pt"] == "up", 10, "bus up")
        wait_for(lambda: have("OBD.Odometer"), 30, "odometer")
        wait_for(lambda: have("UDS.DTC.Set"), 30, "UDS DTC")
        wait_for(lambda: have("OBD.DTC.Stored.Set"), 30, "OBD DTC")
        ecm.dtcs = {0x03: []}
        wait_for(lambda: have("OBD.DTC.Stored.Cleared"), 30, "cleared")
        wait_for(lambda: run.agent.pipeline.stats.frames >= sent, 10, "every broadcast frame")
        status = run.agent.status()
    values = {n: v for _, n, v in run.samples()}
    assert values["OBD.EngineSpeed"] == 750.0  # 3000 / 4 rpm
    assert values["Vehicle.Speed"] == 72
    assert values["OBD.Odometer"] == pytest.approx(12345.6)
    assert ("OBD.DTC.Stored.Set", "P0301", "ecm") in _dtcs(run)
    assert ("OBD.DTC.Stored.Cleared", "P0301", "ecm") in _dtcs(run)
    assert ("UDS.DTC.Set", "U0100-87", "ecm") in _dtcs(run)
    speeds = [v for _, n, v in run.samples() if n == "Engine.Speed"]
    # Every broadcast frame arrived once (events, DTCs here, may overtake older telemetry
    # updates on the way to the broker, so the order across updates is not compared).
    assert sorted(speeds) == [i * 0.01 for i in range(1, sent + 1)]
    diag = status["diagnostics"]["pt"]
    assert diag["state"] == "running" and diag["ecus"] == ["ecm"]
    assert diag["pending"] >= 1 and diag["dropped"] == 0
    assert 0 < diag["load"] <= diag["max_load"]


def test_consent_decides_what_is_asked(tmp_path: Path, channel: str) -> None:
    ecm = Ecu(0x7E8, pids={0x0C: 3000, 0x0D: 72, 0xA6: 1}, dtcs={0x03: [0x0301]})
    consent = '[consent]\ngranted = ["vehicle_health"]\ndefault_category = "vehicle_health"\n'
    with (
        EcuSim([ecm], interface="virtual", channel=channel),
        Running(_config(tmp_path, channel, consent)) as run,
    ):
        wait_for(lambda: any(n == "OBD.EngineSpeed" for _, n, _ in run.samples()), 30, "rpm")
        schema = {s.name for s in run.agent.catalog.schema.signals}
    assert "OBD.EngineSpeed" in schema and not any("DTC" in n for n in schema)
    assert not any(req[0] in (0x03, 0x07, 0x0A, 0x19) for req in ecm.asked)
    assert run.agent.catalog.excluded["no consent for diagnostics"] == 8


def _car_with_diagnostics(tmp_path: Path, broker: Any, grant: bool) -> Any:
    from tests.support.remotecar import Car

    car = Car(tmp_path, broker)
    text = car.config.read_text()
    if grant:
        text = text.replace(
            'granted = ["vehicle_health", "location"]',
            'granted = ["vehicle_health", "location", "diagnostics"]',
        )
    car.config.write_text(
        text + '[[diagnostics]]\nbus = "car"\ndtc_interval = 0\ntimeout = 0.5\n'
        'uds_ecus = [{ name = "ecm", tx = 0x7E0, rx = 0x7E8 }]\n'
    )
    return car


def test_diag_command_reads_dtcs_now(tmp_path: Path, broker: Any) -> None:
    car = _car_with_diagnostics(tmp_path, broker, grant=True)
    ecm = Ecu(0x7E8, pids={0x0D: 1}, dtcs={0x03: [0x0301], 0x07: [0x0420]}, uds_dtcs={0x030100: 8})
    with EcuSim([ecm], interface="virtual", channel=car.channel):
        car.start()
        try:
            rc, ans, err = car.command("diag")
        finally:
            car.stop()
    assert rc == 0, err
    assert ans is not None and ans["status"] == "ok"
    assert ans["result"] == {
        "car": {
            "ecm": {"stored": ["P0301"], "pending": ["P0420"], "permanent": [], "uds": ["P0301"]}
        }
    }


def test_diag_command_needs_the_owners_consent(tmp_path: Path, broker: Any) -> None:
    car = _car_with_diagnostics(tmp_path, broker, grant=False)
    ecm = Ecu(0x7E8, pids={0x0D: 1}, dtcs={0x03: [0x0301]})
    with EcuSim([ecm], interface="virtual", channel=car.channel):
        car.start()
        try:
            rc, ans, err = car.command("diag")
        finally:
            car.stop()
    assert rc == 1 and ans is not None and ans["status"] == "rejected", err
    assert "not_allowed" in ans["detail"]
    assert not any(req[0] in (0x03, 0x07, 0x0A, 0x19) for req in ecm.asked)


CONSENT_TOML = 'granted = ["vehicle_health", "location"]'


def _car_with_consent(tmp_path: Path, broker: Any, granted: list[str]) -> Any:
    """A car whose activation allows remote grants, with PIDs and DTCs configured, the owner
    having granted ``granted``."""
    from tests.support.remotecar import Car

    car = Car(tmp_path, broker, allow_grant=True)
    text = car.config.read_text()
    assert CONSENT_TOML in text
    car.config.write_text(
        text.replace(CONSENT_TOML, f"granted = {granted!r}".replace("'", '"'))
        + '[[diagnostics]]\nbus = "car"\nobd_pids = { "0D" = 0.1 }\n'
        "dtc_interval = 0.2\ntimeout = 0.5\nmax_bus_load = 0.05\n"
        'uds_ecus = [{ name = "ecm", tx = 0x7E0, rx = 0x7E8 }]\n'
    )
    return car


def _ecm() -> Ecu:
    return Ecu(0x7E8, pids={0x0D: 72}, dtcs={0x03: [0x0301]}, uds_dtcs={0x030100: 8})


@pytest.mark.parametrize(
    ("category", "other", "signal"),
    [
        ("diagnostics", "vehicle_health", "OBD.DTC.Stored.Set"),
        ("vehicle_health", "diagnostics", "OBD.VehicleSpeed"),
    ],
)
def test_a_remote_grant_starts_requests_and_a_revocation_stops_them(
    tmp_path: Path, broker: Any, category: str, other: str, signal: str
) -> None:
    """The other category keeps asking throughout: it shows the poller goes on."""
    from tests.support.e2e import PREFIX

    car = _car_with_consent(tmp_path, broker, ["location", other])
    with (
        EcuSim([_ecm()], interface="virtual", channel=car.channel),
        RequestLog(car.channel) as bus,
        Subscriber(broker, f"{PREFIX}/{VIN}/data") as data,
    ):
        agent = car.start()

        def samples() -> list[str]:
            names = []
            for m in data.messages:
                schema = agent.schemas.load(peek_schema_id(m.payload))
                assert schema is not None
                names += [
                    schema.by_id[sid].name for _, sid, _ in decode_samples(m.payload, schema)[1]
                ]
            return names

        try:
            wait_for(lambda: bus.categories().count(other) >= 5, 20, f"{other} requests")
            assert category not in bus.categories()
            rc, ans, err = car.command("consent", "--grant", category)
            assert rc == 0 and ans is not None and ans["status"] == "ok", err
            wait_for(lambda: signal in samples(), 20, f"{signal} samples")
            assert category in bus.categories()
            rc, ans, err = car.command("consent", "--revoke", category)
            assert rc == 0 and ans is not None and ans["status"] == "ok", err
            mark = bus.mark()
            # A DTC read is due every 0.2 s, a PID read every 0.1 s: 10 of the other kind
            # span several intervals of the revoked one.
            wait_for(lambda: bus.categories(mark).count(other) >= 10, 20, f"{other} goes on")
            assert category not in bus.categories(mark)
        finally:
            car.stop()


def test_no_request_without_consent_and_the_diag_command_follows_a_grant(
    tmp_path: Path, broker: Any
) -> None:
    car = _car_with_consent(tmp_path, broker, ["location"])
    with EcuSim([_ecm()], interface="virtual", channel=car.channel), RequestLog(car.channel) as bus:
        agent = car.start()
        try:
            state = lambda: agent.status()["diagnostics"]["car"]["state"]  # noqa: E731
            wait_for(lambda: state() == "not asking: no consent", 20, "idle without consent")
            rc, ans, err = car.command("diag")
            assert rc == 1 and ans is not None and ans["status"] == "rejected", err
            assert "not_allowed" in ans["detail"]
            assert bus.requests() == []
            rc, ans, err = car.command("consent", "--grant", "diagnostics")
            assert rc == 0, err
            rc, ans, err = car.command("diag")
            assert rc == 0 and ans is not None and ans["status"] == "ok", err
            assert ans["result"]["car"]["ecm"]["stored"] == ["P0301"]
            assert "vehicle_health" not in bus.categories()
        finally:
            car.stop()
