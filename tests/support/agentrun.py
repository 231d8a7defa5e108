"""Helpers to write configs and run the real agent: its CLI as a subprocess, or its ``Agent``
in a thread of this process (so python-can's ``virtual`` bus can feed it)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, load_config
from agent.daemon import Agent, RunResult, effective_config, prepare
from agent.errors import ConfigError

VIN = "WVWZZZ1JZXW000001"

# A config that loads: a live bus and a replayed one, both with the demo DBC (paths relative
# to the config's folder, not read by loading). Config tests add or break a key of it.
GOOD_CONFIG = """
[vehicle]
vin = "WVWZZZ1JZXW000001"

[[bus]]
name = "powertrain"
interface = "socketcan"
channel = "vcan0"
dbc = ["dbc/demo_vehicle.dbc"]

[[bus]]
name = "recorded"
interface = "replay"
log = "drive.log"
speed = 0
dbc = ["dbc/demo_vehicle.dbc"]
"""


def write_config(path: Path, buses: list[dict[str, Any]], extra: str = "") -> Path:
    lines = ["[vehicle]", f'vin = "{VIN}"', ""]
    for bus in buses:
        lines.append("[[bus]]")
        for key, value in bus.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and lists are TOML
        lines.append("")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def zones_toml(zones: Iterable[dict[str, Any]]) -> str:
    """Privacy zones (name, lat, lon, radius) as the inline tables of ``zones = [...]``."""
    return ", ".join(
        f'{{name = "{z["name"]}", lat = {z["lat"]!r}, lon = {z["lon"]!r}, radius = {z["radius"]}}}'
        for z in zones
    )


def load_text(tmp_path: Path, text: str) -> Config:
    """The config of ``text``, written to agent.toml in ``tmp_path`` (relative paths resolve
    there) and loaded as `check` and `run` load it."""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_config(path)


def config_problems(tmp_path: Path, text: str) -> list[str]:
    """The problems the config of ``text`` is refused with (exit code 2), one line each."""
    with pytest.raises(ConfigError) as exc:
        load_text(tmp_path, text)
    assert exc.value.exit_code == 2
    return list(exc.value.problems)


def cli(
    *args: str, timeout: float = 300, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``spime-agent ARGS`` as a subprocess of this Python."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=stdin is None,
        input=stdin,
        timeout=timeout,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Running:
    """The real ``Agent`` of the config at ``cfg_path`` in a thread: started on enter (or
    ``start``), stopped on exit (or ``stop``, which waits for the run to end). A dry run
    collects the JSON of each update in ``updates``; ``effective``: the config as the CLI runs
    it, with the consent changed remotely and kept on the box laid over the file's."""

    def __init__(self, cfg_path: Path, *, dry_run: bool = True, effective: bool = False) -> None:
        base = load_config(cfg_path)
        cfg = effective_config(base) if effective else base
        self.updates: list[dict[str, Any]] = []
        on_json = self.updates.append if dry_run else None
        base_cfg = base if effective else None
        self.agent = Agent(cfg, prepare(cfg), dry_run=dry_run, on_json=on_json, base_cfg=base_cfg)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.result: RunResult | None = None

    def _run(self) -> None:
        self.result = self.agent.run()

    def samples(self) -> list[tuple[float, str, Any]]:
        return [(s["t"], s["signal"], s["value"]) for u in list(self.updates) for s in u["samples"]]

    def start(self) -> Agent:
        self.thread.start()
        return self.agent

    def stop(self, timeout: float = 30.0) -> None:
        self.agent.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive()

    def __enter__(self) -> Running:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
