"""The [[modem]] and [modems] config keys: refused values name their field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config
from agent.errors import ConfigError
from tests.support.agentrun import load_text

BASE = """
[vehicle]
vin = "WVWZZZ1JZXW000001"

[[bus]]
name = "car"
interface = "replay"
log = "drive.log"
dbc = ["car.dbc"]

[[modem]]
name = "a"
port = "/dev/spime-modem0"
"""


def _load(tmp_path: Path, extra: str) -> Config:
    return load_text(tmp_path, BASE + extra)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('home_networks = ["2620"]\n', "modem[0].home_networks: ['2620']: each must be an MCC+MNC"),
        ('home_networks = ["26201x"]\n', "modem[0].home_networks"),
        ('[modems]\nhome_networks = ["262-01"]\n', "modems.home_networks"),
    ],
)
def test_home_networks_must_be_mccmnc_codes(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, extra)
    assert any(field in p for p in exc.value.problems), exc.value.problems


def test_per_modem_home_networks_and_thresholds_load(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        'home_networks = ["26202", "310410"]\n[modems]\nmin_rsrp_dbm = -112\nmin_rssi_dbm = -97\n',
    )
    assert cfg.modem[0].home_networks == ["26202", "310410"]  # type: ignore[attr-defined]
    assert (cfg.modems.min_rsrp_dbm, cfg.modems.min_rssi_dbm) == (-112, -97)  # type: ignore[attr-defined]
