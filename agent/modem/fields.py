"""Pure interpretation of AT answers (3GPP TS 27.007 and common vendor forms).

Each function takes the information lines of one response and returns a plain value, or None
when the answer does not have the expected shape. Nothing here talks to a modem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# +CME ERROR codes we act on.
CME_NO_SIM = 10
CME_PIN_REQUIRED = 11
CME_PUK_REQUIRED = 12
CME_SIM_FAILURE = 13
CME_SIM_BUSY = 14
CME_NO_NETWORK = 30

SIM_READY = "ready"
SIM_ABSENT = "absent"
SIM_PIN = "pin"
SIM_PUK = "puk"
SIM_FAILED = "failed"
SIM_BUSY = "busy"
SIM_UNKNOWN = "unknown"

REG_HOME = "home"
REG_ROAMING = "roaming"
REG_SEARCHING = "searching"
REG_DENIED = "denied"
REG_NONE = "not_registered"
REG_UNKNOWN = "unknown"

_STAT = {0: REG_NONE, 1: REG_HOME, 2: REG_SEARCHING, 3: REG_DENIED, 4: REG_UNKNOWN, 5: REG_ROAMING}
# LTE/NR "SMS only" and emergency states count as registered for our purposes only when they
# say home (6, 9) or roaming (7, 10).
_STAT.update({6: REG_HOME, 7: REG_ROAMING, 9: REG_HOME, 10: REG_ROAMING, 8: REG_NONE})

_ICCID = re.compile(r"^89[0-9]{16,18}[0-9F]?$")
_PREFIXED = re.compile(r"^\+?[A-Z^]*:\s*(.*)$")


def _body(line: str, prefix: str) -> str | None:
    if not line.upper().startswith(prefix):
        return None
    return line[len(prefix) :].strip()


def _first(lines: Sequence[str], prefix: str) -> list[str] | None:
    for line in lines:
        body = _body(line, prefix)
        if body is not None:
            return [f.strip() for f in body.split(",")]
    return None


def sim_state_from_cpin(lines: Sequence[str]) -> str:
    fields = _first(lines, "+CPIN:")
    if not fields:
        return SIM_UNKNOWN
    value = fields[0].strip('"').upper()
    if value == "READY":
        return SIM_READY
    if value in ("SIM PIN", "SIM PIN2"):
        return SIM_PIN if value == "SIM PIN" else SIM_READY
    if value in ("SIM PUK", "SIM PUK2"):
        return SIM_PUK if value == "SIM PUK" else SIM_READY
    if value in ("NOT INSERTED", "NOT READY"):
        return SIM_ABSENT
    return SIM_UNKNOWN


def sim_state_from_cme(code: int | None, text: str = "") -> str:
    """A failed SIM-dependent command says why the SIM is not usable."""
    if code == CME_NO_SIM or "NOT INSERTED" in text.upper():
        return SIM_ABSENT
    if code == CME_PIN_REQUIRED:
        return SIM_PIN
    if code == CME_PUK_REQUIRED:
        return SIM_PUK
    if code == CME_SIM_FAILURE:
        return SIM_FAILED
    if code == CME_SIM_BUSY:
        return SIM_BUSY
    return SIM_UNKNOWN


def decode_crsm_iccid(hex_bcd: str) -> str | None:
    """EF_ICCID as read with ``AT+CRSM=176,12258,0,0,10``: BCD with nibbles swapped per byte."""
    raw = hex_bcd.strip().strip('"').upper()
    if len(raw) % 2 or not re.fullmatch(r"[0-9A-F]+", raw):
        return None
    digits = "".join(raw[i + 1] + raw[i] for i in range(0, len(raw), 2)).rstrip("F")
    return digits if _ICCID.match(digits) else None


def parse_iccid(lines: Sequence[str]) -> str | None:
    """ICCID from ``AT+CCID``/``AT+QCCID``/``AT+ICCID`` (prefixed or bare) or ``AT+CRSM``."""
    for line in lines:
        crsm = _body(line, "+CRSM:")
        if crsm is not None:
            parts = [p.strip() for p in crsm.split(",")]
            if len(parts) >= 3 and parts[0] in ("144", "145"):
                return decode_crsm_iccid(parts[2])
            return None
        m = _PREFIXED.match(line)
        value = (m.group(1) if m else line).strip().strip('"').upper()
        if _ICCID.match(value):
            return value.rstrip("F")
    return None


def parse_imsi(lines: Sequence[str]) -> str | None:
    for line in lines:
        value = line.strip().strip('"')
        m = _PREFIXED.match(value)
        if m:
            value = m.group(1).strip().strip('"')
        if value.isdigit() and 6 <= len(value) <= 15:
            return value
    return None


def parse_cops_numeric(lines: Sequence[str]) -> str | None:
    """``+COPS: <mode>,2,"<MCCMNC>"[,<AcT>]`` -> ``"26201"`` (None when not registered)."""
    fields = _first(lines, "+COPS:")
    if not fields or len(fields) < 3 or fields[1] != "2":
        return None
    oper = fields[2].strip('"')
    return oper if oper.isdigit() and len(oper) in (5, 6) else None


def parse_cops_format(lines: Sequence[str]) -> int | None:
    """``+COPS: <mode>,<format>,...`` -> the format (0 long name, 1 short, 2 numeric); None when
    the answer has none (not registered: ``+COPS: 0``)."""
    fields = _first(lines, "+COPS:")
    if not fields or len(fields) < 2 or fields[1] not in ("0", "1", "2"):
        return None
    return int(fields[1])


def parse_csq_dbm(lines: Sequence[str]) -> float | None:
    """``+CSQ: <rssi>,<ber>``: dBm = -113 + 2*rssi for 0..31; 99 is unknown."""
    fields = _first(lines, "+CSQ:")
    if not fields or not fields[0].isdigit():
        return None
    rssi = int(fields[0])
    return float(-113 + 2 * rssi) if 0 <= rssi <= 31 else None


def parse_cesq_rsrp(lines: Sequence[str]) -> float | None:
    """``+CESQ: <rxlev>,<ber>,<rscp>,<ecno>,<rsrq>,<rsrp>``: RSRP = -141 + x dBm; 255 unknown."""
    fields = _first(lines, "+CESQ:")
    if not fields or len(fields) < 6 or not fields[5].isdigit():
        return None
    rsrp = int(fields[5])
    return float(-141 + rsrp) if 0 <= rsrp <= 97 else None


def parse_reg(lines: Sequence[str], prefix: str) -> str | None:
    """``+CxREG: <n>,<stat>[,...]`` (read answer) -> one of the REG_* states."""
    fields = _first(lines, prefix)
    if not fields or len(fields) < 2 or not fields[1].isdigit():
        return None
    return _STAT.get(int(fields[1]), REG_UNKNOWN)


def parse_cgatt(lines: Sequence[str]) -> bool | None:
    fields = _first(lines, "+CGATT:")
    if not fields or fields[0] not in ("0", "1"):
        return None
    return fields[0] == "1"


def best_registration(states: Sequence[str | None]) -> str:
    """Combine CEREG/CGREG/CREG (in that order of preference) into one state."""
    known = [s for s in states if s is not None]
    for wanted in (REG_HOME, REG_ROAMING, REG_DENIED, REG_SEARCHING, REG_NONE):
        for s in known:
            if s == wanted:
                return s
    return REG_UNKNOWN


def parse_mnc_length(lines: Sequence[str]) -> int | None:
    """MNC length (2 or 3) from EF_AD as read with ``AT+CRSM=176,28589,0,0,4``.

    The fourth byte's low nibble holds it (3GPP TS 31.102, EF_AD); older SIMs have only three
    bytes, and then it is not known.
    """
    fields = _first(lines, "+CRSM:")
    if not fields or len(fields) < 3 or fields[0] not in ("144", "145"):
        return None
    raw = fields[2].strip('"')
    if len(raw) < 8 or len(raw) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", raw):
        return None
    length = int(raw[6:8], 16) & 0x0F
    return length if length in (2, 3) else None


def home_network(imsi: str | None, mnc_length: int | None, registered: str | None) -> str | None:
    """The SIM's home network (MCC + MNC) from its IMSI.

    The IMSI does not say whether its MNC has two digits or three. EF_AD does (``mnc_length``);
    without it, a registered network whose code begins the IMSI is the SIM's own (the modem
    reports the network's code with its real MNC length); otherwise the home network is not
    known, which is no loss for deciding roaming: the SIM is then on another network.
    """
    if not imsi or not imsi.isdigit() or len(imsi) < 6:
        return None
    if mnc_length in (2, 3):
        return imsi[: 3 + mnc_length]
    if registered and imsi.startswith(registered):
        return registered
    return None


def roaming(
    registration: str,
    registered: str | None,
    home: str | None,
    extra_home: Sequence[str] = (),
) -> bool | None:
    """Whether a SIM registered on ``registered`` (MCCMNC) is roaming; None when not registered.

    ``home`` is the SIM's own home network (see ``home_network``), ``extra_home`` the networks
    configured as home for this SIM on top of it (IoT SIMs often register as roaming in their
    own country). A network that says home (stat 1) is home. A roaming registration is home
    only on the SIM's own network or a listed one: national roaming onto another operator,
    even one that is another SIM's home, is roaming.
    """
    if registration not in (REG_HOME, REG_ROAMING):
        return None
    if registration == REG_HOME:
        return False
    if registered is None:
        return True
    return registered != home and registered not in extra_home
