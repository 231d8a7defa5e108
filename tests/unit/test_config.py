"""Config loading: every problem named by file and field, paths resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from tests.support.agentrun import GOOD_CONFIG, config_problems, load_text


def test_issue_example_loads_and_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD_CONFIG)
    assert cfg.vehicle.vin == "WVWZZZ1JZXW000001"
    assert cfg.bus[0].dbc == [tmp_path / "dbc/demo_vehicle.dbc"]
    assert cfg.bus[1].log == tmp_path / "drive.log"
    assert cfg.bus[1].is_replay and not cfg.all_replay


def test_unknown_keys_and_bad_values_are_each_named(tmp_path: Path) -> None:
    text = GOOD_CONFIG.replace("speed = 0", "speed = -1\nspeeed = 2").replace("W000001", "W00000I")
    lines = config_problems(tmp_path, text)
    assert any("vehicle.vin" in p and "without I, O or Q" in p for p in lines)
    assert any("bus[1].speeed: unknown key" in p for p in lines)
    assert any("bus[1].speed" in p for p in lines)
    assert all(p.startswith(str(tmp_path / "agent.toml")) for p in lines)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    (line,) = config_problems(tmp_path, GOOD_CONFIG + "\n[[bus]\n")
    assert "TOML syntax error" in line and "line" in line


def test_replay_needs_a_log_and_live_needs_a_channel(tmp_path: Path) -> None:
    text = GOOD_CONFIG.replace('log = "drive.log"\n', "").replace('channel = "vcan0"\n', "")
    lines = config_problems(tmp_path, text)
    assert any('bus[1]: interface "replay" needs log' in p for p in lines)
    assert any('bus[0]: interface "socketcan" needs channel' in p for p in lines)


def test_signal_entries_are_checked(tmp_path: Path) -> None:
    text = GOOD_CONFIG + (
        '\n[[signal]]\nmatch = "PT_*.*"\nname = "Vehicle.Speed"\n'
        '\n[[signal]]\nmatch = "X.Y"\nbus = "nope"\nmin_interval = 2\nmax_interval = 1\n'
    )
    lines = config_problems(tmp_path, text)
    assert any("signal[0]" in p and "no glob" in p for p in lines)
    assert any("signal[1]" in p and "max_interval" in p for p in lines)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.toml")


def test_mqtt_tls_defaults_to_on_except_on_loopback(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD_CONFIG + '[mqtt]\nhost = "broker.example.com"\n')
    assert cfg.mqtt is not None and cfg.mqtt.tls_config is not None
    cfg = load_text(tmp_path, GOOD_CONFIG + '[mqtt]\nhost = "127.0.0.1"\n')
    assert cfg.mqtt is not None and cfg.mqtt.tls_config is None
    cfg = load_text(tmp_path, GOOD_CONFIG + '[mqtt]\nhost = "localhost"\ntls = true\n')
    assert cfg.mqtt is not None and cfg.mqtt.tls_config is not None


MQTT = '\n[mqtt]\nhost = "broker.example.com"\n'


# Strict types: a boolean is true/false, an integer never a boolean or a fraction, a number never
# a string; each refusal names the field and shows the value as written.
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (MQTT + "port = true\n", "mqtt.port: must be an integer, not true"),
        (MQTT + 'port = "8883"\n', 'mqtt.port: must be an integer, not "8883"'),
        (MQTT + "port = 8883.0\n", "mqtt.port: must be an integer, not 8883.0"),
        (MQTT + "keepalive = false\n", "mqtt.keepalive: must be an integer, not false"),
        (MQTT + "drain_rate = true\n", "mqtt.drain_rate: must be a number, not true"),
        (MQTT + "protocol = 5\n", "mqtt.protocol: Input should be '5' or '3.1.1'"),
        (MQTT + 'tls = "yes"\n', "mqtt.tls: must be true, false or a table"),
        (MQTT + "tls = 1\n", "mqtt.tls: must be true, false or a table"),
        (MQTT + "tls = { check_hostname = 0 }\n", "mqtt.tls.check_hostname: must be true or"),
        ('\n[updates]\ncompress = "yes"\n', 'updates.compress: must be true or false, not "yes"'),
        ("\n[updates]\ncompress = 1\n", "updates.compress: must be true or false, not 1"),
        ("\n[updates]\nmax_samples = 1.5\n", "updates.max_samples: must be an integer, not 1.5"),
        ("\n[updates]\nmax_age = true\n", "updates.max_age: must be a number, not true"),
        ('\n[updates]\nmax_age = "1"\n', 'updates.max_age: must be a number, not "1"'),
        ("\n[[signal]]\nmatch = 5\n", "signal[0].match: must be a string, not 5"),
        ('\n[[signal]]\nmatch = "*"\ndeadband = "0.5"\n', "signal[0].deadband: must be a number"),
        ('\n[status]\ninterval = "5"\n', 'status.interval: must be a number, not "5"'),
        ('\n[modems]\nallow_roaming = "no"\n', "modems.allow_roaming: must be true or false"),
        ("\n[modems]\nweak_checks = true\n", "modems.weak_checks: must be an integer, not true"),
        ("\n[consent]\ncoarse_grid = true\n", "consent.coarse_grid: must be a number, not true"),
        ('\n[consent]\ngranted = "driving"\n', 'consent.granted: must be a list, not "driving"'),
        ("\n[outbox]\npath = 5\n", "outbox.path: Input is not a valid path"),
    ],
)
def test_types_are_strict(tmp_path: Path, extra: str, expected: str) -> None:
    (line,) = config_problems(tmp_path, GOOD_CONFIG + extra)
    assert line == f"{tmp_path / 'agent.toml'}: {expected}" or expected in line, line


@pytest.mark.parametrize(
    ("bus_key", "expected"),
    [
        ("lenient_dbc = 1", "bus[0].lenient_dbc: must be true or false, not 1"),
        ('j1939 = "true"', 'bus[0].j1939: must be true or false, not "true"'),
        ("fd = 0", "bus[0].fd: must be true or false, not 0"),
        ("queue_frames = 1e5", "bus[0].queue_frames: must be an integer, not 100000.0"),
        ("bitrate = true", "bus[0].bitrate: must be an integer, not true"),
        ('silent_after = "5s"', 'bus[0].silent_after: must be a number, not "5s"'),
    ],
)
def test_bus_types_are_strict(tmp_path: Path, bus_key: str, expected: str) -> None:
    text = GOOD_CONFIG.replace('channel = "vcan0"\n', f'channel = "vcan0"\n{bus_key}\n')
    (line,) = config_problems(tmp_path, text)
    assert line.endswith(expected), line


def test_a_float_field_takes_an_integer(tmp_path: Path) -> None:
    text = (
        GOOD_CONFIG + "\n[updates]\nmax_age = 1\nsnapshot_interval = 0\n" + MQTT + "port = 8883\n"
    )
    cfg = load_text(tmp_path, text)
    assert cfg.updates.max_age == 1.0 and isinstance(cfg.updates.max_age, float)
    assert cfg.mqtt is not None and cfg.mqtt.port == 8883


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("mqtts://broker.example.com", "is a URL"),
        ("tcp://10.0.0.1:1883", "is a URL"),
        ("broker.example.com:8883", "the port is port"),
        ("broker example", "not a host name"),
        ("broker/mqtt", "not a host name"),
        ("", "not a host name"),
    ],
)
def test_host_is_a_host_not_a_url(tmp_path: Path, host: str, expected: str) -> None:
    (line,) = config_problems(tmp_path, GOOD_CONFIG + f'\n[mqtt]\nhost = "{host}"\n')
    assert "mqtt.host: " in line and expected in line, line


@pytest.mark.parametrize(
    ("host", "kept"),
    [("broker.example.com", "broker.example.com"), ("10.0.0.1", "10.0.0.1"),
     ("::1", "::1"), ("[fe80::1]", "fe80::1")],
)  # fmt: skip
def test_host_names_and_addresses_are_taken(tmp_path: Path, host: str, kept: str) -> None:
    cfg = load_text(tmp_path, GOOD_CONFIG + f'\n[mqtt]\nhost = "{host}"\n')
    assert cfg.mqtt is not None and cfg.mqtt.host == kept


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_port_range(tmp_path: Path, port: int) -> None:
    (line,) = config_problems(tmp_path, GOOD_CONFIG + MQTT + f"port = {port}\n")
    assert line.endswith(f"mqtt.port: {port} is not a port number (1-65535)")


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ('{ cert = "c.pem" }', "mqtt.tls: cert is given without key: the two go together"),
        ('{ key = "k.pem" }', "mqtt.tls: key is given without cert: the two go together"),
        ('{ ca = "ca.pem", kee = "k.pem" }', "mqtt.tls.kee: unknown key"),
    ],
)
def test_a_bad_tls_table_is_reported_once_as_itself(
    tmp_path: Path, tls: str, expected: str
) -> None:
    (line,) = config_problems(tmp_path, GOOD_CONFIG + MQTT + f"tls = {tls}\n")
    assert expected in line and "bool" not in line, line


@pytest.mark.parametrize(
    ("vin", "expected"),
    [
        ("1M8GDM9AXKP042789", "check digit (position 9) is 'X', expected '1'"),
        ("1M8GDM9AXKP04278", "has 16 characters, not 17"),
        ("WVWZZZ1JZXWQ00001", "characters not allowed: 'Q'"),
    ],
)
def test_vin_rules_are_those_of_activation(tmp_path: Path, vin: str, expected: str) -> None:
    text = GOOD_CONFIG.replace("WVWZZZ1JZXW000001", vin)
    (line,) = config_problems(tmp_path, text)
    assert "vehicle.vin: " in line and expected in line, line


def test_vin_is_normalized_and_european_vins_have_no_check_digit(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, GOOD_CONFIG.replace("WVWZZZ1JZXW000001", " wvwzzz1jzxw000009 "))
    assert cfg.vehicle.vin == "WVWZZZ1JZXW000009"


@pytest.mark.parametrize(
    ("granted", "expected"),
    [
        ('["telemetry"]', "unknown categories ['telemetry']"),
        ('["location", "coarse_location"]', "grant either location or coarse_location"),
    ],
)
def test_consent_names(tmp_path: Path, granted: str, expected: str) -> None:
    (line,) = config_problems(tmp_path, GOOD_CONFIG + f"\n[consent]\ngranted = {granted}\n")
    assert "consent.granted: " in line and expected in line, line
