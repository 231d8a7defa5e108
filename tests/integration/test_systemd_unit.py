"""The systemd unit (hardening score, required settings), the sample base config, and
scripts/install run into a staging root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.daemon import prepare
from tests.support.data import DEMO_DBC, REPO

UNIT = REPO / "systemd" / "spime-agent.service"
EXAMPLE = REPO / "systemd" / "spime-agent.toml.example"
INSTALL = REPO / "scripts" / "install"
MAX_EXPOSURE = 2.0


def _directives(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (unit files repeat keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_exposure_is_at_most_two() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    res = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert m is not None, res.stdout[-2000:] + res.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Unit.StartLimitIntervalSec", None),
        ("Unit.StartLimitBurst", None),
        ("Service.Type", "notify"),
        ("Service.NotifyAccess", "main"),
        ("Service.WatchdogSec", "30"),
        ("Service.Restart", "always"),
        ("Service.RestartSec", "5"),
        (
            "Service.ExecStart",
            "/opt/spime-agent/venv/bin/spime-agent run --config /etc/spime-agent/agent.toml",
        ),
        ("Service.ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Service.KillSignal", "SIGTERM"),
        ("Service.TimeoutStopSec", "15"),
        ("Service.User", "spime-agent"),
        ("Service.DynamicUser", "no"),
        ("Service.SupplementaryGroups", "dialout"),
        ("Service.StateDirectory", "spime-agent"),
        ("Service.ConfigurationDirectory", "spime-agent"),
        ("Service.RuntimeDirectory", "spime-agent"),
        ("Service.PrivateDevices", "no"),
        ("Service.DevicePolicy", "closed"),
        ("Service.CapabilityBoundingSet", ""),
        ("Service.RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_CAN AF_NETLINK"),
        ("Install.WantedBy", "multi-user.target"),
    ],
)
def test_unit_settings(key: str, value: str | None) -> None:
    found = _directives(UNIT)
    assert key in found
    if value is not None:
        assert found[key] == [value]


def test_unit_paths_match_the_config_defaults() -> None:
    # The outbox, status file and PIN ledger live in the folders the unit creates.
    data = tomllib.loads(EXAMPLE.read_text())
    assert data["outbox"]["path"].startswith("/var/lib/spime-agent/")
    assert data["status"]["path"].startswith("/run/spime-agent/")
    assert data["modems"]["pin_ledger"].startswith("/run/spime-agent/")
    allowed = " ".join(_directives(UNIT)["Service.DeviceAllow"])
    assert "char-ttyUSB" in allowed and "char-ttyACM" in allowed


def test_sample_base_becomes_a_valid_config() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    assert "vehicle" not in data and "host" not in data["mqtt"]  # activation adds those
    data["bus"][0]["dbc"] = [str(DEMO_DBC)]
    data["vehicle"] = {"vin": "WVWZZZ1JZXW000001"}
    data["mqtt"]["host"] = "broker.example"
    data["consent"]["granted"] = ["driving", "vehicle_health"]
    cfg = parse_config(data, base=Path("/etc/spime-agent"), source=str(EXAMPLE))
    catalog = prepare(cfg)
    assert catalog.selected and len(cfg.modem) == 3


def test_network_and_udev_files() -> None:
    net = _directives(REPO / "systemd" / "can0.network")
    assert net["Match.Name"] == ["can0"] and net["CAN.BitRate"] == ["500K"]
    rules = (REPO / "systemd" / "90-spime-modems.rules").read_text()
    names = re.findall(r'SYMLINK\+="(spime-modem\d)"', rules)
    assert names == ["spime-modem0", "spime-modem1", "spime-modem2"]
    rule_lines = [line for line in rules.splitlines() if line and not line.startswith("#")]
    assert len(rule_lines) == 3 and all('KERNELS=="' in line for line in rule_lines)


# -- scripts/install -------------------------------------------------------------------------
def _install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **(env or {})},
    )


INSTALLED = (
    "etc/systemd/system/spime-agent.service",
    "etc/systemd/network/can0.network",
    "etc/udev/rules.d/90-spime-modems.rules",
    "etc/spime-agent/base.toml",
    "opt/spime-agent/dbc/demo_vehicle.dbc",
    "usr/local/bin/spime-agent",
)


def _present(root: Path) -> set[str]:
    return {p for p in INSTALLED if (root / p).is_file() or (root / p).is_symlink()}


def test_install_and_uninstall_into_a_staging_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = _install("--prefix", str(root), "--no-venv")
    assert res.returncode == 0, res.stderr
    assert _present(root) == set(INSTALLED)
    assert (root / "etc/systemd/system/spime-agent.service").read_bytes() == UNIT.read_bytes()
    assert os.readlink(root / "usr/local/bin/spime-agent") == (
        "/opt/spime-agent/venv/bin/spime-agent"
    )
    assert "would run: useradd --system" in res.stdout
    assert "skipped systemctl daemon-reload" in res.stdout
    assert "systemctl enable --now spime-agent" in res.stdout  # the next step, not done

    # The integrator's edits survive a second install.
    base = root / "etc/spime-agent/base.toml"
    base.write_text("# edited\n")
    res = _install("--no-venv", env={"DESTDIR": str(root)})
    assert res.returncode == 0, res.stderr
    assert base.read_text() == "# edited\n"
    (root / "var/lib/spime-agent/outbox.db").write_bytes(b"unsent")

    res = _install("--uninstall", "--prefix", str(root))
    assert res.returncode == 0, res.stderr
    assert _present(root) == {"etc/spime-agent/base.toml"}
    assert not (root / "opt/spime-agent").exists()
    assert (root / "var/lib/spime-agent/outbox.db").read_bytes() == b"unsent"

    res = _install("--uninstall", "--purge", "--prefix", str(root))
    assert res.returncode == 0, res.stderr
    assert _present(root) == set()
    assert not (root / "etc/spime-agent").exists() and not (root / "var/lib/spime-agent").exists()
    assert "would run: userdel spime-agent" in res.stdout


def test_install_refuses_unknown_arguments(tmp_path: Path) -> None:
    res = _install("--prefix", str(tmp_path), "--bogus")
    assert res.returncode == 2 and "unknown argument: --bogus" in res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    os.environ.get("SPIME_TEST_INSTALL_VENV") != "1",
    reason="builds a virtual environment with pip (needs the package index): "
    "set SPIME_TEST_INSTALL_VENV=1",
)
def test_install_builds_a_working_virtual_environment(tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = _install("--prefix", str(root))
    assert res.returncode == 0, res.stderr
    agent = root / "opt/spime-agent/venv/bin/spime-agent"
    out = subprocess.run(
        [str(agent), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0 and out.stdout.startswith("spime-agent ")
    assert _install("--uninstall", "--prefix", str(root)).returncode == 0
    assert not (root / "opt/spime-agent").exists()
