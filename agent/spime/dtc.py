"""Diagnostic trouble codes as the spime wire carries them: one integer, shown as its code.

A DTC sample's raw value is ``ecu << 24 | dtc`` with ``dtc`` the three bytes of ISO 14229 (the
two bytes of SAE J2012 / ISO 15031-6 shifted left by 8, failure type byte 0, for OBD-II) and
``ecu`` the CAN id the ECU answers on. The code is written as SAE J2012 does: a letter for the
system (P powertrain, C chassis, B body, U network) and four hex digits, then ``-`` and the
failure type byte in hex when it is not 0 (``P0301``, ``U0100-87``). Pure and stdlib-only: a
backend decodes DTC samples with it. It does not read DTCs from a car (agent.diag does).
"""

from __future__ import annotations

DTC_FORMAT = "dtc"
_SYSTEMS = "PCBU"


def dtc_code(dtc: int) -> str:
    """The code of a three-byte DTC (``0x030100`` -> ``P0301``, ``0xC10087`` -> ``U0100-87``)."""
    high, ftb = (dtc >> 8) & 0xFFFF, dtc & 0xFF
    code = f"{_SYSTEMS[high >> 14]}{(high >> 12) & 0x3}{high & 0xFFF:03X}"
    return f"{code}-{ftb:02X}" if ftb else code


def dtc_raw(ecu: int, dtc: int) -> int:
    """The raw wire value of a DTC sample: the answering ECU's CAN id and the three-byte DTC."""
    return (ecu << 24) | (dtc & 0xFFFFFF)


def split_raw(raw: int) -> tuple[int, int]:
    """(ecu CAN id, three-byte DTC) of a DTC sample's raw value."""
    return raw >> 24, raw & 0xFFFFFF


def ecu_name(ecu: int, names: dict[int, str] | None = None) -> str:
    """An ECU as shown beside its DTCs: its configured name, else its CAN id in hex."""
    if names and ecu in names:
        return names[ecu]
    return f"{ecu:X}"
