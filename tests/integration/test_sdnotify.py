"""systemd notify protocol against a real datagram socket: READY once the agent is set up,
STATUS lines, watchdog pings from the running pipeline, STOPPING at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.agentrun import write_config
from tests.support.data import DEMO_DBC


def test_ready_status_watchdog_and_stopping_reach_systemd(tmp_path: Path, demo_drive: Path) -> None:
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    sock.settimeout(60)
    cfg = write_config(
        tmp_path / "agent.toml",
        [
            {
                "name": "car",
                "interface": "replay",
                "log": str(demo_drive),
                "dbc": [str(DEMO_DBC)],
                "speed": 20,
            }
        ],
        extra="[status]\ninterval = 0.2\n",
    )
    env = {**os.environ, "NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--dry-run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        while not any("STOPPING=1" in m for m in seen):
            seen.append(sock.recv(4096).decode())
    finally:
        proc.wait(timeout=60)
        sock.close()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    ready = next(i for i, m in enumerate(seen) if "READY=1" in m)
    assert any("WATCHDOG=1" in m for m in seen[ready:])
    assert any(m.startswith("STATUS=") and "car:" in m for m in seen[ready:])
    assert not any("WATCHDOG=1" in m for m in seen[:ready])
