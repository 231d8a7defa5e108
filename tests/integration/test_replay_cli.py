"""The real CLI on recorded logs: J1939 id masks, short frames, bad input, decode/schema."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from agent.cli import main
from tests.support.agentrun import cli, json_lines, write_config
from tests.support.data import ENGINE_DBC

J1939_DBC = "dbc/css-electronics/CSS-Electronics-SAE-J1939-DEMO.dbc"


def _candump(path: Path, frames: list[tuple[float, str, str]]) -> Path:
    path.write_text("".join(f"({t:.6f}) can0 {i}#{d}\n" for t, i, d in frames))
    return path


def test_j1939_matches_by_pgn_whatever_the_source_address(
    corpus: Path, tmp_path: Path, capsys
) -> None:
    # EEC1 from source address 0x00 (the DBC says 0xFE), priority 3; engine speed 0x1F40 * 0.125.
    log = _candump(
        tmp_path / "j.log",
        [
            (1.0, "0CF00400", "000000401F000000"),
            (1.1, "0CF00400", "000000801F000000"),
            (1.2, "18FEF111", "0000320000000000"),
        ],
    )
    bus = {
        "name": "truck",
        "interface": "replay",
        "log": str(log),
        "dbc": [str(corpus / J1939_DBC)],
    }
    cfg = write_config(tmp_path / "a.toml", [{**bus, "j1939": True}])
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    samples = [s for u in json_lines(capsys.readouterr().out) for s in u["samples"]]
    assert [(s["signal"], s["value"]) for s in samples] == [
        ("EEC1.EngineSpeed", 1000.0),
        ("EEC1.EngineSpeed", 1008.0),
        ("CCVS1.WheelBasedVehicleSpeed", 50.0),
    ]
    cfg = write_config(tmp_path / "b.toml", [bus])
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    assert json_lines(capsys.readouterr().out) == []  # exact ids: nothing matches


DBC = (
    ENGINE_DBC
    + """BO_ 512 Doors: 1 ECU
 SG_ Driver : 0|1@1+ (1,0) [0|1] "" Vector__XXX
VAL_ 512 Driver 0 "closed" 1 "open" ;
"""
)


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    (tmp_path / "car.dbc").write_text(DBC)
    _candump(
        tmp_path / "drive.log",
        [
            (10.0, "100", "1027000000000032"),
            (10.01, "100", "1027000000000032"),
            (10.02, "100", "1127"),  # short frame: Speed still fits, Temp does not
            (10.03, "200", "01"),
            (10.04, "300", "00"),
            (10.05, "200", "00"),
        ],
    )
    return write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": "drive.log", "dbc": ["car.dbc"]}],
        extra='[[signal]]\nmatch = "Engine.*"\n\n[[signal]]\nmatch = "Doors.Driver"\n'
        'name = "Cabin.Door.Row1.DriverSide.IsOpen"\npriority = "event"\n',
    )


def test_run_dry_run_prints_the_decoded_updates(small: Path) -> None:
    r = cli("run", "--config", str(small), "--dry-run")
    assert r.returncode == 0, r.stderr
    updates = json_lines(r.stdout)
    assert {u["vin"] for u in updates} == {"WVWZZZ1JZXW000001"}
    samples = [(s["t"], s["signal"], s["value"]) for u in updates for s in u["samples"]]
    assert samples == [
        (10.0, "Engine.Speed", 100.0),
        (10.0, "Engine.Temp", 10),
        (10.02, "Engine.Speed", 100.01),
        (10.03, "Cabin.Door.Row1.DriverSide.IsOpen", "open"),
        (10.05, "Cabin.Door.Row1.DriverSide.IsOpen", "closed"),
    ]


def test_check_summarises_and_schema_decode_round_trip(small: Path, tmp_path: Path) -> None:
    r = cli("check", "--config", str(small))
    assert r.returncode == 0, r.stderr
    assert "bus car" in r.stdout and "3 signals selected (1 events)" in r.stdout
    r = cli("schema", "--config", str(small), "--out", str(tmp_path / "schema.json"))
    assert r.returncode == 0, r.stderr
    from agent.spime import Schema, encode_update

    schema = Schema.from_json((tmp_path / "schema.json").read_bytes())
    assert [s.name for s in schema.signals] == [
        "Engine.Speed",
        "Engine.Temp",
        "Cabin.Door.Row1.DriverSide.IsOpen",
    ]
    payload = encode_update(
        schema,
        boot=bytes(8),
        seq=9,
        vin="WVWZZZ1JZXW000001",
        samples=[(5000, 2, 1), (5000, 0, 12345)],
    )
    (tmp_path / "u.bin").write_bytes(payload)
    r = cli("decode", "--schema", str(tmp_path / "schema.json"), str(tmp_path / "u.bin"))
    assert r.returncode == 0, r.stderr
    (doc,) = json_lines(r.stdout)
    assert doc["seq"] == 9 and doc["samples"] == [
        {"t": 5.0, "signal": "Engine.Speed", "value": 123.45},
        {"t": 5.0, "signal": "Cabin.Door.Row1.DriverSide.IsOpen", "value": "open"},
    ]
    r = cli("decode", "--schema", str(tmp_path / "schema.json"), stdin=payload[:-3])
    err = r.stderr.decode()
    assert r.returncode == 2 and err.startswith("stdin: ") and "Traceback" not in err


def test_bad_inputs_exit_2_with_one_line_each_and_no_traceback(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "bad.toml",
        [
            {"name": "a", "interface": "nosuchbus", "channel": "x", "dbc": ["missing.dbc"]},
            {"name": "b", "interface": "replay", "log": "absent.log", "dbc": ["missing.dbc"]},
        ],
        extra='[[signal]]\nmatch = "Nothing.*"\n',
    )
    r = cli("check", "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert any("bus[0].interface: unknown python-can interface 'nosuchbus'" in x for x in lines)
    assert any("bus[1].log: no such file" in x for x in lines)
    (tmp_path / "absent.log").write_text("")
    cfg.write_text(cfg.read_text().replace('"nosuchbus"', '"virtual"'))
    r = cli("run", "--config", str(cfg), "--dry-run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing.dbc: cannot read DBC file" in r.stderr


def test_unmatched_signal_glob_is_named(small: Path) -> None:
    small.write_text(small.read_text() + '\n[[signal]]\nmatch = "Engin.Spd"\n')
    r = cli("check", "--config", str(small))
    assert r.returncode == 2
    assert "signal[2].match 'Engin.Spd' matches no signal" in r.stderr


def test_publishing_without_mqtt_section_is_refused(small: Path) -> None:
    r = cli("run", "--config", str(small))
    assert r.returncode != 0 and "needs [mqtt] and [outbox]" in r.stderr


def test_updates_close_at_max_age_of_data_time_in_a_replay(tmp_path: Path) -> None:
    # 10 s of a changing signal at 100 Hz; updates must each span less than max_age + a frame.
    frames = [
        (100 + i / 100, "100", f"{i & 0xFF:02X}{i >> 8:02X}000000000000") for i in range(1000)
    ]
    _candump(tmp_path / "drive.log", frames)
    (tmp_path / "car.dbc").write_text(DBC)
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": "drive.log", "dbc": ["car.dbc"]}],
        extra='[[signal]]\nmatch = "Engine.Speed"\n[updates]\nmax_age = 0.5\n',
    )
    r = cli("run", "--config", str(cfg), "--dry-run")
    assert r.returncode == 0, r.stderr
    updates = json_lines(r.stdout)
    assert sum(len(u["samples"]) for u in updates) == 1000
    spans = [u["samples"][-1]["t"] - u["samples"][0]["t"] for u in updates]
    assert len(updates) >= 18 and max(spans) <= 0.5 + 1e-9


ASC_HEAD = """date Mon Jan 5 10:00:00.000 am 2026
base hex  timestamps absolute
internal events logged
// version 9.0.0
Begin Triggerblock Mon Jan 5 10:00:00.000 am 2026
   0.000000 Start of measurement
"""


def _asc(frames: list[tuple[float, str, str]]) -> str:
    lines = []
    for t, i, d in frames:
        data = " ".join(d[k : k + 2] for k in range(0, len(d), 2))
        lines.append(f"   {t:.6f} 1  {i:<15} Rx   d {len(d) // 2} {data}\n")
    return "".join(lines)


def _speed(i: int) -> str:
    return f"{(10000 + i) & 0xFF:02X}{(10000 + i) >> 8:02X}000000000000"


# Both places a log is read (the pipeline's thread, a child process: agent.logchild) report alike.
READERS = ["thread", "process"]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("fmt", ["log", "asc", "log.gz", "asc.gz"])
def test_unreadable_lines_in_the_middle_are_skipped_counted_and_reported(
    tmp_path: Path, fmt: str, reader: str
) -> None:
    good = [(1.0 + i / 10, "100", _speed(i)) for i in range(6)]
    if fmt.startswith("log"):
        text = "".join(f"({t:.6f}) can0 {i}#{d}\n" for t, i, d in good[:2])
        text += "not a frame\n(1.2) can0 1G0#00\n\x00\xff garbage\n"
        text += "".join(f"({t:.6f}) can0 {i}#{d}\n" for t, i, d in good[2:])
    else:
        text = ASC_HEAD + _asc(good[:2])
        text += "   1.150000 1  10G             Rx   d 8 00 00 00 00 00 00 00 00\n"
        text += "   1.160000 1  100             Rx   d 8 zz 00 00 00 00 00 00 00\n"
        text += "   1.170000 1  100             Rx   d xx\n"
        text += _asc(good[2:]) + "End TriggerBlock\n"
    log = tmp_path / f"drive.{fmt}"
    data = text.encode("latin-1")
    log.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    (tmp_path / "car.dbc").write_text(DBC)
    bus = {"name": "car", "interface": "replay", "log": log.name, "dbc": ["car.dbc"]}
    cfg = write_config(
        tmp_path / "agent.toml",
        [{**bus, "reader": reader}],
        extra='[[signal]]\nmatch = "Engine.Speed"\n',
    )
    r = cli("--log-level", "warning", "run", "--config", str(cfg), "--dry-run")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    samples = [(s["t"], s["value"]) for u in json_lines(r.stdout) for s in u["samples"]]
    # Every frame after the garbage is read, with the timestamps the header defines.
    assert samples == [(pytest.approx(t), (10000 + i) / 100) for i, (t, _, _) in enumerate(good)]
    first = 3 if fmt.startswith("log") else 9
    assert f"{log}:{first}: unreadable line skipped" in r.stderr
    assert f"{log}: 6 frames read, 3 unreadable lines skipped (the first at line {first})" in (
        r.stderr
    )


def test_unreadable_lines_are_counted_in_the_status(tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.daemon import Agent, prepare

    (tmp_path / "car.dbc").write_text(DBC)
    _candump(tmp_path / "drive.log", [(1.0, "100", _speed(0)), (1.1, "100", "zz")])
    with (tmp_path / "drive.log").open("a") as f:
        f.write("(1.2) can0 100#1127000000000000\n")
    cfg = load_config(
        write_config(
            tmp_path / "agent.toml",
            [{"name": "car", "interface": "replay", "log": "drive.log", "dbc": ["car.dbc"]}],
        )
    )
    agent = Agent(cfg, prepare(cfg), dry_run=True, on_json=lambda _doc: None)
    assert agent.run().exit_code == 0
    counters = agent.status()["pipeline"]
    assert counters["unreadable_lines"] == 1 and counters["frames"] == 2


@pytest.mark.parametrize("reader", READERS)
def test_a_log_without_any_readable_frame_or_broken_off_exits_2(
    tmp_path: Path, reader: str
) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    (tmp_path / "junk.log").write_text("not a frame\nnor this\n")
    frames = "".join(f"({1 + i / 10:.6f}) can0 100#{_speed(i)}\n" for i in range(2000))
    packed = gzip.compress(frames.encode())
    (tmp_path / "cut.log.gz").write_bytes(packed[: len(packed) // 2])  # a copy that broke off
    (tmp_path / "bad.blf").write_bytes(b"not a BLF header" * 8)
    for name, words in (
        ("junk.log", "no readable frame; 2 unreadable lines skipped (the first at line 1)"),
        ("bad.blf", "cannot read log"),
        ("cut.log.gz", "unreadable after frame"),
    ):
        cfg = write_config(
            tmp_path / "agent.toml",
            [
                {
                    "name": "car",
                    "interface": "replay",
                    "log": name,
                    "dbc": ["car.dbc"],
                    "reader": reader,
                }
            ],
            extra='[[signal]]\nmatch = "Engine.Speed"\n',
        )
        r = cli("--log-level", "error", "run", "--config", str(cfg), "--dry-run")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(str(tmp_path / name)) and words in line, line
    # What was read before the break was still processed.
    assert json_lines(r.stdout)


def test_every_suffix_python_can_reads_is_accepted(tmp_path: Path) -> None:
    import can

    from agent.can_source import log_suffixes

    suffixes = log_suffixes()
    assert set(can.io.player.MESSAGE_READERS) <= set(suffixes)
    assert {".asc.gz", ".log.gz", ".blf.gz", ".trc.gz"} <= set(suffixes)
    (tmp_path / "car.dbc").write_text(DBC)
    (tmp_path / "d.blf.gz").write_bytes(b"")
    (tmp_path / "d.xyz").write_bytes(b"")
    for name, ok in (("d.blf.gz", True), ("d.xyz", False)):
        cfg = write_config(
            tmp_path / "agent.toml",
            [{"name": "car", "interface": "replay", "log": name, "dbc": ["car.dbc"]}],
        )
        r = cli("check", "--config", str(cfg))
        assert ("not a log format python-can reads" not in r.stderr) is ok, r.stderr


FLOAT_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Tank: 8 ECU
 SG_ Level : 0|32@1- (1,0) [0|0] "" Vector__XXX
 SG_ Count : 32|8@1+ (1,0) [0|255] "" Vector__XXX
VAL_ 256 Level 0 "empty" 1 "full" ;
SIG_VALTYPE_ 256 Level : 1;
"""


def test_nan_and_infinity_on_a_float_signal_with_a_value_table_travel_through(
    tmp_path: Path,
) -> None:
    (tmp_path / "car.dbc").write_text(FLOAT_DBC)
    # IEEE single precision, little-endian: 1.0, NaN, NaN again (other frame), +inf, -inf, 0.0.
    levels = ["0000803F", "0000C07F", "0000C07F", "0000807F", "000080FF", "00000000"]
    _candump(
        tmp_path / "drive.log",
        [(1.0 + i / 10, "100", f"{lvl}{i:02X}000000") for i, lvl in enumerate(levels)],
    )
    cfg = write_config(
        tmp_path / "agent.toml",
        [{"name": "car", "interface": "replay", "log": "drive.log", "dbc": ["car.dbc"]}],
        extra='[[signal]]\nmatch = "Tank.Level"\n',
    )
    r = cli("run", "--config", str(cfg), "--dry-run")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    # Strict JSON: a bare NaN or Infinity token would make this raise.
    updates = [
        json.loads(line, parse_constant=pytest.fail) for line in r.stdout.splitlines() if line
    ]
    shown = [(s["t"], s["value"], s.get("nonfinite")) for u in updates for s in u["samples"]]
    assert shown == [
        (1.0, "full", None),
        (1.1, None, "NaN"),  # the second NaN is no change
        (1.3, None, "Infinity"),
        (1.4, None, "-Infinity"),
        (1.5, "empty", None),
    ]
