"""`spime-agent activate` end to end through ``run_activate``: real TLS files made with the
openssl CLI, real modem simulators on pseudo-terminals, a real mosquitto with TLS, real files.
"""
# ruff: noqa: F811  (the material and setup fixtures are imported, then named as test arguments)

from __future__ import annotations

import io
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from agent.activation import backup_path
from agent.config import load_config
from agent.daemon import prepare
from agent.modem.simulator import ModemSimulator, identity
from tests.support.activation import (  # noqa: F401  (fixtures)
    BASE,
    VIN,
    Material,
    Setup,
    material,
    setup,
)
from tests.support.agentrun import cli
from tests.support.broker import Mosquitto, openssl


# -- the happy path and the file handling ---------------------------------------------------
def test_activation_writes_a_config_that_loads_and_prepares(setup: Setup) -> None:
    r = setup.run(setup.args("--coarse-location"))
    assert r.code == 0, r.err
    assert setup.files() == ["agent.toml"]  # no temporary file left, no backup on first write
    assert stat.S_IMODE(setup.config.stat().st_mode) == 0o600
    cfg = load_config(setup.config)
    assert cfg.vehicle.vin == VIN
    assert cfg.mqtt is not None and cfg.mqtt.host == "127.0.0.1"
    tls = cfg.mqtt.tls_config
    assert tls is not None and tls.cert == setup.material.tls.client_cert
    assert cfg.consent is not None
    assert cfg.consent.granted == ["driving", "vehicle_health", "coarse_location"]
    assert cfg.consent.coarse_grid == 0.05 and len(cfg.consent.rules) == 3  # base kept
    # The base lives in another folder: its relative outbox path now points there.
    assert cfg.outbox is not None and cfg.outbox.path == setup.base.parent / "outbox.db"
    catalog = prepare(cfg)
    assert catalog.selected
    assert "not reachable now" in r.out
    assert "the car will send" in r.out and "coarse" in r.out
    assert "activated: wrote" in r.out


def test_same_settings_again_change_nothing(setup: Setup) -> None:
    argv = setup.args("--offline", port=8883)
    assert setup.run(argv).code == 0
    before = setup.config.stat()
    r = setup.run(argv)
    assert r.code == 0, r.err
    assert "already activated with these settings" in r.out
    after = setup.config.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert setup.files() == ["agent.toml"]


def test_changing_an_activated_car_needs_force_and_keeps_a_backup(setup: Setup) -> None:
    first = setup.args("--offline", port=8883)
    assert setup.run(first).code == 0
    old = setup.config.read_bytes()
    changed = setup.args("--offline", port=8883, consent="none")
    r = setup.run(changed)
    assert r.code == 2
    assert "already activated" in r.err and "--force" in r.err
    assert setup.config.read_bytes() == old and setup.files() == ["agent.toml"]

    r = setup.run([*changed, "--force"])
    assert r.code == 0, r.err
    assert backup_path(setup.config).read_bytes() == old
    assert stat.S_IMODE(backup_path(setup.config).stat().st_mode) == 0o600
    cfg = load_config(setup.config)
    assert cfg.consent is not None and cfg.consent.granted == []
    assert "consent granted: nothing" in r.out and "not sent" in r.out


def test_a_config_without_vehicle_is_replaced_with_a_backup(setup: Setup) -> None:
    setup.config.write_text("# placeholder from the image\n")
    r = setup.run(setup.args("--offline"))
    assert r.code == 0, r.err
    assert backup_path(setup.config).read_text() == "# placeholder from the image\n"


def test_dry_run_prints_the_config_and_writes_nothing(setup: Setup) -> None:
    r = setup.run(setup.args("--dry-run", "--offline"))
    assert r.code == 0, r.err
    assert setup.files() == []
    toml_text = r.out.split("\nvehicle ")[0]
    data = tomllib.loads(toml_text)
    assert data["vehicle"]["vin"] == VIN and data["mqtt"]["port"] > 0
    assert "dry run" in r.out and "not written" in r.out


# -- refusals: one line per problem, nothing written ----------------------------------------
def _refused(setup: Setup, argv: list[str], *expected: str) -> list[str]:
    r = setup.run(argv)
    assert r.code == 2, r.out
    lines = r.err.splitlines()
    assert lines[-1] == "activation: nothing written"
    for fragment in expected:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert setup.files() == []
    return lines[:-1]


@pytest.mark.parametrize(
    ("override", "extra", "expected"),
    [
        ({"vin": "1M8GDM9AXKP042789"}, (), "check digit"),
        ({"vin": "WVWZZZ1JZXWQ00001"}, (), "'Q'"),
        ({"consent": "location,telemetry"}, (), "unknown categories ['telemetry']"),
        ({"consent": "location"}, ("--coarse-location",), "either location or coarse"),
        ({"consent": "none,driving"}, (), "none cannot be combined"),
        ({"host": "mqtts://broker"}, (), "--host: 'mqtts://broker' is a URL"),
        ({"host": "broker:8883"}, (), "the port is port"),
        ({"port": "70000"}, (), "--port: 70000 is not a port number"),
        ({"port": "http"}, (), '--port: must be an integer, not "http"'),
        ({"vin": None}, (), "missing --vin (stdin is not a terminal)"),
        ({"consent": None}, (), "missing --consent"),
    ],
)
def test_bad_input_is_refused(
    setup: Setup, override: dict[str, Any], extra: tuple[str, ...], expected: str
) -> None:
    assert len(_refused(setup, setup.args(*extra, **override), expected)) == 1


def test_expired_certificate(setup: Setup) -> None:
    m = setup.material
    (line,) = _refused(setup, setup.args(cert=m.expired_cert, key=m.expired_key), "expired on")
    assert "2020-01-01" in line and str(m.expired_cert) in line


def test_key_of_another_certificate(setup: Setup) -> None:
    (line,) = _refused(setup, setup.args(key=setup.material.tls.server_key), "does not match")
    assert str(setup.material.tls.server_key) in line


@pytest.mark.parametrize("which", ["ca", "cert"])
def test_unparsable_certificates(setup: Setup, which: str) -> None:
    (line,) = _refused(setup, setup.args(**{which: setup.material.garbage}), "cannot parse")
    assert line.startswith(f"--{which} ")


def test_missing_files_and_not_pem(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("hello\n")
    lines = _refused(
        setup,
        setup.args(ca=tmp_path / "nope.pem", key=tmp_path / "empty.pem"),
        "--ca",
        "cannot read",
        "no PEM private key",
    )
    assert len(lines) == 2


def test_every_problem_is_reported_at_once(setup: Setup) -> None:
    lines = _refused(
        setup,
        setup.args(vin="1M8GDM9AXKP042789", key=setup.material.tls.server_key, host=None),
        "check digit",
        "does not match",
        "missing --host",
    )
    assert len(lines) == 3


def test_base_that_does_not_prepare(setup: Setup) -> None:
    setup.base.write_text(BASE.replace('match = "*.*"\n', 'match = "Nothing.*"\n', 1))
    (line,) = _refused(setup, setup.args("--offline"), "matches no signal")
    assert line.startswith(str(setup.base))


def test_missing_base(setup: Setup, tmp_path: Path) -> None:
    _refused(setup, setup.args(base=tmp_path / "none.toml"), "no such file")


# -- prompts ---------------------------------------------------------------------------------
def test_prompts_on_a_terminal(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    t = setup.material.tls
    # VIN, host, port (default), CA, cert, key, consent
    answers = [VIN.lower(), "127.0.0.1", "", str(t.ca), str(t.client_cert), str(t.client_key),
               "driving"]  # fmt: skip
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(answers) + "\n"))
    argv = [f"--base={setup.base}", f"--config={setup.config}", "--offline"]
    r = setup.run(argv, tty=True)
    assert r.code == 0, r.err
    assert "Vehicle VIN" in r.out and "[8883]" in r.out
    cfg = load_config(setup.config)
    assert cfg.vehicle.vin == VIN and cfg.mqtt is not None and cfg.mqtt.port == 8883


# -- the SIM check ---------------------------------------------------------------------------
@pytest.fixture
def modems(setup: Setup) -> Iterator[list[ModemSimulator]]:
    sims = [
        ModemSimulator("healthy", ident=1),
        ModemSimulator("healthy", ident=2),
        ModemSimulator("no_sim", ident=3),
    ]
    for s in sims:
        s.start()
    try:
        text = BASE + "\n[modems]\ncommand_timeout = 3.0\n"
        for i, s in enumerate(sims, 1):
            text += f'\n[[modem]]\nname = "sim{i}"\nport = "{s.port}"\n'
        setup.base.write_text(text)
        yield sims
    finally:
        for s in sims:
            s.close()


def test_primary_by_iccid_is_checked_and_written(
    setup: Setup, modems: list[ModemSimulator]
) -> None:
    iccid = identity(2)[0]
    r = setup.run(setup.args("--offline", primary=iccid))
    assert r.code == 0, r.err
    assert f"primary SIM sim2 (ICCID {iccid}" in r.out and "SIM ready" in r.out
    cfg = load_config(setup.config)
    assert cfg.modems.primary == iccid and len(cfg.modem) == 3


def test_primary_by_slot_name(setup: Setup, modems: list[ModemSimulator]) -> None:
    r = setup.run(setup.args("--offline", primary="sim1"))
    assert r.code == 0, r.err
    assert load_config(setup.config).modems.primary == "sim1"


@pytest.mark.parametrize(
    ("primary", "expected"),
    [
        ("sim3", "not ready: absent"),
        ("8949020000999999999", "no SIM with that ICCID"),
    ],
)
def test_primary_absent_or_not_ready(
    setup: Setup, modems: list[ModemSimulator], primary: str, expected: str
) -> None:
    (line,) = _refused(setup, setup.args("--offline", primary=primary), expected)
    assert line.startswith(f"--primary {primary}")


def test_primary_is_required_when_the_base_has_modems(
    setup: Setup, modems: list[ModemSimulator]
) -> None:
    _refused(setup, setup.args("--offline"), "missing --primary")


# -- the broker check ------------------------------------------------------------------------
@pytest.fixture
def tls_broker(tmp_path: Path, material: Material) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker", tls=material.tls, require_certificate=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_broker_handshake_ok(setup: Setup, tls_broker: Mosquitto) -> None:
    r = setup.run(setup.args(host="localhost", port=tls_broker.port))
    assert r.code == 0, r.err
    assert "TLS handshake and MQTT connection OK" in r.out


def test_broker_not_trusted_with_the_given_ca(setup: Setup, tls_broker: Mosquitto) -> None:
    argv = setup.args(host="localhost", port=tls_broker.port, ca=setup.material.tls.other_ca)
    (line,) = _refused(setup, argv, "not trusted")
    assert f"localhost:{tls_broker.port}" in line


def test_broker_refuses_our_client_certificate(setup: Setup, tls_broker: Mosquitto) -> None:
    m = setup.material
    argv = setup.args(host="localhost", port=tls_broker.port, cert=m.rogue_cert, key=m.rogue_key)
    (line,) = _refused(setup, argv, "does not accept the client certificate")
    assert str(m.rogue_cert) in line and f"localhost:{tls_broker.port}" in line


def test_broker_name_must_match_its_certificate(
    setup: Setup, tmp_path: Path, material: Material
) -> None:
    # The test certificate names localhost and 127.0.0.1; Linux answers on all of 127/8.
    broker = Mosquitto(tmp_path / "other", tls=material.tls, host="127.0.0.2")
    broker.start()
    try:
        (line,) = _refused(setup, setup.args(host="127.0.0.2", port=broker.port), "not trusted")
    finally:
        broker.stop()
    assert "127.0.0.2" in line


def test_config_folder_must_exist(setup: Setup, tmp_path: Path) -> None:
    r = setup.run(setup.args("--offline", config=tmp_path / "nowhere" / "agent.toml"))
    assert r.code == 2 and "does not exist" in r.err
    assert not (tmp_path / "nowhere").exists()


# -- `check` refuses what activation refuses -------------------------------------------------
def _activated(setup: Setup) -> dict[str, Any]:
    r = setup.run(setup.args("--offline"))
    assert r.code == 0, r.err
    return tomllib.loads(setup.config.read_text())


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return cli("check", "--config", str(config))


@pytest.mark.parametrize(
    ("flag", "value", "field", "written", "expected"),
    [
        ("vin", "1M8GDM9AXKP042789", "vehicle.vin", "1M8GDM9AXKP042789", "check digit"),
        ("vin", "1M8GDM9AXKP0427", "vehicle.vin", "1M8GDM9AXKP0427", "not 17"),
        ("host", "mqtts://broker", "mqtt.host", "mqtts://broker", "is a URL"),
        ("host", "broker:8883", "mqtt.host", "broker:8883", "the port is port"),
        ("port", "0", "mqtt.port", 0, "0 is not a port number"),
        ("port", "65536", "mqtt.port", 65536, "65536 is not a port number"),
        ("port", "true", "mqtt.port", True, "must be an integer, not"),
        ("consent", "telemetry", "consent.granted", ["telemetry"], "unknown categories"),
        ("consent", "location,coarse_location", "consent.granted",
         ["location", "coarse_location"], "either location or coarse_location"),
    ],
)  # fmt: skip
def test_check_and_activate_refuse_the_same_values(
    setup: Setup, flag: str, value: str, field: str, written: Any, expected: str
) -> None:
    data = _activated(setup)
    section, key = field.split(".")
    data[section][key] = written
    edited = setup.base.parent / "edited.toml"
    edited.write_text(tomli_w.dumps(data))
    r = _check(edited)
    assert r.returncode == 2, r.stdout
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"{edited}: {field}: ") and expected in line, line

    setup.config.unlink()
    (line,) = _refused(setup, setup.args("--offline", **{flag: value}), expected)
    assert line.startswith(f"--{flag}: "), line


def test_check_loads_the_tls_files_as_run_does(setup: Setup, tmp_path: Path) -> None:
    data = _activated(setup)
    r = _check(setup.config)
    assert r.returncode == 0, r.stderr
    t = setup.material.tls
    assert f"TLS (CA {t.ca}, certificate {t.client_cert})" in r.stdout
    m = setup.material
    cases = [
        ({"ca": str(tmp_path / "nope.pem")}, "mqtt.tls.ca", "cannot read: No such file"),
        ({"ca": str(m.garbage)}, "mqtt.tls.ca", "cannot parse"),
        ({"cert": str(m.garbage)}, "mqtt.tls.cert", "cannot parse"),
        ({"key": str(m.tls.server_key)}, "mqtt.tls.key", "does not match the certificate"),
        ({"cert": str(m.expired_cert), "key": str(m.expired_key)}, "mqtt.tls.cert", "expired on"),
        ({"key": str(m.tls.ca)}, "mqtt.tls.key", "no PEM private key"),
    ]
    for change, label, expected in cases:
        edited = setup.base.parent / "edited.toml"
        edited.write_text(tomli_w.dumps({**data, "mqtt": {**data["mqtt"], "tls": {
            **data["mqtt"]["tls"], **change}}}))  # fmt: skip
        r = _check(edited)
        assert r.returncode == 2, (change, r.stdout)
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"{edited}: {label} ") and expected in line, line


def test_a_certificate_without_its_key_is_one_line(setup: Setup) -> None:
    data = _activated(setup)
    del data["mqtt"]["tls"]["key"]
    edited = setup.base.parent / "edited.toml"
    edited.write_text(tomli_w.dumps(data))
    r = _check(edited)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{edited}: mqtt.tls: cert is given without key: the two go together"
    ]


def test_der_certificate_is_named_as_such(setup: Setup, tmp_path: Path) -> None:
    der = tmp_path / "ca.der"
    openssl("x509", "-in", setup.material.tls.ca, "-outform", "der", "-out", der, cwd=tmp_path)
    (line,) = _refused(setup, setup.args("--offline", ca=der), "a DER certificate")
    assert line.startswith(f"--ca {der}: ") and "openssl x509 -inform der" in line


def test_encrypted_key_is_refused(setup: Setup, tmp_path: Path) -> None:
    enc = tmp_path / "enc.key"
    openssl("pkey", "-in", setup.material.tls.client_key, "-aes256", "-passout", "pass:x",
             "-out", enc, cwd=tmp_path)  # fmt: skip
    (line,) = _refused(setup, setup.args("--offline", key=enc), "the key is encrypted")
    assert line.startswith(f"--key {enc}: ")


def test_written_config_is_the_base_plus_the_vehicle(setup: Setup) -> None:
    data = _activated(setup)
    text = setup.config.read_text()
    assert text.startswith("# Written by `spime-agent activate` from ")
    base = tomllib.loads(BASE)
    assert data["bus"] == base["bus"] and data["signal"] == base["signal"]
    assert data["consent"]["rules"] == base["consent"]["rules"]
    assert data["mqtt"]["topic_prefix"] == "spime/v1" and data["vehicle"] == {"vin": VIN}
    cfg = load_config(setup.config)
    assert cfg.outbox is not None and cfg.outbox.path == setup.base.parent / "outbox.db"


def test_every_kind_of_base_value_is_written_back_unchanged(setup: Setup) -> None:
    # Strings with quotes, backslashes, control characters and non-ASCII; floats, integers,
    # booleans; inline tables and nested lists in options; arrays of tables.
    extra = (
        "\n[updates]\nmax_age = 0.25\ncompress = false\nmax_samples = 1000\n"
        "\n[status]\ninterval = 2.5\n"
    )
    setup.base.write_text(
        BASE.replace(
            'channel = "activation-test"\n',
            'channel = "activation-test"\n'
            'options = { note = "tab\\there \\"q\\" back\\\\slash é 漢", list = [1, 2.5, '
            'true, ["x"]], table = { depth = 2 } }\n',
        )
        + extra
    )
    data = _activated(setup)
    base = tomllib.loads(setup.base.read_text())
    for key in ("bus", "signal", "updates", "status"):  # outbox.path: made absolute
        assert data[key] == base[key], key
    assert {k: v for k, v in data["consent"].items() if k != "granted"} == base["consent"]
    cfg = load_config(setup.config)
    assert cfg.bus[0].options["note"] == 'tab\there "q" back\\slash é 漢'
    assert cfg.updates.max_age == 0.25 and cfg.updates.compress is False


# -- privacy zones ---------------------------------------------------------------------------
def test_privacy_zones_are_written_and_summarised(setup: Setup) -> None:
    argv = setup.args(
        "--offline",
        "--privacy-zone=home=48.137,11.575,300",
        "--privacy-zone",
        "work = -33.86, 151.2 , 1500",
        consent="location,driving",
    )
    r = setup.run(argv)
    assert r.code == 0, r.err
    zones = load_config(setup.config).privacy.zones
    assert [(z.name, z.lat, z.lon, z.radius) for z in zones] == [
        ("home", 48.137, 11.575, 300.0),
        ("work", -33.86, 151.2, 1500.0),
    ]
    assert "privacy zones: home (300 m), work (1500 m)" in r.out


@pytest.mark.parametrize(
    ("zone", "words"),
    [
        ("home=91,11,300", "--privacy-zone home lat: Input should be less than or equal to 90"),
        ("home=48,-181,300", "--privacy-zone home lon: Input should be greater than or equal"),
        ("home=48,11,0", "--privacy-zone home radius: Input should be greater than 0"),
        ("home=48,11", "--privacy-zone 'home=48,11': expected NAME=LAT,LON,RADIUS"),
        ("48,11,300", "expected NAME=LAT,LON,RADIUS"),
        ("home=north,11,300", "expected NAME=LAT,LON,RADIUS"),
        ("my home=48,11,300", "--privacy-zone my home name: String should match pattern"),
    ],
)
def test_a_bad_privacy_zone_is_named_and_nothing_is_written(
    setup: Setup, zone: str, words: str
) -> None:
    r = setup.run(setup.args("--offline", f"--privacy-zone={zone}"))
    assert r.code == 2
    assert words in r.err, r.err
    assert "nothing written" in r.err
    assert setup.files() == []


def test_two_zones_of_one_name_are_refused(setup: Setup) -> None:
    argv = setup.args("--offline", "--privacy-zone=a=1,2,3", "--privacy-zone=a=4,5,6")
    r = setup.run(argv)
    assert r.code == 2 and "zone names must be unique: a" in r.err, r.err
    assert setup.files() == []
