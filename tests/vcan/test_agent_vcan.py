"""The agent on real SocketCAN (vcan): kernel filters, CAN FD, a link going down and up,
canplayer replaying a recorded drive, and the daemon's whole path to a broker and listen."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import can
import cantools
import pytest

from tests.support.agentrun import VIN, Running, json_lines, write_config
from tests.support.data import DEMO_DBC, SPEED_FD_DBC, cantools_changes, make_demo_drive
from tests.support.wait import wait_for


def _config(tmp_path: Path, channel: str, **bus: object) -> Path:
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    return write_config(
        tmp_path / "agent.toml",
        [
            {
                "name": "pt",
                "interface": "socketcan",
                "channel": channel,
                "dbc": ["car.dbc"],
                "fd": True,
                **bus,
            }
        ],
        extra="[updates]\nmax_age = 0.05\n",
    )


@pytest.mark.parametrize("mode", ["off", "bcm"])
def test_kernel_filters_and_can_fd_on_vcan(
    tmp_path: Path, canfd_link: str, open_bus, mode: str
) -> None:
    with Running(_config(tmp_path, canfd_link, change_detection=mode)) as run:
        wait_for(lambda: run.agent.pipeline.source_states()["pt"] == "up", what="bus up")
        car = open_bus()
        car.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
        car.send(
            can.Message(
                arbitration_id=0x100, data=bytes([0x10, 0x27]) + bytes(6), is_extended_id=False
            )
        )
        car.send(
            can.Message(
                arbitration_id=0x18FEF1FE,
                is_fd=True,
                bitrate_switch=True,
                data=bytes(12) + (7).to_bytes(4, "little"),
                is_extended_id=True,
            )
        )
        wait_for(lambda: len(run.samples()) >= 2, what="two samples")
        stats = run.agent.pipeline.stats
    assert [(s, v) for _, s, v in run.samples()] == [("Engine.Speed", 100.0), ("Fd.Wide", 7)]
    # 0x123 was dropped by the kernel filter (or never watched): the agent never saw it.
    assert stats.decoded == 2 and stats.unselected == 0


@pytest.mark.parametrize("mode", ["off", "bcm"])
def test_link_down_is_reported_and_recovery_is_automatic(
    tmp_path: Path, scratch_vcan, open_bus, mode: str
) -> None:
    name = scratch_vcan.name
    cfg = _config(
        tmp_path,
        name,
        fd=False,
        silent_after=0.3,
        reopen_min=0.1,
        reopen_max=0.2,
        change_detection=mode,
    )
    with Running(cfg) as run:
        states = run.agent.pipeline.source_states
        # Nothing is sent yet: after silent_after (0.3 s) an open link with no traffic is
        # "silent", never "down" (the interface is up).
        wait_for(lambda: states()["pt"] == "silent", what="open and silent")
        scratch_vcan.set("down")
        wait_for(lambda: states()["pt"] == "down", what="reported down")
        scratch_vcan.set("up")
        car = open_bus(channel=name)
        wait_for(lambda: states()["pt"] == "silent", what="back (silent) after link up")
        car.send(
            can.Message(arbitration_id=0x100, data=bytes([1, 0]) + bytes(6), is_extended_id=False)
        )
        wait_for(lambda: run.samples() != [], what="frames flow again")
        # "up" lasts silent_after after the frame: a loaded machine may read it late.
        assert states()["pt"] in ("up", "silent")


def test_canplayer_recording_arrives_with_cantools_values(
    tmp_path: Path, canfd_link: str, canplayer: str
) -> None:
    log = make_demo_drive(tmp_path / "drive.log", 4)
    cfg = write_config(
        tmp_path / "agent.toml",
        [
            {
                "name": "car",
                "interface": "socketcan",
                "channel": canfd_link,
                "dbc": [str(DEMO_DBC)],
                "fd": True,
            }
        ],
        extra="[updates]\nmax_age = 0.1\nsnapshot_interval = 0\n",
    )
    with Running(cfg) as run:
        wait_for(lambda: run.agent.pipeline.source_states()["car"] == "up", what="bus up")
        subprocess.run([canplayer, "-I", str(log), f"{canfd_link}=can0"], check=True, timeout=120)
        db = cantools.database.load_file(str(DEMO_DBC))
        expected = {k: [v for _, v in s] for k, s in cantools_changes(log, db).items()}
        total = sum(len(v) for v in expected.values())
        wait_for(lambda: len(run.samples()) >= total, timeout=60, what="every change")
    got: dict[str, list[object]] = {}
    for _, name, value in run.samples():
        got.setdefault(name, []).append(value)
    assert got == expected
    assert sum(s.status.dropped_frames for s in run.agent.pipeline.sources) == 0


def test_daemon_path_vcan_to_broker_to_listen(
    tmp_path: Path, vcan0: str, open_bus, mosquitto
) -> None:
    cfg = _config(tmp_path, vcan0)
    cfg.write_text(
        cfg.read_text() + f'[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
        '[outbox]\npath = "outbox.db"\ncommit_interval = 0.05\n'
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
    )
    listen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "listen",
            "--port",
            str(mosquitto.port),
            "--vin",
            VIN,
            "--count",
            "1",
            "--timeout",
            "120",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        car = open_bus()
        # Send until the agent is up and the listener got the update (both start in parallel).
        deadline = time.monotonic() + 120
        speed = 1000
        while listen.poll() is None and time.monotonic() < deadline:
            speed += 1
            car.send(
                can.Message(
                    arbitration_id=0x100,
                    data=speed.to_bytes(2, "little") + bytes(6),
                    is_extended_id=False,
                )
            )
            time.sleep(0.2)
        out, err = listen.communicate(timeout=30)
        assert listen.returncode == 0, err
        (update,) = json_lines(out)
        assert update["vin"] == VIN
        assert update["samples"][0]["signal"] == "Engine.Speed"
        assert 10.0 < update["samples"][0]["value"] < 20.0
    finally:
        agent.send_signal(signal.SIGTERM)
        _, agent_err = agent.communicate(timeout=60)
    assert agent.returncode == 0, agent_err


# A stdlib sender that writes frames as fast as the kernel takes them, until killed: far faster
# than the agent's python-can reader, so the agent's receive buffer overflows.
_FLOOD = """
import errno, socket, struct, sys
s = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
s.bind((sys.argv[1],))
i = 0
while True:
    try:
        s.send(struct.pack("=IB3x8s", 0x100, 8, i.to_bytes(8, "little")))
        i += 1
    except OSError as err:
        if err.errno != errno.ENOBUFS:  # ENOBUFS: the sender's own queue is full, try again
            raise
"""


@pytest.mark.parametrize("mode", ["off", "bcm"])
def test_frames_the_kernel_drops_from_a_full_receive_buffer_are_counted(
    tmp_path: Path, scratch_vcan, caplog, mode: str
) -> None:
    # Each frame changes Engine.Speed: with change detection, each is a notification too. A
    # bus name per mode: the warning is rate-limited per bus name, process-wide.
    name = f"pt-{mode}"
    cfg = _config(tmp_path, scratch_vcan.name, fd=False, change_detection=mode, name=name)
    with Running(cfg) as run:
        wait_for(lambda: run.agent.pipeline.source_states()[name] == "up", what="bus up")
        assert run.agent.status()["pipeline"]["kernel_dropped"] == 0
        flood = subprocess.Popen([sys.executable, "-c", _FLOOD, scratch_vcan.name])
        try:
            wait_for(
                lambda: run.agent.status()["pipeline"]["kernel_dropped"] > 0,
                timeout=120,
                what="kernel drops in the status",
            )
        finally:
            flood.kill()
            flood.wait(10)
        # The reader outpaces the pipeline here: let it work off its queue before stopping.
        wait_for(run.agent.pipeline.queue.empty, timeout=120, what="the queue worked off")
        counters = run.agent.status()["pipeline"]
        assert counters["dropped_frames"] >= counters["kernel_dropped"] > 0
        assert counters["frames"] > 0  # the bus kept being read
    assert any("the kernel dropped" in r.getMessage() for r in caplog.records)
