"""The demo vehicle DBC and the demo drive generator (scripts/gen-demo-drive).

The DBC is checked for every feature the rest of the suite relies on; the generator is run as a
real subprocess and its log is read back with python-can and decoded with cantools.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen-demo-drive"
DBC = ROOT / "dbc" / "demo_vehicle.dbc"
START = 1767225600
DRIVE_GEARS = range(1, 7)
LEVER_D = 3
# One trip is 240 s; a little more shows the second trip starting.
DRIVE_SECONDS = 262.0


def run_gen(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, timeout=600
    )


def read_log(path: Path) -> list[can.Message]:
    with can.LogReader(str(path)) as reader:
        return list(reader)


@dataclass(frozen=True)
class Record:
    t: float
    name: str
    values: dict[str, Any]


@pytest.fixture(scope="module")
def db() -> Any:
    return cantools.database.load_file(str(DBC), strict=True)


@pytest.fixture(scope="module")
def drive_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("drive") / "drive.log"
    proc = run_gen("--out", out, "--duration", str(DRIVE_SECONDS), "--seed", "3")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    return out


@pytest.fixture(scope="module")
def frames(drive_log: Path) -> list[can.Message]:
    return read_log(drive_log)


@pytest.fixture(scope="module")
def records(db: Any, frames: list[can.Message]) -> list[Record]:
    out = []
    for f in frames:
        msg = db.get_message_by_frame_id(f.arbitration_id)
        out.append(Record(f.timestamp, msg.name, msg.decode(f.data, decode_choices=False)))
    return out


def series(records: list[Record], message: str, signal: str) -> list[tuple[float, float]]:
    return [(r.t, r.values[signal]) for r in records if r.name == message]


# --- the DBC ---------------------------------------------------------------------------------


def test_dbc_loads_strictly_without_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        db: Any = cantools.database.load_file(str(DBC), strict=True)
    assert caught == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert 13 <= len(db.messages) <= 17


def test_dbc_messages_are_classic_8_bytes_except_one_fd(db: Any) -> None:
    fd = [m for m in db.messages if m.is_fd]
    assert [m.name for m in fd] == ["BMS_CellTemps"]
    assert fd[0].length in (32, 48, 64)
    assert fd[0].cycle_time == 1000
    assert all(m.length == 8 for m in db.messages if not m.is_fd)


def test_dbc_cycle_times_senders_and_comments(db: Any) -> None:
    nodes = {n.name for n in db.nodes}
    for m in db.messages:
        assert m.cycle_time is not None and 10 <= m.cycle_time <= 1000, m.name
        assert m.senders and set(m.senders) <= nodes, m.name
        assert m.comment, m.name
        # Every scaled (physical) signal says what it measures in.
        scaled = [s for s in m.signals if s.scale != 1 or s.offset != 0 or s.is_float]
        assert all(s.unit for s in scaled), m.name
    assert {m.cycle_time for m in db.messages} >= {10, 100, 1000}
    assert nodes >= {"ECM", "BMS", "GNSS", "TCU"}
    assert all(n.comment for n in db.nodes)


def test_dbc_has_a_29_bit_message(db: Any) -> None:
    ext = [m for m in db.messages if m.is_extended_frame]
    assert ext
    assert all(0x7FF < m.frame_id <= 0x1FFFFFFF for m in ext)


@pytest.mark.parametrize(
    ("message", "signal", "byte_order", "signed", "scale", "offset", "unit"),
    [
        ("ECM_Engine1", "EngineSpeed", "little_endian", False, 0.25, 0, "rpm"),
        ("ECM_Engine2", "CoolantTemp", "little_endian", False, 1, -40, "degC"),
        ("ESP_WheelSpeeds", "WheelSpeedFL", "big_endian", False, 0.01, 0, "km/h"),
        ("EPS_Steering", "SteeringWheelAngle", "big_endian", True, 0.1, 0, "deg"),
        ("BMS_PackStatus", "PackCurrent", "little_endian", True, 0.1, 0, "A"),
        ("BMS_PackStatus", "PackTemperature", "little_endian", True, 1, 0, "degC"),
        ("BMS_PackStatus", "StateOfCharge", "little_endian", False, 0.1, 0, "%"),
        ("GNSS_Position", "Latitude", "little_endian", True, 1e-7, 0, "deg"),
        ("GNSS_Position", "Longitude", "little_endian", True, 1e-7, 0, "deg"),
    ],
)
def test_dbc_signal_layouts(
    db: Any,
    message: str,
    signal: str,
    byte_order: str,
    signed: bool,
    scale: float,
    offset: float,
    unit: str,
) -> None:
    s = db.get_message_by_name(message).get_signal_by_name(signal)
    assert (s.byte_order, s.is_signed, s.unit) == (byte_order, signed, unit)
    assert s.scale == pytest.approx(scale)
    assert s.offset == offset
    if byte_order == "big_endian":
        assert s.length > 8  # multi-byte, so the byte order matters


def test_dbc_gnss_position_is_signed_32_bit(db: Any) -> None:
    msg = db.get_message_by_name("GNSS_Position")
    assert [(s.length, s.is_signed) for s in msg.signals] == [(32, True), (32, True)]


@pytest.mark.parametrize(("signal", "length"), [("Heading", 32), ("Altitude", 64)])
def test_dbc_ieee_float_signals(db: Any, signal: str, length: int) -> None:
    matches = [s for m in db.messages for s in m.signals if s.name == signal]
    assert len(matches) == 1
    assert matches[0].is_float and matches[0].length == length


@pytest.mark.parametrize(
    ("message", "signal", "expected"),
    [
        ("TCM_Transmission", "GearLever", {0: "P", 1: "R", 2: "N", 3: "D"}),
        ("TCM_Transmission", "CurrentGear", {0: "Neutral", 1: "First", 6: "Sixth"}),
        ("BCM_Doors", "DoorFL", {0: "Closed", 1: "Open"}),
        ("BCM_Doors", "BeltDriver", {0: "Unfastened", 1: "Fastened"}),
        ("BCM_Ignition", "IgnitionState", {0: "Off", 1: "Accessory", 2: "Run", 3: "Crank"}),
    ],
)
def test_dbc_value_tables(db: Any, message: str, signal: str, expected: dict[int, str]) -> None:
    choices = db.get_message_by_name(message).get_signal_by_name(signal).choices
    assert {k: str(choices[k]) for k in expected} == expected


def test_dbc_multiplexed_cell_voltages(db: Any) -> None:
    msg = db.get_message_by_name("BMS_CellVoltages")
    assert msg.is_multiplexed()
    mux = [s for s in msg.signals if s.is_multiplexer]
    assert [s.name for s in mux] == ["CellBlock"]
    ids = {i for s in msg.signals for i in (s.multiplexer_ids or [])}
    assert len(ids) >= 4
    # Round trip one block to prove the layout is consistent.
    values = {
        "CellBlock": 2,
        "Cell009": 3.901,
        "Cell010": 3.902,
        "Cell011": 3.903,
        "Cell012": 3.904,
    }
    decoded = msg.decode(msg.encode(values), decode_choices=False)
    assert decoded == pytest.approx(values)


def test_dbc_rolling_counters_are_4_bit(db: Any) -> None:
    counters = [
        m.get_signal_by_name("Counter")
        for m in db.messages
        if any(s.name == "Counter" for s in m.signals)
    ]
    assert counters
    assert all(s.length == 4 and not s.is_signed for s in counters)


# --- the generator ---------------------------------------------------------------------------


def test_log_is_readable_and_every_frame_decodes(db: Any, frames: list[can.Message]) -> None:
    by_id = {m.frame_id: m for m in db.messages}
    assert len(frames) > 50_000
    seen = set()
    for f in frames:
        msg = by_id[f.arbitration_id]
        assert f.is_extended_id == msg.is_extended_frame
        assert f.is_fd == msg.is_fd
        assert len(f.data) == msg.length
        msg.decode(f.data)  # raises on any inconsistency
        seen.add(msg.name)
    assert seen == {m.name for m in db.messages}


def test_timestamps_start_at_start_and_never_decrease(frames: list[can.Message]) -> None:
    stamps = [f.timestamp for f in frames]
    assert START <= stamps[0] < START + 0.1
    assert all(a <= b for a, b in zip(stamps, stamps[1:], strict=False))
    assert stamps[-1] < START + DRIVE_SECONDS


def test_cycle_times_match_the_dbc(db: Any, frames: list[can.Message]) -> None:
    stamps: dict[int, list[float]] = defaultdict(list)
    for f in frames:
        stamps[f.arbitration_id].append(f.timestamp)
    for msg in db.messages:
        period = msg.cycle_time / 1000
        gaps = [b - a for a, b in zip(stamps[msg.frame_id], stamps[msg.frame_id][1:], strict=False)]
        assert len(gaps) >= DRIVE_SECONDS / period * 0.95, msg.name
        assert statistics.median(gaps) == pytest.approx(period, rel=0.02), msg.name
        assert statistics.fmean(gaps) == pytest.approx(period, rel=0.02), msg.name
        assert 0.5 * period < min(gaps) and max(gaps) < 1.5 * period, msg.name


def test_rolling_counter_steps_by_one(records: list[Record]) -> None:
    counts = [int(v) for _, v in series(records, "ECM_Engine1", "Counter")]
    assert all((b - a) % 16 == 1 for a, b in zip(counts, counts[1:], strict=False))


def test_rpm_and_gear_consistent_with_speed(records: list[Record]) -> None:
    latest: dict[str, dict[str, Any]] = {}
    moving = 0
    for r in records:
        latest[r.name] = r.values
        if r.name != "ESP_VehicleDynamics" or r.values["VehicleSpeed"] <= 0:
            continue
        if "TCM_Transmission" not in latest or "ECM_Engine1" not in latest:
            continue
        moving += 1
        tcm, ecm = latest["TCM_Transmission"], latest["ECM_Engine1"]
        assert tcm["GearLever"] == LEVER_D, r
        assert tcm["CurrentGear"] in DRIVE_GEARS, r
        assert ecm["EngineSpeed"] > 0 and ecm["EngineRunning"] == 1, r
    assert moving > 1000


def test_rpm_follows_speed_times_gear_ratio(records: list[Record]) -> None:
    """With the converter locked, rpm/speed is fixed per gear and falls as the gear rises."""
    latest: dict[str, dict[str, Any]] = {}
    ratios: dict[int, list[float]] = defaultdict(list)
    for r in records:
        latest[r.name] = r.values
        if r.name != "ECM_Engine1" or "ESP_VehicleDynamics" not in latest:
            continue
        tcm = latest.get("TCM_Transmission")
        speed = latest["ESP_VehicleDynamics"]["VehicleSpeed"]
        if tcm and tcm["TorqueConverterLocked"] and not tcm["ShiftInProgress"] and speed > 15:
            ratios[int(tcm["CurrentGear"])].append(r.values["EngineSpeed"] / speed)
    gears = sorted(ratios)
    assert len(gears) >= 4 and set(gears) <= set(DRIVE_GEARS)
    medians = [statistics.median(ratios[g]) for g in gears]
    assert medians == sorted(medians, reverse=True)
    assert len(set(medians)) == len(medians)
    for g, med in zip(gears, medians, strict=True):
        close = sum(1 for x in ratios[g] if abs(x / med - 1) < 0.05)
        assert close / len(ratios[g]) > 0.9, g


def test_drive_story(records: list[Record]) -> None:
    ign = series(records, "BCM_Ignition", "IgnitionState")
    states = [int(v) for _, v in ign]
    # Two ignition-on sequences (the trip repeats), each Off -> ... -> Crank -> Run.
    starts = [i for i in range(1, len(states)) if states[i] == 3 and states[i - 1] != 3]
    assert len(starts) == 2
    assert states[0] == 0 and 0 in states[starts[0] :]
    door = [int(v) for _, v in series(records, "BCM_Doors", "DoorFL")]
    assert door[0] == 0 and 1 in door
    t_belt = next(t for t, v in series(records, "BCM_Doors", "BeltDriver") if v == 1)
    t_run = next(t for t, v in ign if v == 2)
    t_moving = next(t for t, v in series(records, "ESP_VehicleDynamics", "VehicleSpeed") if v > 0)
    assert t_belt < t_run < t_moving
    speeds = [v for _, v in series(records, "ESP_VehicleDynamics", "VehicleSpeed")]
    assert 40 < max(speeds) < 130
    braking = [v for _, v in series(records, "ESP_VehicleDynamics", "BrakePedalPressed")]
    assert 1 in braking
    coolant = [v for _, v in series(records, "ECM_Engine2", "CoolantTemp")]
    assert coolant[-1] > coolant[0] + 15
    soc = [v for _, v in series(records, "BMS_PackStatus", "StateOfCharge")]
    assert 0.2 < soc[0] - soc[-1] < 10
    odo = [v for _, v in series(records, "IPC_Odometer", "Odometer")]
    assert odo == sorted(odo) and odo[-1] > odo[0]
    steering = [v for _, v in series(records, "EPS_Steering", "SteeringWheelAngle")]
    assert max(steering) > 90 and min(steering) < -90  # turns both ways


def test_gnss_route_stays_near_the_start(records: list[Record]) -> None:
    lat = [v for _, v in series(records, "GNSS_Position", "Latitude")]
    lon = [v for _, v in series(records, "GNSS_Position", "Longitude")]
    assert lat[0] == pytest.approx(52.52, abs=0.001) and lon[0] == pytest.approx(13.40, abs=0.01)
    assert all(abs(a - 52.52) < 0.05 for a in lat) and all(abs(o - 13.405) < 0.08 for o in lon)
    # The car moves more than 1 km during the drive.
    assert max(lat) - min(lat) + max(lon) - min(lon) > 0.01
    heading = [v for _, v in series(records, "GNSS_Course", "Heading")]
    assert all(0 <= h <= 360 for h in heading)
    assert max(heading) - min(heading) > 60


def test_frames_gives_exactly_n(tmp_path: Path) -> None:
    out = tmp_path / "n.log"
    proc = run_gen("--out", out, "--frames", "1234")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(read_log(out)) == 1234
    assert len(out.read_text().splitlines()) == 1234


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.log" for i in range(3)]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        proc = run_gen("--out", path, "--duration", "25", "--seed", seed)
        assert proc.returncode == 0, proc.stderr.decode()
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_stdout_output_matches_file_and_options_apply(tmp_path: Path) -> None:
    out = tmp_path / "f.log"
    args = ("--frames", "500", "--seed", "5", "--start", "1700000000.5", "--channel", "vcan3")
    to_file = run_gen("--out", out, *args)
    to_stdout = run_gen("--out", "-", *args)
    assert to_file.returncode == 0 and to_stdout.returncode == 0
    assert to_stdout.stdout == out.read_bytes()
    frames = read_log(out)
    assert frames[0].channel == "vcan3"
    assert 1700000000.5 <= frames[0].timestamp < 1700000000.6


def test_duration_bounds_the_log(tmp_path: Path) -> None:
    out = tmp_path / "d.log"
    proc = run_gen("--out", out, "--duration", "3")
    assert proc.returncode == 0, proc.stderr.decode()
    frames = read_log(out)
    assert START + 2.9 < frames[-1].timestamp < START + 3
    # Every message with a cycle of 1 s or less has been sent at least twice.
    assert len({f.arbitration_id for f in frames}) == 16


@pytest.mark.parametrize(
    "args",
    [
        ("--dbc", "/nonexistent/x.dbc"),
        ("--frames", "10", "--duration", "5"),
        ("--frames", "-3"),
        ("--bogus",),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = tmp_path / "e.log"
    proc = run_gen("--out", out, *args)
    assert proc.returncode == 2
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gen-demo-drive: error:")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_unloadable_dbc_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text('VERSION ""\nBO_ 1 M: 8 X\n SG_ S : 0|8@1+ (1,0) [0|1] "" X\nVAL_ 9 Q 1 "a";\n')
    proc = run_gen("--out", tmp_path / "o.log", "--dbc", bad)
    assert proc.returncode == 2
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
