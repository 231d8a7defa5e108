"""Vehicle identification numbers (ISO 3779): shape and check digit.

A VIN is 17 characters of A-Z and 0-9 without I, O and Q. Position 9 is a check digit (0-9 or
X) computed from the other 16 (transliterate letters to numbers, weigh by position, sum modulo
11; 10 is written X). Only some regions require it, so our rule is:

- verified when the world manufacturer identifier's first character is 1-5 (North America:
  United States, Canada, Mexico; FMVSS 115 / 49 CFR 565 require it) or L (China: GB 16735
  requires it);
- not verified elsewhere (Europe, Japan, Korea, ...), where position 9 may be any character.

Pure functions only: they report problems as strings and leave raising and printing to callers.
"""

from __future__ import annotations

# ISO 3779 transliteration: letters skip I, O, Q; S starts again at 2.
_VALUES: dict[str, int] = {str(d): d for d in range(10)}
_VALUES.update(zip("ABCDEFGH", range(1, 9), strict=True))
_VALUES.update(zip("JKLMN", range(1, 6), strict=True))
_VALUES.update({"P": 7, "R": 9})
_VALUES.update(zip("STUVWXYZ", range(2, 10), strict=True))

_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)

CHECK_DIGIT_REGIONS = "12345L"


def normalize(vin: str) -> str:
    """Strip surrounding blanks and upper-case (VINs are printed in capitals)."""
    return vin.strip().upper()


def check_digit(vin: str) -> str:
    """The check digit ("0"-"9" or "X") a well-shaped VIN should carry at position 9."""
    total = sum(_VALUES[c] * w for c, w in zip(vin, _WEIGHTS, strict=True))
    rest = total % 11
    return "X" if rest == 10 else str(rest)


def uses_check_digit(vin: str) -> bool:
    """Whether our rule verifies the check digit of this VIN (see the module docstring)."""
    return bool(vin) and vin[0] in CHECK_DIGIT_REGIONS


def vin_problems(vin: str) -> list[str]:
    """Every reason ``vin`` (already normalized) is not a valid VIN; empty when it is."""
    if len(vin) != 17:
        return [f"VIN {vin!r} has {len(vin)} characters, not 17"]
    bad = sorted({c for c in vin if c not in _VALUES})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return [f"VIN {vin!r}: characters not allowed: {shown} (A-Z and 0-9 without I, O or Q)"]
    if uses_check_digit(vin):
        want = check_digit(vin)
        if vin[8] != want:
            return [
                f"VIN {vin!r}: check digit (position 9) is {vin[8]!r}, expected {want!r}: "
                "a character is mistyped"
            ]
    return []


def is_valid(vin: str) -> bool:
    return not vin_problems(normalize(vin))
