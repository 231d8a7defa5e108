"""`check`, `check --list`, `schema` and `decode` through the real CLI: suggestions for a
`match` that selects nothing, the signal listing, and bad files of every kind (missing, a
folder, binary garbage, empty, not UTF-8) refused with one clear line, exit 2, no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.catalog import closest_names
from tests.support.agentrun import cli, write_config
from tests.support.data import DEMO_DBC


def _bus(name: str = "car", dbc: str | Path = DEMO_DBC) -> dict[str, object]:
    return {"name": name, "interface": "virtual", "channel": f"check-{name}", "dbc": [str(dbc)]}


def _demo_names() -> list[str]:
    import cantools

    db = cantools.database.load_file(str(DEMO_DBC))
    return [f"{m.name}.{s.name}" for m in db.messages for s in m.signals]


# -- a match that selects nothing -----------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "first"),
    [
        ("ESP_WheelSped.WheelSpeedFL", "ESP_WheelSpeeds.WheelSpeedFL"),  # a letter missing
        ("esp_wheelspeeds.wheelspeedfl", "ESP_WheelSpeeds.WheelSpeedFL"),  # wrong case
        ("ECM_Engin1.*", "ECM_Engine1.*"),  # a glob's message part
    ],
)
def test_closest_names_put_the_intended_one_first(pattern: str, first: str) -> None:
    assert closest_names(pattern, _demo_names())[0] == first


def test_nothing_close_gives_no_names() -> None:
    assert closest_names("Zzzzzz", _demo_names()) == []


def test_check_names_the_closest_signals(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "a.toml",
        [_bus()],
        extra='[[signal]]\nmatch = "ESP_WheelSpeeds.WheelSpeedFl"\n\n'
        '[[signal]]\nmatch = "Qqqqqq.Zzzzzz"\n',
    )
    r = cli("check", "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    first, second = r.stderr.splitlines()
    assert "signal[0].match 'ESP_WheelSpeeds.WheelSpeedFl' matches no signal" in first
    assert "; closest: ESP_WheelSpeeds.WheelSpeedFL" in first
    assert f"`spime-agent check --list --config {cfg}` lists them" in second


def test_suggestions_come_from_the_entry_s_own_bus(tmp_path: Path) -> None:
    other = tmp_path / "other.dbc"
    other.write_text(
        'VERSION ""\nBS_:\nBU_: X\nBO_ 100 Other: 8 X\n'
        ' SG_ WheelSpeedFL : 0|8@1+ (1,0) [0|255] "" X\n'
    )
    cfg = write_config(
        tmp_path / "a.toml",
        [_bus("car"), _bus("aux", other)],
        extra='[[signal]]\nmatch = "Other.WheelSpeedFl"\nbus = "car"\n',
    )
    r = cli("check", "--config", str(cfg))
    assert r.returncode == 2
    (line,) = r.stderr.splitlines()
    assert "on bus 'car'" in line and "Other.WheelSpeedFL" not in line


# -- check --list ---------------------------------------------------------------------------
def test_list_prints_every_signal_once_per_line(tmp_path: Path) -> None:
    # A typo in a match must not stop the listing: that is when it is needed.
    cfg = write_config(tmp_path / "a.toml", [_bus()], extra='[[signal]]\nmatch = "Typo.*"\n')
    r = cli("check", "--list", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == _demo_names()


def test_list_names_the_bus_when_there_are_several(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "a.toml", [_bus("body"), _bus("chassis")])
    r = cli("check", "--list", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    names = _demo_names()
    assert r.stdout.splitlines() == [f"body/{n}" for n in names] + [f"chassis/{n}" for n in names]


def test_list_of_a_config_with_a_bad_dbc_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "a.toml", [_bus(dbc=tmp_path / "missing.dbc")])
    r = cli("check", "--list", "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "missing.dbc" in r.stderr and r.stdout == ""


# -- bad files, every command ---------------------------------------------------------------
@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    files = {
        "missing": tmp_path / "missing",
        "folder": folder,
        "garbage": tmp_path / "garbage.bin",
        "empty": tmp_path / "empty",
        "not-utf8": tmp_path / "latin1.toml",
    }
    files["garbage"].write_bytes(bytes(range(256)) * 3)
    files["empty"].write_bytes(b"")
    files["not-utf8"].write_bytes(b'[vehicle]\nvin = "\xe9"\n')
    return files


def _refused_cleanly(r: object, *names: str) -> None:
    import subprocess

    assert isinstance(r, subprocess.CompletedProcess)
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode()
    assert r.returncode == 2, (r.args, r.returncode, err)
    assert "Traceback" not in err and err.strip(), (r.args, err)
    assert any(n in err for n in names), (r.args, err)


BAD = ["missing", "folder", "garbage", "empty", "not-utf8"]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize(
    "command", [["check"], ["check", "--list"], ["schema"], ["run", "--dry-run"], ["modems"]]
)
def test_a_bad_config_file_is_refused(
    bad_files: dict[str, Path], command: list[str], kind: str
) -> None:
    path = bad_files[kind]
    _refused_cleanly(cli(*command, "--config", str(path)), str(path))


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_dbc_file_is_refused(bad_files: dict[str, Path], tmp_path: Path, kind: str) -> None:
    path = bad_files[kind]
    cfg = write_config(tmp_path / "a.toml", [_bus(dbc=path)])
    for command in (["check"], ["check", "--list"], ["schema"]):
        _refused_cleanly(cli(*command, "--config", str(cfg)), str(path))


@pytest.fixture
def schema(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path / "a.toml", [_bus()])
    out = tmp_path / "schema.json"
    r = cli("schema", "--config", str(cfg), "--out", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("kind", BAD)
def test_decode_of_a_bad_update_file(bad_files: dict[str, Path], schema: Path, kind: str) -> None:
    path = bad_files[kind]
    _refused_cleanly(cli("decode", "--schema", str(schema), str(path)), str(path))


@pytest.mark.parametrize("kind", BAD)
def test_decode_with_a_bad_schema_file(bad_files: dict[str, Path], kind: str) -> None:
    path = bad_files[kind]
    _refused_cleanly(cli("decode", "--schema", str(path), str(bad_files["garbage"])), str(path))


@pytest.mark.parametrize("where", ["missing-dir/s.json", "a-folder", "/proc/no-such.json"])
def test_schema_out_that_cannot_be_written(
    bad_files: dict[str, Path], tmp_path: Path, where: str
) -> None:
    cfg = write_config(tmp_path / "a.toml", [_bus()])
    out = where if where.startswith("/") else str(tmp_path / where)
    r = cli("schema", "--config", str(cfg), "--out", out)
    _refused_cleanly(r, f"--out {out}: cannot write")
    assert not os.path.exists(tmp_path / "missing-dir")
