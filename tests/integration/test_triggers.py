"""Triggered captures on the replayed demo drive through the real CLI, checked against cantools'
own decoding of every frame: firing times, and every change of the captured signals inside
[t - before, t + after]; read-only signals; level triggers; broken conditions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from agent.catalog import build_catalog
from agent.config import load_config
from tests.support.agentrun import cli, json_lines, write_config
from tests.support.data import DEMO_DBC

DB = cantools.database.load_file(str(DEMO_DBC))


def _frames(log: Path) -> list[tuple[int, str, bytes, dict[str, Any], dict[str, Any]]]:
    """(t_ms, message, payload, raw values, physical values) of every decodable frame."""
    out = []
    by_id = {m.frame_id: m for m in DB.messages}
    for frame in can.LogReader(str(log)):
        msg = by_id.get(frame.arbitration_id)
        if msg is None or frame.is_error_frame or frame.is_remote_frame:
            continue
        data = bytes(frame.data)
        raw = msg.decode(data, decode_choices=False, scaling=False, allow_truncated=True)
        phys = msg.decode(data, allow_truncated=True)
        # Value-table labels as the agent reports them (the conditions here read no labels).
        phys = {k: str(v) if hasattr(v, "name") else v for k, v in phys.items()}
        out.append((int(frame.timestamp * 1000), msg.name, data, raw, phys))
    return out


def _run(tmp_path: Path, drive: Path, extra: str) -> list[dict[str, Any]]:
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": str(drive), "dbc": [str(DEMO_DBC)]}],
        extra=extra + "\n[updates]\nsnapshot_interval = 0\n",
    )
    r = cli("run", "--config", str(cfg), "--dry-run")
    assert r.returncode == 0, r.stderr
    return json_lines(r.stdout)


HARD_BRAKE = """
[[signal]]
match = "ECM_Engine2.*"

[[trigger]]
name = "hard_brake"
when = "ESP_VehicleDynamics.BrakePressure > 20 and abs(ESP_VehicleDynamics.YawRate) < 300"
min_interval = 5
before = 2
after = 1
capture = ["ESP_VehicleDynamics.*", "EPS_Steering.SteeringWheelAngle"]
"""


def test_captures_hold_every_change_in_their_window(tmp_path: Path, demo_drive: Path) -> None:
    updates = _run(tmp_path, demo_drive, HARD_BRAKE)
    frames = _frames(demo_drive)
    # Firing times as the condition's definition gives them, from cantools' values.
    fired: list[int] = []
    state, last = False, None
    for t, name, _, _, phys in frames:
        if name != "ESP_VehicleDynamics":
            continue
        now = phys["BrakePressure"] > 20 and abs(phys["YawRate"]) < 300
        if now and not state and (last is None or t - last >= 5000):
            fired.append(t)
            last = t
        state = now
    captures = [u for u in updates if "trigger" in u]
    assert len(fired) >= 2, "the drive must brake hard at least twice"
    assert [round(c["trigger"]["t"] * 1000) for c in captures] == fired
    captured = {
        f"ESP_VehicleDynamics.{s.name}"
        for s in DB.get_message_by_name("ESP_VehicleDynamics").signals
    } | {"EPS_Steering.SteeringWheelAngle"}
    # Every change of every captured signal, as cantools decodes the log.
    changes: list[tuple[int, str, Any]] = []
    last_raw: dict[str, Any] = {}
    for t, name, _, raw, phys in frames:
        for sig, value in raw.items():
            key = f"{name}.{sig}"
            if key in captured and last_raw.get(key) != value:
                last_raw[key] = value
                changes.append((t, key, phys[sig]))
    for cap in captures:
        t = round(cap["trigger"]["t"] * 1000)
        assert cap["trigger"]["name"] == "hard_brake"
        got = sorted((round(s["t"] * 1000), s["signal"], s["value"]) for s in cap["samples"])
        want = [c for c in changes if t - 2000 <= c[0] <= t + 1000]
        # Plus each signal's value in force when the window starts, with its own time.
        for key in captured:
            held = [c for c in changes if c[1] == key and c[0] < t - 2000][-1:]
            want += held
        assert got == sorted(want)
        assert any(s[0] < t for s in got) and any(s[0] > t for s in got)
    # The signals the condition reads are decoded but, outside captures, not sent.
    plain = {s["signal"] for u in updates if "trigger" not in u for s in u["samples"]}
    assert plain and all(name.startswith("ECM_Engine2.") for name in plain)


def test_level_trigger_repeats_after_min_interval_while_true(
    tmp_path: Path, demo_drive: Path
) -> None:
    extra = """
[[trigger]]
name = "fast"
when = "ESP_VehicleDynamics.VehicleSpeed > 40"
edge = "level"
min_interval = 10
capture = ["ESP_VehicleDynamics.VehicleSpeed"]
"""
    captures = [u for u in _run(tmp_path, demo_drive, extra) if "trigger" in u]
    expected: list[int] = []
    last_payload = None
    for t, name, data, _, phys in _frames(demo_drive):
        if name != "ESP_VehicleDynamics" or data == last_payload:
            continue
        last_payload = data
        if phys["VehicleSpeed"] > 40 and (not expected or t - expected[-1] >= 10000):
            expected.append(t)
    assert len(expected) >= 2
    assert [round(c["trigger"]["t"] * 1000) for c in captures] == expected


@pytest.mark.parametrize(
    ("when", "words"),
    [
        ("ESP_VehicleDynamics.BrakePressure >", "trigger[0].when: column 36: expected a number"),
        ("ESP_VehicleDynamics.BrakePressure > 1 < 2", "trigger[0].when: column 39: comparisons"),
        ("Nope.Signal > 1", "trigger[0].when: no signal named 'Nope.Signal'"),
    ],
)
def test_a_broken_condition_is_refused_naming_the_column(
    tmp_path: Path, demo_drive: Path, when: str, words: str
) -> None:
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": str(demo_drive), "dbc": [str(DEMO_DBC)]}],
        extra=f'[[trigger]]\nname = "t"\nwhen = "{when}"\ncapture = ["ESP_VehicleDynamics.*"]\n',
    )
    r = cli("run", "--config", str(cfg), "--dry-run")
    assert r.returncode != 0
    assert str(cfg) in r.stderr and words in r.stderr
    assert r.stdout == ""


def test_consent_bounds_what_triggers_read_and_capture(tmp_path: Path, demo_drive: Path) -> None:
    cfg_path = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": str(demo_drive), "dbc": [str(DEMO_DBC)]}],
        extra="""
[[trigger]]
name = "where"
when = "GNSS_Position.Latitude > 0"
capture = ["ESP_VehicleDynamics.VehicleSpeed"]

[[trigger]]
name = "brake"
when = "ESP_VehicleDynamics.BrakePressure > 20"
capture = ["ESP_VehicleDynamics.VehicleSpeed", "GNSS_Position.*"]

[consent]
granted = ["driving"]
rules = [{ match = "GNSS_*", category = "location" }, { match = "ESP_*", category = "driving" }]
""",
    )
    catalog = build_catalog(load_config(cfg_path))
    assert "where" in catalog.disabled and "location" in catalog.disabled["where"]
    (brake,) = catalog.triggers
    names = {catalog.schema.by_id[sid].name for sid in brake.capture}
    assert names == {"ESP_VehicleDynamics.VehicleSpeed"}
    assert catalog.excluded.get("no consent for location", 0) >= 2
