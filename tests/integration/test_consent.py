"""Consent is enforced in the data path: what the owner did not grant is never sent, and
coarse location is snapped to the configured grid."""

from __future__ import annotations

from pathlib import Path

from tests.support.agentrun import cli, json_lines, write_config
from tests.support.data import DEMO_DBC

CONSENT = """
[consent]
granted = [{granted}]
default_category = "vehicle_health"
coarse_grid = 0.01
rules = [
  {{ match = "GNSS_*.*", category = "location" }},
  {{ match = "ESP_*.*", category = "driving" }},
  {{ match = "ECM_Engine1.*", category = "driving" }},
]
"""


def _run(tmp_path: Path, demo_drive: Path, granted: str) -> list[dict]:
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": str(demo_drive), "dbc": [str(DEMO_DBC)]}],
        extra=CONSENT.format(granted=granted),
    )
    r = cli("run", "--config", str(cfg), "--dry-run")
    assert r.returncode == 0, r.stderr
    return [s for u in json_lines(r.stdout) for s in u["samples"]]


def test_only_granted_categories_are_sent(tmp_path: Path, demo_drive: Path) -> None:
    samples = _run(tmp_path, demo_drive, '"vehicle_health"')
    names = {s["signal"] for s in samples}
    assert names, "vehicle health signals must still flow"
    assert not any(n.startswith(("GNSS_", "ESP_", "ECM_Engine1.")) for n in names)
    samples = _run(tmp_path, demo_drive, '"vehicle_health", "driving", "location"')
    names = {s["signal"] for s in samples}
    assert {"GNSS_Position.Latitude", "ESP_VehicleDynamics.VehicleSpeed"} <= names


def test_check_reports_what_consent_leaves_out(tmp_path: Path, demo_drive: Path) -> None:
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": str(demo_drive), "dbc": [str(DEMO_DBC)]}],
        extra=CONSENT.format(granted='"vehicle_health"'),
    )
    r = cli("check", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "no consent for location" in r.stdout and "no consent for driving" in r.stdout


def test_coarse_location_is_snapped_to_the_grid(tmp_path: Path, demo_drive: Path) -> None:
    exact = _run(tmp_path, demo_drive, '"location"')
    coarse = _run(tmp_path, demo_drive, '"coarse_location"')
    lat_exact = [s["value"] for s in exact if s["signal"] == "GNSS_Position.Latitude"]
    lat_coarse = [s["value"] for s in coarse if s["signal"] == "GNSS_Position.Latitude"]
    assert len(set(lat_exact)) > 10  # the route moves
    assert lat_coarse and len(set(lat_coarse)) < len(set(lat_exact))
    for v in lat_coarse:
        assert abs(v / 0.01 - round(v / 0.01)) < 1e-4, v
    # The schema tells the backend which category each signal belongs to.
    cfg = tmp_path / "agent.toml"
    r = cli("schema", "--config", str(cfg))
    assert '"category": "location"' in r.stdout
