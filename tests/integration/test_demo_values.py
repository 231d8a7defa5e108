"""The demo drive through the real CLI: every value equals cantools' own decoding (multiplexed,
CAN FD, big-endian, float32/64, value tables), snapshots resynchronise, and a backend needs
nothing but agent.spime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.decode import load_dbc
from tests.support.agentrun import cli, json_lines, write_config
from tests.support.data import DEMO_DBC, REPO, cantools_changes


def _run(tmp_path: Path, demo_drive: Path, updates: str) -> list[dict]:
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": str(demo_drive), "dbc": [str(DEMO_DBC)]}],
        extra=f"[updates]\n{updates}\n",
    )
    r = cli("run", "--config", str(cfg), "--dry-run")
    assert r.returncode == 0, r.stderr
    return json_lines(r.stdout)


def test_demo_drive_values_equal_cantools(tmp_path: Path, demo_drive: Path) -> None:
    updates = _run(tmp_path, demo_drive, "snapshot_interval = 0")
    got: dict[str, list[tuple[int, object]]] = {}
    for u in updates:
        for s in u["samples"]:
            got.setdefault(s["signal"], []).append((round(s["t"] * 1000), s["value"]))
    expected = cantools_changes(demo_drive, load_dbc(DEMO_DBC).db)
    for series in (*got.values(), *expected.values()):
        series.sort(key=lambda x: x[0])
    assert got == expected
    # The drive exercises the interesting kinds of signal.
    for name in (
        "BMS_CellVoltages.Cell001",
        "BMS_CellTemps.CellTemp01",
        "GNSS_Course.Heading",
        "GNSS_Altitude.Altitude",
        "ESP_WheelSpeeds.WheelSpeedFL",
        "TCM_Transmission.GearLever",
    ):
        assert any(k.startswith(name.split(".")[0]) for k in got), name


def test_snapshots_carry_every_signal_seen(tmp_path: Path, demo_drive: Path) -> None:
    updates = _run(tmp_path, demo_drive, "snapshot_interval = 20")
    snaps = [u for u in updates if u["snapshot"]]
    assert len(snaps) >= 2
    seen_before: set[str] = set()
    for u in updates:
        if u["snapshot"]:
            assert {s["signal"] for s in u["samples"]} >= seen_before
        else:
            seen_before |= {s["signal"] for s in u["samples"]}
    seqs = [u["seq"] for u in updates]
    assert seqs == list(range(1, len(seqs) + 1))


def test_backend_decoder_needs_only_the_standard_library() -> None:
    code = (
        "import sys, agent.spime\n"
        "bad = [m for m in ('can', 'cantools', 'paho', 'serial', 'pydantic', 'agent.config')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
