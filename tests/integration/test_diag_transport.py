"""The ``isotp`` key of ``[[diagnostics]]`` where the kernel has no ISO-TP sockets (this host has
no SocketCAN; the kernel's transport itself is tested in tests/vcan): ``auto`` falls back to
can-isotp in user space, ``kernel`` is refused with a clear error naming the bus, ``user`` is
user space everywhere. Also the frame count the kernel transport charges to the load cap,
checked against can-isotp's own segmentation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import isotp
import pytest

from agent.config import BusConfig, load_config
from agent.diag.client import CATEGORIES, Asking
from agent.diag.link import PADDING, message_frames
from agent.diag.poller import DiagPoller
from agent.diag.settings import DiagnosticsConfig
from agent.diag.transport import choose, kernel_isotp_problem
from tests.support.agentrun import cli, write_config
from tests.support.wait import wait_for

DBC = 'VERSION ""\n\nBS_:\n\nBU_:\n'


@pytest.fixture
def no_kernel_isotp() -> None:
    if kernel_isotp_problem(None) is None:
        pytest.skip("this system has kernel ISO-TP sockets (tests/vcan covers it)")


def _bus(tmp_path: Path, interface: str, channel: str) -> BusConfig:
    (tmp_path / "empty.dbc").write_text(DBC)
    return BusConfig(name="pt", interface=interface, channel=channel, dbc=[tmp_path / "empty.dbc"])


def _diag(isotp_key: str) -> DiagnosticsConfig:
    return DiagnosticsConfig.model_validate(
        {"bus": "pt", "isotp": isotp_key, "obd_pids": {"0D": 1.0}, "timeout": 0.2}
    )


def test_auto_falls_back_to_user_space(
    tmp_path: Path, no_kernel_isotp: None, caplog: pytest.LogCaptureFixture
) -> None:
    socketcan = _bus(tmp_path, "socketcan", "can0")
    kind, why = choose(_diag("auto"), socketcan)
    assert kind == "user" and why is not None and "Errno" in why
    assert choose(_diag("auto"), _bus(tmp_path, "virtual", "x")) == (
        "user",
        "interface 'virtual' is not socketcan",
    )
    assert choose(_diag("user"), socketcan) == ("user", None)
    # The poller on that bus opens the user-space link (which then fails like any bus here).
    caplog.set_level(logging.INFO, logger="agent.diag.transport")
    p = DiagPoller(
        _diag("auto"),
        socketcan,
        prefix="",
        emit=lambda _: None,
        gate=lambda: None,
        asking=Asking(CATEGORIES),
    )
    assert p.status()["isotp"] == "auto"
    p.start()
    try:
        wait_for(lambda: p.status()["bus_errors"] >= 1, 20, "the bus error")
    finally:
        p.stop()
    assert p.status()["isotp"] == "auto"  # nothing opened: no transport to name yet
    assert "kernel ISO-TP not available" in caplog.text and "user space" in caplog.text


def test_kernel_on_a_bus_that_is_not_socketcan_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "pt", "interface": "virtual", "channel": "x", "dbc": ["car.dbc"]}],
        extra='[[diagnostics]]\nbus = "pt"\nisotp = "kernel"\n',
    )
    r = cli("check", "--config", str(cfg), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert 'diagnostics[0].isotp: "kernel" needs a socketcan bus' in r.stderr
    assert "bus 'pt'" in r.stderr and "'virtual'" in r.stderr
    for key in ("auto", "user"):
        other = cfg.with_name(f"{key}.toml")
        other.write_text(cfg.read_text().replace('isotp = "kernel"', f'isotp = "{key}"'))
        assert load_config(other).diagnostics[0].isotp == key


def test_kernel_without_kernel_isotp_is_refused_at_start(
    tmp_path: Path, no_kernel_isotp: None
) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "pt", "interface": "socketcan", "channel": "can0", "dbc": ["car.dbc"]}],
        extra='[[diagnostics]]\nbus = "pt"\nisotp = "kernel"\n',
    )
    r = cli("run", "--config", str(cfg), "--dry-run", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "[[diagnostics]] bus 'pt': isotp = \"kernel\"" in r.stderr
    assert "no kernel ISO-TP sockets" in r.stderr


@pytest.mark.parametrize("size", [*range(1, 40), 62, 63, 64, 100, 255, 4095])
def test_message_frames_match_can_isotp_segmentation(size: int) -> None:
    sent: list[Any] = []
    flow_control = isotp.CanMessage(arbitration_id=0x7E8, data=bytes([0x30, 0, 0]) + bytes(5))
    inbox = [flow_control]
    layer = isotp.TransportLayerLogic(
        rxfn=lambda _timeout: inbox.pop() if inbox and sent else None,
        txfn=sent.append,
        address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=0x7E0, rxid=0x7E8),
        params={"tx_padding": PADDING},
    )
    layer.send(bytes(size))
    for _ in range(1000):
        layer.process()
        if not layer.transmitting():
            break
    assert not layer.transmitting()
    assert all(len(m.data) == 8 for m in sent)  # padded, as the kernel pads
    assert len(sent) == message_frames(size)
