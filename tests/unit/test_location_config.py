"""[gnss] and [privacy]: strict values named by field; location signals in the schema by consent."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.catalog import build_catalog
from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.gnss_wiring import check, describe
from agent.locationschema import STATE_SIGNAL
from agent.sources import open_gnss
from tests.support.agentrun import config_problems, load_text
from tests.support.data import DEMO_DBC

BASE = f"""
[vehicle]
vin = "WVWZZZ1JZXW000001"

[[bus]]
name = "car"
interface = "virtual"
channel = "x"
dbc = ["{DEMO_DBC}"]
[[signal]]
match = "*.VehicleSpeed"
"""

NMEA = '[gnss]\nport = "/dev/ttyUSB1"\n'


def _load(tmp_path: Path, text: str) -> Config:
    return load_text(tmp_path, BASE + text)


def _problems(tmp_path: Path, text: str) -> list[str]:
    return config_problems(tmp_path, BASE + text)


def test_defaults_follow_the_readme(tmp_path: Path) -> None:
    cfg = _load(tmp_path, NMEA)
    g = cfg.gnss  # type: ignore[attr-defined]
    assert (g.source, g.port, g.baudrate, g.down_after, g.mode, g.tolerance) == (
        "nmea",
        "/dev/ttyUSB1",
        9600,
        3.0,
        "curve",
        10.0,
    )
    p = cfg.privacy  # type: ignore[attr-defined]
    assert (p.zones, p.trip_end_radius, p.trip_gap) == ([], 500.0, 300.0)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("[gnss]\n", "gnss", 'needs port = "<device'),
        ('[gnss]\nsource = "gpsd"\nport = "x"\n', "gnss", "port as a number"),
        ('[gnss]\nsource = "gpsd"\nport = 70000\n', "gnss.port", "not a port number"),
        ('[gnss]\nsource = "at"\n', "gnss", "needs modem"),
        ('[gnss]\nsource = "at"\nmodem = "lte"\n', "(top level)", "no [[modem]] named 'lte'"),
        ('[gnss]\nsource = "gpsd"\nvendor = "simcom"\n', "gnss", 'only for source "at"'),
        (
            '[[modem]]\nname = "lte"\nport = "/dev/ttyUSB2"\n'
            '[gnss]\nsource = "at"\nmodem = "lte"\nvendor = "ublox"\n',
            "gnss.vendor",
            "quectel",
        ),
        ('[gnss]\nsource = "sirf"\nport = "x"\n', "gnss.source", "'nmea', 'gpsd' or 'at'"),
        (NMEA + "baudrate = true\n", "gnss.baudrate", "must be an integer"),
        (NMEA + "tolerance = 0\n", "gnss.tolerance", "greater than 0"),
        (NMEA + 'mode = "smart"\n', "gnss.mode", "'curve' or 'rules'"),
        (NMEA + "heading = 200\n", "gnss.heading", "less than or equal to 180"),
        (NMEA + "tolerence = 5\n", "gnss.tolerence", "unknown key"),
        ("[privacy]\nzones = [{name='a', lat=91.0, lon=0.0, radius=100.0}]\n", "zones[0].lat", ""),
        ("[privacy]\nzones = [{name='a', lat=1.0, lon=-181, radius=100.0}]\n", "zones[0].lon", ""),
        ("[privacy]\nzones = [{name='a', lat=1.0, lon=2.0, radius=0}]\n", "zones[0].radius", ""),
        ("[privacy]\nzones = [{name='a', lat=1.0, lon=2.0}]\n", "zones[0].radius", "missing"),
        ("[privacy]\nzones = [{name='a', lat='1', lon=2.0, radius=5}]\n", "zones[0].lat", "number"),
        (
            "[privacy]\nzones = [{name='a', lat=1, lon=2, radius=5}, "
            "{name='a', lat=3, lon=4, radius=5}]\n",
            "privacy.zones",
            "unique: a",
        ),
        ("[privacy]\ntrip_end_radius = -1\n", "privacy.trip_end_radius", "greater than or equal"),
    ],
)
def test_bad_values_are_named_by_field(tmp_path: Path, text: str, field: str, words: str) -> None:
    lines = _problems(tmp_path, text)
    assert any(field in line and words in line for line in lines), lines


def test_each_source_maps_to_its_receiver(tmp_path: Path) -> None:
    gpsd = _load(tmp_path, '[gnss]\nsource = "gpsd"\nport = 2948\nhost = "10.0.0.5"\n')
    check(gpsd)  # type: ignore[arg-type]
    src = open_gnss(gpsd.gnss, gpsd.privacy)  # type: ignore[attr-defined]
    assert (type(src).__name__, src.host, src.port) == ("GpsdSource", "10.0.0.5", 2948)  # type: ignore[attr-defined]
    at = _load(
        tmp_path,
        '[[modem]]\nname = "lte"\nport = "/dev/ttyUSB2"\n[gnss]\nsource = "at"\nmodem = "lte"\n',
    )
    check(at)  # type: ignore[arg-type]  # the modem is checked by the model
    with pytest.raises(ConfigError, match="through the modem manager"):
        open_gnss(at.gnss, at.privacy)  # type: ignore[attr-defined]
    tuned = _load(
        tmp_path,
        '[[modem]]\nname = "lte"\nport = "/dev/ttyUSB2"\n[gnss]\nsource = "at"\nmodem = "lte"\n'
        'vendor = "simcom"\npoll_interval = 2.0\n',
    )
    src = open_gnss(tuned.gnss, tuned.privacy, modems=object())  # type: ignore[attr-defined, arg-type]
    assert (src.modem, src.vendor, src.interval) == ("lte", "simcom", 2.0)  # type: ignore[attr-defined]


def _names(tmp_path: Path, consent: str) -> list[str]:
    cfg = _load(tmp_path, NMEA + consent)
    return [s.name for s in build_catalog(cfg).schema.signals]  # type: ignore[arg-type]


def test_location_signals_follow_consent(tmp_path: Path) -> None:
    every = _names(tmp_path, "")  # not activated: nothing filtered
    assert "Vehicle.CurrentLocation.Latitude" in every and STATE_SIGNAL in every
    assert "Vehicle.CurrentLocation.Heading" in every
    exact = _names(tmp_path, '[consent]\ngranted = ["location"]\ndefault_category = "driving"\n')
    assert [n for n in exact if "Location" in n] == [n for n in every if "Location" in n]
    coarse = _names(tmp_path, '[consent]\ngranted = ["coarse_location"]\n')
    assert [n for n in coarse if "Location" in n] == [
        "Vehicle.CurrentLocation.Latitude",
        "Vehicle.CurrentLocation.Longitude",
        STATE_SIGNAL,
    ]
    none = _names(tmp_path, '[consent]\ngranted = ["driving"]\ndefault_category = "driving"\n')
    assert not [n for n in none if "Location" in n]


def test_lat_lon_are_scaled_integers_of_1e7_degree(tmp_path: Path) -> None:
    cfg = _load(tmp_path, NMEA)
    schema = build_catalog(cfg).schema  # type: ignore[arg-type]
    lat = next(s for s in schema.signals if s.name == "Vehicle.CurrentLocation.Latitude")
    assert (lat.kind, lat.scale, lat.unit, lat.category, lat.source) == (
        "int",
        1e-7,
        "deg",
        "location",
        "gnss:lat",
    )
    assert lat.physical(481234567) == pytest.approx(48.1234567, abs=1e-12)


def test_a_signal_named_like_a_gnss_signal_is_refused(tmp_path: Path) -> None:
    named = f'match = "ESP_VehicleDynamics.VehicleSpeed"\nname = "{STATE_SIGNAL}"'
    text = BASE.replace('match = "*.VehicleSpeed"', named)
    p = tmp_path / "agent.toml"
    p.write_text(text + NMEA)
    with pytest.raises(ConfigError, match="name of a GNSS signal"):
        build_catalog(load_config(p))


def test_check_describes_the_receiver_and_the_privacy_in_force(tmp_path: Path) -> None:
    zone = "[privacy]\nzones = [{name='home', lat=1.0, lon=2.0, radius=300.0}]\n"
    cfg = _load(tmp_path, NMEA + zone + '[consent]\ngranted = ["coarse_location"]\n')
    line = describe(cfg, build_catalog(cfg))  # type: ignore[arg-type]
    assert line is not None and line.startswith("gnss nmea /dev/ttyUSB1 (9600 baud): 3 location")
    assert "coarse (0.01-degree grid)" in line and "home 300 m" in line
    cfg = _load(tmp_path, NMEA + '[consent]\ngranted = ["driving"]\n')
    assert "not opened: no consent for location" in str(describe(cfg, build_catalog(cfg)))  # type: ignore[arg-type]
