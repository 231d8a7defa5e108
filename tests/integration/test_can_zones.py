"""Privacy zones for positions that arrive on CAN: a real car's DBC (Tesla's MCU_locationStatus
from the corpus: latitude and longitude in one message, the elevation in another), a drive
written as a candump log and replayed by `spime-agent run --dry-run`. Every update printed is
checked against the frames: no location sample (position, accuracy, elevation; exact or on the
coarse grid; live, heartbeat, held by min_interval, snapshot or trigger capture) belongs to a
frame whose position lies in a zone, and the twin sees `in privacy zone` and `fix`."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.decode import load_dbc
from agent.policy.geo import distance_m
from tests.support.agentrun import cli, json_lines, write_config

T0 = 1767225600.0
STEP = 0.5  # seconds between frames of each message
FRAMES = 240
LAT0, LON0 = 48.1, 11.5
DLAT, DLON = 0.000225, 0.0003  # per frame: about 33 m north-east
ZONE = {"name": "home", "lat": LAT0 + 100 * DLAT, "lon": LON0 + 100 * DLON, "radius": 400.0}
STATE = "Vehicle.CurrentLocation.State"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "MCU_locationStatus.MCU_longitude"
LOCATION = {
    LAT,
    LON,
    "MCU_locationStatus.MCU_gpsAccuracy",
    "MCU_locationStatus2.MCU_elevation",
}
BRAKE_AT = (80, 104, 150)  # frames where the brake pedal is pressed (the trigger fires)


def position(i: int) -> tuple[float, float]:
    return round(LAT0 + i * DLAT, 6), round(LON0 + i * DLON, 6)


def inside(i: int) -> bool:
    lat, lon = position(i)
    return distance_m(ZONE["lat"], ZONE["lon"], lat, lon) <= ZONE["radius"]


def _drive(corpus: Path, out: Path) -> Path:
    """A candump log: per frame the position, then the elevation, then speed and brake."""
    dbc = load_dbc(corpus / "dbc" / "opendbc" / "tesla_can.dbc", lenient=True)
    by_name = {m.name: m for m in dbc.messages}
    pos, pos2, di = (
        by_name[n] for n in ("MCU_locationStatus", "MCU_locationStatus2", "DI_torque2")
    )
    lines = []
    for i in range(FRAMES):
        t = T0 + i * STEP
        lat, lon = position(i)
        frames = [
            (pos, {"MCU_latitude": lat, "MCU_longitude": lon, "MCU_gpsAccuracy": 2 + i % 5}),
            (pos2, {"MCU_elevation": 500 + i * 0.5, "MCU_navigonExpectedSpeed": 50}),
            (
                di,
                {
                    "DI_torqueEstimate": 0,
                    "DI_gear": 4,
                    "DI_brakePedal": int(i in BRAKE_AT),
                    "DI_vehicleSpeed": 40 + i % 7,
                },
            ),
        ]
        for k, (msg, values) in enumerate(frames):
            values = {sig.name: 0 for sig in msg.signals} | values
            data = msg.encode(values, scaling=True, strict=False)
            lines.append(f"({t + k * 0.001:.6f}) can0 {msg.frame_id:03X}#{data.hex().upper()}")
    out.write_text("\n".join(lines) + "\n")
    return out


def _config(tmp_path: Path, drive: Path, corpus: Path, granted: str) -> Path:
    zone = ", ".join(f"{k} = {v!r}" if k != "name" else f'name = "{v}"' for k, v in ZONE.items())
    return write_config(
        tmp_path / "agent.toml",
        [
            {
                "name": "car",
                "interface": "replay",
                "log": str(drive),
                "dbc": [str(corpus / "dbc" / "opendbc" / "tesla_can.dbc")],
                "lenient_dbc": True,
            }
        ],
        extra=f"""
[updates]
snapshot_interval = 3
max_age = 1

[consent]
granted = [{granted}, "driving"]
rules = [{{ match = "MCU_location*", category = "location" }}]
default_category = "driving"

[privacy]
zones = [{{ {zone} }}]

[[signal]]
match = "MCU_locationStatus.MCU_latitude"
name = "{LAT}"
max_interval = 2

[[signal]]
match = "MCU_locationStatus.MCU_longitude"
location = "longitude"
min_interval = 1.3

[[signal]]
match = "MCU_locationStatus.MCU_gpsAccuracy"
max_interval = 2

[[signal]]
match = "MCU_locationStatus2.MCU_elevation"

[[signal]]
match = "DI_torque2.DI_vehicleSpeed"

[[trigger]]
name = "brake"
when = "DI_torque2.DI_brakePedal == 1"
before = 6
after = 6
capture = [
  "MCU_locationStatus.*", "MCU_locationStatus2.MCU_elevation", "DI_torque2.DI_vehicleSpeed"
]
""",
    )


def _frame_of(t: float) -> int:
    i = round((t - T0) / STEP)
    assert 0 <= i < FRAMES and abs(T0 + i * STEP - t) < 0.01, t
    return i


@pytest.mark.parametrize("granted", ['"location"', '"coarse_location"'])
def test_no_location_of_a_frame_inside_a_zone_is_sent(
    tmp_path: Path, corpus: Path, granted: str
) -> None:
    drive = _drive(corpus, tmp_path / "drive.log")
    r = cli("run", "--config", str(_config(tmp_path, drive, corpus, granted)), "--dry-run")
    assert r.returncode == 0, r.stderr
    updates = json_lines(r.stdout)
    assert sum(inside(i) for i in range(FRAMES)) >= 20  # the drive crosses the zone
    exact = granted == '"location"'
    forbidden = {position(i)[0] for i in range(FRAMES) if inside(i)}
    kept: set[int] = set()
    states: list[tuple[int, str]] = []
    for doc in updates:
        for s in doc["samples"]:
            if s["signal"] == STATE:
                states.append((_frame_of(s["t"]), s["value"]))
                continue
            if s["signal"] not in LOCATION:
                continue
            i = _frame_of(s["t"])
            assert not inside(i), (doc.get("trigger"), doc["snapshot"], s)
            if s["signal"] == LAT:
                assert round(s["value"], 6) not in forbidden, s
                kept.add(i)
    outside = [i for i in range(FRAMES) if not inside(i)]
    # Positions flow before and after the zone: every frame's latitude changes.
    assert kept >= set(outside) if exact else kept
    entered = min(i for i in range(FRAMES) if inside(i))
    left = max(i for i in range(FRAMES) if inside(i)) + 1
    assert (entered, "in privacy zone") in states and (left, "fix") in states, states
    captures = [d for d in updates if "trigger" in d]
    assert len(captures) == len(BRAKE_AT)
    captured = {s["signal"] for d in captures for s in d["samples"]}
    if exact:
        # The captures around the zone hold positions, those outside it only.
        assert LAT in captured and "MCU_locationStatus2.MCU_elevation" in captured
    else:
        assert not captured & LOCATION  # coarse positions are never captured
