"""Config loading: every problem named by file and field, paths resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError

GOOD = """
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


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_issue_example_loads_and_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.vehicle.vin == "WVWZZZ1JZXW000001"
    assert cfg.bus[0].dbc == [tmp_path / "dbc/demo_vehicle.dbc"]
    assert cfg.bus[1].log == tmp_path / "drive.log"
    assert cfg.bus[1].is_replay and not cfg.all_replay


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    assert exc.value.exit_code == 2
    return list(exc.value.problems)


def test_unknown_keys_and_bad_values_are_each_named(tmp_path: Path) -> None:
    text = GOOD.replace("speed = 0", "speed = -1\nspeeed = 2").replace("W000001", "W00000I")
    lines = _problems(tmp_path, text)
    assert any("vehicle.vin" in p and "without I, O or Q" in p for p in lines)
    assert any("bus[1].speeed: unknown key" in p for p in lines)
    assert any("bus[1].speed" in p for p in lines)
    assert all(p.startswith(str(tmp_path / "agent.toml")) for p in lines)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    (line,) = _problems(tmp_path, GOOD + "\n[[bus]\n")
    assert "TOML syntax error" in line and "line" in line


def test_replay_needs_a_log_and_live_needs_a_channel(tmp_path: Path) -> None:
    text = GOOD.replace('log = "drive.log"\n', "").replace('channel = "vcan0"\n', "")
    lines = _problems(tmp_path, text)
    assert any('bus[1]: interface "replay" needs log' in p for p in lines)
    assert any('bus[0]: interface "socketcan" needs channel' in p for p in lines)


def test_signal_entries_are_checked(tmp_path: Path) -> None:
    text = GOOD + (
        '\n[[signal]]\nmatch = "PT_*.*"\nname = "Vehicle.Speed"\n'
        '\n[[signal]]\nmatch = "X.Y"\nbus = "nope"\nmin_interval = 2\nmax_interval = 1\n'
    )
    lines = _problems(tmp_path, text)
    assert any("signal[0]" in p and "no glob" in p for p in lines)
    assert any("signal[1]" in p and "max_interval" in p for p in lines)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_mqtt_tls_defaults_to_on_except_on_loopback(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD + '[mqtt]\nhost = "broker.example.com"\n'))
    assert cfg.mqtt is not None and cfg.mqtt.tls_config is not None
    cfg = load_config(_write(tmp_path, GOOD + '[mqtt]\nhost = "127.0.0.1"\n'))
    assert cfg.mqtt is not None and cfg.mqtt.tls_config is None
    cfg = load_config(_write(tmp_path, GOOD + '[mqtt]\nhost = "localhost"\ntls = true\n'))
    assert cfg.mqtt is not None and cfg.mqtt.tls_config is not None
