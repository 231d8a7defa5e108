"""VIN validation: shape, the check digit, and which regions it is verified for."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.config import VehicleConfig
from agent.vin import _VALUES, check_digit, is_valid, normalize, uses_check_digit, vin_problems

NA_EXAMPLE = "1M8GDM9AXKP042788"  # the textbook North-American example (check digit X)
ALLOWED = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"


@pytest.mark.parametrize(
    ("vin", "valid"),
    [
        (NA_EXAMPLE, True),
        ("11111111111111111", True),  # check digit 1
        ("1M8GDM9AXKP042789", False),  # last character changed
        ("1M8GDM9A1KP042788", False),  # check digit itself changed
        ("2M8GDM9AXKP042788", False),  # Canada: verified too
        ("WVWZZZ1JZXW000001", True),  # Europe: position 9 is free
        ("WVWZZZ1JAXW000001", True),
        ("JH4KA7561PC008269", True),  # Japan: not verified by our rule
        ("LVSHCAMB1CE054249", True),  # China: verified, and right
        ("LVSHCAMB2CE054249", False),  # China: verified, and wrong
        ("1M8GDM9AXKP04278", False),  # 16 characters
        ("1M8GDM9AXKP0427888", False),  # 18 characters
        ("1M8GDM9AXKP0I2788", False),  # I
        ("WVWZZZ1JZXWO00001", False),  # O
        ("WVWZZZ1JZXWQ00001", False),  # Q
        ("WVWZZZ1JZXW00000-", False),
        ("", False),
    ],
)
def test_vin_table(vin: str, valid: bool) -> None:
    assert is_valid(vin) is valid
    assert (vin_problems(normalize(vin)) == []) is valid


def test_normalize_accepts_lower_case_and_blanks() -> None:
    assert normalize("  1m8gdm9axkp042788\n") == NA_EXAMPLE
    assert is_valid(" 1m8gdm9axkp042788 ")


def test_problem_lines_say_what_is_wrong() -> None:
    (line,) = vin_problems("1M8GDM9AXKP042789")
    assert "check digit" in line and "'X'" in line and "'1'" in line
    (line,) = vin_problems("WVWZZZ1JZXWQ00001")
    assert "'Q'" in line
    (line,) = vin_problems("ABC")
    assert "3 characters" in line


def test_check_digit_regions() -> None:
    assert [uses_check_digit(c + "0" * 16) for c in "12345L"] == [True] * 6
    assert [uses_check_digit(c + "0" * 16) for c in "6789JKSWVZ"] == [False] * 10
    assert check_digit(NA_EXAMPLE) == "X"


vins = st.text(alphabet=ALLOWED, min_size=17, max_size=17)


@given(vins, st.sampled_from("12345L"))
def test_any_vin_with_its_check_digit_is_valid(vin: str, region: str) -> None:
    vin = region + vin[1:]
    vin = vin[:8] + check_digit(vin) + vin[9:]
    assert vin_problems(vin) == []


@given(vins, st.integers(0, 16).filter(lambda i: i != 8), st.sampled_from(ALLOWED))
def test_one_mistyped_character_is_caught(vin: str, pos: int, char: str) -> None:
    vin = "1" + vin[1:]
    vin = vin[:8] + check_digit(vin) + vin[9:]
    typo = vin[:pos] + char + vin[pos + 1 :]
    # Letters sharing a number (A and J are both 1) are the one typo a check digit cannot see;
    # the region character itself may change to one that is not verified.
    if _VALUES[char] == _VALUES[vin[pos]] or not uses_check_digit(typo):
        return
    assert vin_problems(typo) != []


@given(vins.filter(lambda v: not uses_check_digit(v)))
def test_other_regions_accept_any_ninth_character(vin: str) -> None:
    assert vin_problems(vin) == []


@pytest.mark.parametrize("vin", ["1M8GDM9A1KP042788", "WVWZZZ1JZXWQ00001", "ABC"])
def test_the_config_refuses_what_the_vin_rules_refuse(vin: str) -> None:
    with pytest.raises(ValidationError) as exc:
        VehicleConfig(vin=vin)
    assert vin_problems(vin)[0] in str(exc.value)


def test_the_config_keeps_the_normalized_vin() -> None:
    assert VehicleConfig(vin=" 1m8gdm9axkp042788 ").vin == NA_EXAMPLE
