"""Interpretation of AT answers: table tests from real-looking responses."""

from __future__ import annotations

import pytest

from agent.modem import fields as f


@pytest.mark.parametrize(
    ("lines", "iccid"),
    [
        (["+CCID: 89490200001234567890"], "89490200001234567890"),
        (["+QCCID: 8949020000123456789F"], "8949020000123456789"),
        (["+ICCID: 8931440400012345678"], "8931440400012345678"),
        (["89882390000012345678"], "89882390000012345678"),
        (['+CRSM: 144,0,"98942000002143658709"'], "89490200001234567890"),
        (['+CRSM: 144,0,"984920000021436587F9"'], "8994020000123456789"),
        (['+CRSM: 106,130,""'], None),
        (["+CCID: 12345"], None),
        ([], None),
    ],
)
def test_iccid(lines: list[str], iccid: str | None) -> None:
    assert f.parse_iccid(lines) == iccid


def test_crsm_swapped_nibbles() -> None:
    assert f.decode_crsm_iccid("98942000002143658709") == "89490200001234567890"
    assert f.decode_crsm_iccid("zz") is None
    assert f.decode_crsm_iccid("989") is None


@pytest.mark.parametrize(
    ("lines", "dbm"),
    [
        (["+CSQ: 0,99"], -113.0),
        (["+CSQ: 20,99"], -73.0),
        (["+CSQ: 31,0"], -51.0),
        (["+CSQ: 99,99"], None),
        (["garbage"], None),
    ],
)
def test_csq(lines: list[str], dbm: float | None) -> None:
    assert f.parse_csq_dbm(lines) == dbm


@pytest.mark.parametrize(
    ("lines", "dbm"),
    [
        (["+CESQ: 99,99,255,255,20,45"], -96.0),
        (["+CESQ: 99,99,255,255,255,255"], None),
        (["+CESQ: 99,99"], None),
    ],
)
def test_cesq_rsrp(lines: list[str], dbm: float | None) -> None:
    assert f.parse_cesq_rsrp(lines) == dbm


@pytest.mark.parametrize(
    ("line", "state"),
    [
        ("+CREG: 0,1", f.REG_HOME),
        ('+CREG: 2,5,"1A2B","01C3D4E5",7', f.REG_ROAMING),
        ("+CREG: 0,2", f.REG_SEARCHING),
        ("+CREG: 0,3", f.REG_DENIED),
        ("+CREG: 0,0", f.REG_NONE),
        ("+CREG: 1", None),
    ],
)
def test_registration(line: str, state: str | None) -> None:
    assert f.parse_reg([line], "+CREG:") == state


def test_best_registration_prefers_a_registered_state() -> None:
    assert f.best_registration([f.REG_NONE, f.REG_HOME, None]) == f.REG_HOME
    assert f.best_registration([f.REG_SEARCHING, f.REG_DENIED]) == f.REG_DENIED
    assert f.best_registration([None, None]) == f.REG_UNKNOWN


@pytest.mark.parametrize(
    ("lines", "state"),
    [
        (["+CPIN: READY"], f.SIM_READY),
        (["+CPIN: SIM PIN"], f.SIM_PIN),
        (["+CPIN: SIM PUK"], f.SIM_PUK),
        ([], f.SIM_UNKNOWN),
    ],
)
def test_cpin(lines: list[str], state: str) -> None:
    assert f.sim_state_from_cpin(lines) == state


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (10, f.SIM_ABSENT),
        (11, f.SIM_PIN),
        (12, f.SIM_PUK),
        (13, f.SIM_FAILED),
        (14, f.SIM_BUSY),
        (30, f.SIM_UNKNOWN),
        (None, f.SIM_UNKNOWN),
    ],
)
def test_cme_codes(code: int | None, state: str) -> None:
    assert f.sim_state_from_cme(code) == state


def test_operator_and_attach() -> None:
    assert f.parse_cops_numeric(['+COPS: 0,2,"26201",7']) == "26201"
    assert f.parse_cops_numeric(['+COPS: 0,0,"Telekom.de",7']) is None
    assert f.parse_cops_numeric(["+COPS: 0"]) is None
    assert f.parse_cgatt(["+CGATT: 1"]) is True
    assert f.parse_cgatt(["+CGATT: 0"]) is False
    assert f.parse_imsi(["262010000000001"]) == "262010000000001"


@pytest.mark.parametrize(
    ("lines", "length"),
    [
        (['+CRSM: 144,0,"00000002"'], 2),
        (['+CRSM: 144,0,"00000003"'], 3),
        (['+CRSM: 144,0,"01000103"'], 3),  # other bits of byte 4 are not the length
        (['+CRSM: 144,0,"000000"'], None),  # an old SIM without the length byte
        (['+CRSM: 144,0,"0000000F"'], None),
        (['+CRSM: 106,130,""'], None),
        (["+CRSM: 144,0,zz"], None),
        ([], None),
    ],
)
def test_mnc_length_from_ef_ad(lines: list[str], length: int | None) -> None:
    assert f.parse_mnc_length(lines) == length


@pytest.mark.parametrize(
    ("imsi", "mnc_length", "registered", "home"),
    [
        ("262010000000001", 2, "26202", "26201"),
        ("310410000000001", 3, None, "310410"),
        ("310410000000001", None, "310410", "310410"),  # the network it is on says the length
        ("262010000000001", None, "26201", "26201"),
        ("262010000000001", None, "26202", None),  # ambiguous and not on its own network
        ("262010000000001", None, None, None),
        (None, 2, "26201", None),
        ("26201", 2, "26201", None),  # too short to be an IMSI
    ],
)
def test_home_network_from_the_imsi(
    imsi: str | None, mnc_length: int | None, registered: str | None, home: str | None
) -> None:
    assert f.home_network(imsi, mnc_length, registered) == home


@pytest.mark.parametrize(
    ("registration", "registered", "home", "extra", "roaming"),
    [
        (f.REG_HOME, "26201", "26201", [], False),
        (f.REG_HOME, "23415", "26201", ["26203"], False),  # stat 1 on an unlisted network
        (f.REG_ROAMING, "26201", "26201", [], False),  # its own network reporting roaming
        (f.REG_ROAMING, "26202", "26201", [], True),  # national roaming is roaming
        (f.REG_ROAMING, "26202", "26201", ["26202"], False),  # listed for this SIM
        (f.REG_ROAMING, "26202", None, [], True),
        (f.REG_ROAMING, None, "26201", [], True),
        (f.REG_SEARCHING, "26201", "26201", [], None),
        (f.REG_DENIED, None, "26201", [], None),
    ],
)
def test_roaming_per_sim(
    registration: str,
    registered: str | None,
    home: str | None,
    extra: list[str],
    roaming: bool | None,
) -> None:
    assert f.roaming(registration, registered, home, extra) is roaming


@pytest.mark.parametrize(
    ("lines", "fmt"),
    [
        (['+COPS: 0,0,"Telekom.de",7'], 0),
        (['+COPS: 0,1,"TDG",7'], 1),
        (['+COPS: 1,2,"26201",7'], 2),
        (["+COPS: 0"], None),
        (['+COPS: 0,9,"x"'], None),
        ([], None),
    ],
)
def test_operator_format(lines: list[str], fmt: int | None) -> None:
    assert f.parse_cops_format(lines) == fmt
