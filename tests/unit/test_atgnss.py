"""Quectel and SIMCom position answers -> fixes; answers that do not fit are refused."""

from __future__ import annotations

import pytest

from agent.sources.atgnss import (
    AtGnssReader,
    cgnsinf_fix,
    parse_cgnsinf,
    parse_qgpsloc,
    vendor_of,
)

# The examples of the vendors' AT manuals.
QUECTEL = "+QGPSLOC: 061951.000,31.16366,121.62611,1.0,15.0,3,0.00,0.0,0.0,110513,09"
SIMCOM = "+CGNSINF: 1,1,20161025102656.000,31.221252,121.354856,10.700,0.00,0.0,1,,1.2,1.5,0.9,,12,9,,,42,,"  # noqa: E501


def test_a_quectel_answer_is_a_fix() -> None:
    fix = parse_qgpsloc(("some noise", QUECTEL))
    assert fix.t == 1_368_253_191_000  # 2013-05-11T06:19:51Z
    assert (fix.lat, fix.lon, fix.altitude, fix.hdop) == (31.16366, 121.62611, 15.0, 1.0)
    assert (fix.speed, fix.heading, fix.satellites, fix.accuracy) == (0.0, 0.0, 9, 5.0)


def test_quectel_course_is_degrees_and_minutes_and_a_2d_fix_has_no_altitude() -> None:
    fix = parse_qgpsloc(("+QGPSLOC: 061951.5,-31.1,-121.6,0.8,15.0,2,123.30,,10.0,110513,",))
    assert fix.heading == 123.5 and fix.altitude is None
    assert fix.speed == 18.52  # from knots when km/h is empty
    assert fix.t % 1000 == 500 and fix.satellites is None


@pytest.mark.parametrize(
    "line",
    [
        "+QGPSLOC: 061951.000,91.0,121.6,1.0,15.0,3,0.00,0.0,0.0,110513,09",
        "+QGPSLOC: 061951.000,nan,121.6,1.0,15.0,3,0.00,0.0,0.0,110513,09",
        "+QGPSLOC: 061951.000,31.1,121.6,1.0,inf,3,0.00,0.0,0.0,110513,09",
        "+QGPSLOC: 061951.000,31.1,121.6,1.0,15.0,3,0.00,0.0,0.0,320113,09",  # 32 January
        "+QGPSLOC: 256199.000,31.1,121.6,1.0,15.0,3,0.00,0.0,0.0,110513,09",
        "+QGPSLOC: 061951.000,31.1,121.6,1.0,15.0,1,0.00,0.0,0.0,110513,09",
        "+QGPSLOC: 061951.000,31.1,121.6,1.0,15.0,3,360.00,0.0,0.0,110513,09",
        "+QGPSLOC: 061951.000,31.1,121.6,1.0,15.0,3,12.75,0.0,0.0,110513,09",
        "+QGPSLOC: 061951.000,31.1,121.6",
        "+QGPSLOC: 061951.000,31.1,121.6,1.0,15.0,3,0.00,0.0,0.0,110513,09,7,8",
        "+QGPSLOC: 061951.000,31.1,121.6,-1.0,15.0,3,0.00,0.0,0.0,110513,09",
    ],
)
def test_a_quectel_answer_that_does_not_fit_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_qgpsloc((line,))


def test_a_simcom_answer_is_a_fix_and_its_states() -> None:
    fix = cgnsinf_fix(parse_cgnsinf((SIMCOM,)))
    assert fix.t == 1_477_391_216_000  # 2016-10-25T10:26:56Z
    assert (fix.lat, fix.lon, fix.altitude, fix.speed) == (31.221252, 121.354856, 10.7, 0.0)
    assert (fix.hdop, fix.satellites, fix.accuracy) == (1.2, 9, 6.0)  # HDOP x 5 m without HPA
    no_fix = parse_cgnsinf(("+CGNSINF: 1,0,,,,,,,,,,,,,,,,,,,",))
    assert (no_fix.run, no_fix.fix, no_fix.lat) == (1, 0, None)
    assert parse_cgnsinf(("+CGNSINF: 0,,,,,,,,,,,,,,,,,,,,",)).run == 0


@pytest.mark.parametrize(
    "line",
    [
        "+CGNSINF: 2,1,20161025102656.000,31.2,121.3,10.7,0.00,0.0,1,,1.2,1.5,0.9,,12,9,,,42,,",
        "+CGNSINF: 1,1,20161025102656.000,131.2,121.3,10.7,0.00,0.0,1,,1.2,1.5,0.9,,12,9,,,42,,",
        "+CGNSINF: 1,1,2016102510,31.2,121.3,10.7,0.00,0.0,1,,1.2,1.5,0.9,,12,9,,,42,,",
        "+CGNSINF: 1,1,,,,,,,,,,,,,,,,,,,",  # a fix without a position
        "+CGNSINF: 1,1,20161025102656.000,31.2,121.3,10.7,-5,0.0,1,,1.2,1.5,0.9,,12,9,,,42,,",
        "+CGNSINF: x",
        "+QGPSLOC: 1",
    ],
)
def test_a_simcom_answer_that_does_not_fit_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_cgnsinf((line,))


def test_a_simcom_date_that_does_not_exist_is_refused() -> None:
    inf = parse_cgnsinf((SIMCOM.replace("20161025", "20161325"),))
    with pytest.raises(ValueError):
        cgnsinf_fix(inf)


def test_vendors_by_their_cgmi_answers() -> None:
    assert vendor_of("Quectel") == "quectel"
    assert vendor_of("SIMCOM INCORPORATED") == vendor_of("SIMCOM_Ltd") == "simcom"
    assert vendor_of("u-blox") is None


def test_a_position_the_engine_keeps_repeating_ages_into_no_fix() -> None:
    r = AtGnssReader(down_after=1.0)
    fix = parse_qgpsloc((QUECTEL,))
    assert r.fix(fix, 0.0) is fix
    assert r.state(0.5) == "fix"
    for now in (0.6, 1.2, 1.8):
        assert r.fix(fix, now) is None  # the modem answers, but with its old position
    assert r.state(1.8) == "no fix" and r.counters["repeated"] == 3
    assert r.state(3.0) == "gnss down"
    r.no_fix(3.1)
    assert r.state(3.1) == "no fix"
