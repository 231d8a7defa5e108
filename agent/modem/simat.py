"""The simulated modem's AT command set: its state, the scenarios that set it, the answers.

``ModemState`` is everything a simulated modem answers from; ``scenario_state`` sets it up for
a named scenario (healthy, no SIM, PIN or PUK locked, searching, denied, roaming, weak or fading
signal, hung, ...). ``AtCommands`` answers one command line from that state, the way the 3GPP
TS 27.007 commands and the vendors' ICCID variants answer (the GNSS engine's commands are
agent.modem.simgnss'), and counts what a test checks (radio power changes, PIN entries). It
does no I/O: the pseudo-terminal, echo, line noise, URC storms and resets are
agent.modem.simulator's.

It is a test fixture, not part of the agent's data path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.modem.simgnss import GnssScript

SCENARIOS: tuple[str, ...] = (
    "healthy",
    "iot_home",
    "no_sim",
    "pin",
    "puk",
    "searching",
    "denied",
    "roaming",
    "weak",
    "fading",
    "hang",
    "garbage",
    "urc_storm",
    "reset",
    "voice_only",
    "detached",
    "national_roaming",
    "half_wedged",
)
ICCID_VARIANTS = ("AT+QCCID", "AT+CCID", "AT+ICCID", "AT+CICCID", "AT+CRSM")
FOREIGN_OPERATOR = "23415"
NATIONAL_OPERATOR = "26202"  # another network in the home country of the default IMSI


@dataclass
class ModemState:
    """Everything the simulated modem answers from. Change it through ``ModemSimulator.set``."""

    iccid: str
    imsi: str
    operator: str = "26201"  # the network registered on (the IMSI's home network: 26201)
    mnc_length: int | None = 2  # in EF_AD; None: the SIM's EF_AD has no MNC length byte
    cops_format: int = 0  # AT+COPS=3,<format>: 0 long name, 1 short name, 2 numeric
    iccid_command: str = "AT+QCCID"
    sim: str = "ready"  # ready, absent, pin, puk
    pin: str = "1234"
    pin_tries: int = 3
    reg: int = 1  # 3GPP stat of packet service (CEREG, CGREG): 0 none, 1 home, 2 searching,
    # 3 denied, 5 roaming
    creg: int | None = None  # stat of circuit service (CREG); None: the same as reg
    attached: bool | None = None  # AT+CGATT?; None: attached whenever registered
    rssi: int = 20  # AT+CSQ raw value (0..31, 99 unknown)
    rsrp: int | None = None  # AT+CESQ raw value (None: answers 255, unknown)
    fade: tuple[int, ...] = ()  # rssi per AT+CSQ, the last one sticks
    hung: bool = False
    wedged: bool = False  # answers AT, then nothing (until a reset)
    obeys_reset: bool = True  # a hung modem that still acts on AT+CFUN=1,1
    garbage: bool = False
    urc_storm: bool = False
    echo: bool = True
    cmee: int = 0
    reset_silence: float = 0.3
    cfun: int = 1  # AT+CFUN=<n>: 1 full power, 4 radio off, 0 minimum
    manufacturer: str = "Quectel"  # AT+CGMI
    gnss: GnssScript | None = None  # the GNSS engine's commands (agent.modem.simgnss)

    def reboot(self) -> None:
        """A reset or re-enumerated modem has rebooted: its defaults come back."""
        self.echo, self.cmee = True, 0
        if self.gnss is not None:
            self.gnss.reset()


def identity(ident: int) -> tuple[str, str]:
    """A distinct, well-formed ICCID (19 digits, 89...) and IMSI per simulated modem."""
    return f"8949020000{ident:09d}", f"26201{ident:010d}"


def scenario_state(scenario: str, ident: int = 0, **overrides: Any) -> ModemState:
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of: {', '.join(SCENARIOS)}")
    iccid, imsi = identity(ident)
    s = ModemState(iccid=iccid, imsi=imsi)
    if scenario == "iot_home":
        s.reg = 5
    elif scenario == "no_sim":
        s.sim, s.reg = "absent", 0
    elif scenario == "pin":
        s.sim, s.reg = "pin", 0
    elif scenario == "puk":
        s.sim, s.reg = "puk", 0
    elif scenario == "searching":
        s.reg = 2
    elif scenario == "denied":
        s.reg = 3
    elif scenario == "roaming":
        s.reg, s.operator = 5, FOREIGN_OPERATOR
    elif scenario == "weak":
        s.rssi = 3
    elif scenario == "fading":
        s.fade = (20, 20, 12, 6, 3, 2)
    elif scenario == "hang":
        s.hung, s.obeys_reset = True, False
    elif scenario == "reset":
        s.hung, s.obeys_reset = True, True
    elif scenario == "garbage":
        s.garbage = True
    elif scenario == "urc_storm":
        s.urc_storm = True
    elif scenario == "voice_only":
        s.reg, s.creg = 2, 1  # registered for calls, still searching for packet service
    elif scenario == "detached":
        s.attached = False  # registered, but packet data detached (or barred)
    elif scenario == "half_wedged":
        s.wedged = True
    elif scenario == "national_roaming":
        s.reg, s.operator = 5, NATIONAL_OPERATOR
    return replace(s, **overrides)


def _swap_nibbles(iccid: str) -> str:
    digits = iccid + "F" * (len(iccid) % 2)
    return "".join(digits[i + 1] + digits[i] for i in range(0, len(digits), 2))


class AtCommands:
    """The answers of one simulated modem; the caller holds its lock around ``answer``."""

    def __init__(self, state: ModemState) -> None:
        self.state = state
        # Every AT+CFUN=<n> obeyed, in order: the radio power changes a test checks.
        self.cfun_changes: list[int] = []
        self.pin_entries = 0
        self._csq_steps = 0

    def error(self, code: int) -> str:
        return f"+CME ERROR: {code}" if self.state.cmee == 1 else "ERROR"

    def _sim_error(self) -> str | None:
        sim = self.state.sim
        if sim == "absent":
            return self.error(10)
        if sim == "pin":
            return self.error(11)
        if sim == "puk":
            return self.error(12)
        return None

    def answer(self, upper: str, cmd: str) -> tuple[list[str], str]:
        st = self.state
        if upper == "AT":
            return [], "OK"
        if upper in ("AT+CFUN=0", "AT+CFUN=1", "AT+CFUN=4"):
            st.cfun = int(upper[8:])
            self.cfun_changes.append(st.cfun)
            return [], "OK"
        if upper == "AT+CFUN?":
            return [f"+CFUN: {st.cfun}"], "OK"
        if upper == "AT+CGMI":
            return [st.manufacturer], "OK"
        if st.gnss is not None and (gnss := st.gnss.answer(upper, self.error)) is not None:
            return gnss
        if upper in ("ATE0", "ATE1"):
            st.echo = upper == "ATE1"
            return [], "OK"
        if upper.startswith("AT+CMEE="):
            st.cmee = int(upper[8:] or 0) if upper[8:].isdigit() else 0
            return [], "OK"
        if upper == "AT+CPIN?":
            if st.sim == "absent":
                return [], self.error(10)
            word = {"ready": "READY", "pin": "SIM PIN", "puk": "SIM PUK"}[st.sim]
            return [f"+CPIN: {word}"], "OK"
        if upper.startswith("AT+CPIN="):
            return self._enter_pin(cmd)
        if upper == "AT+CRSM=176,28589,0,0,4":
            return self._ef_ad()
        if upper in ("AT+QCCID", "AT+CCID", "AT+ICCID", "AT+CICCID") or upper.startswith(
            "AT+CRSM="
        ):
            return self._iccid(upper)
        err = self._sim_error()
        if upper == "AT+CIMI":
            return ([], err) if err else ([st.imsi], "OK")
        if upper.startswith("AT+COPS=3,") and upper[10:] in ("0", "1", "2"):
            st.cops_format = int(upper[10:])
            return [], "OK"
        if upper.startswith("AT+COPS="):
            return [], "OK"
        registered = err is None and (st.reg in (1, 5) or st.creg in (1, 5))
        if upper == "AT+COPS?":
            if registered:
                name = {0: f"Network {st.operator}", 1: f"N{st.operator}"}.get(st.cops_format)
                return [f'+COPS: 0,{st.cops_format},"{name or st.operator}",7'], "OK"
            return ["+COPS: 0"], "OK"
        if upper == "AT+CSQ":
            if st.fade:
                st.rssi = st.fade[min(self._csq_steps, len(st.fade) - 1)]
                self._csq_steps += 1
            return [f"+CSQ: {st.rssi},99"], "OK"
        if upper == "AT+CESQ":
            rsrp = 255 if st.rsrp is None else st.rsrp
            return [f"+CESQ: 99,99,255,255,{255 if st.rsrp is None else 20},{rsrp}"], "OK"
        for reg in ("CREG", "CGREG", "CEREG"):
            if upper == f"AT+{reg}?":
                stat = st.creg if reg == "CREG" and st.creg is not None else st.reg
                return [f"+{reg}: 0,{stat if err is None else 0}"], "OK"
        if upper == "AT+CGATT?":
            attached = st.reg in (1, 5) and err is None
            if st.attached is not None:
                attached = st.attached and err is None
            return [f"+CGATT: {int(attached)}"], "OK"
        return [], "ERROR"

    def _enter_pin(self, cmd: str) -> tuple[list[str], str]:
        st = self.state
        self.pin_entries += 1
        code = cmd.split("=", 1)[1].strip().strip('"')
        if st.sim != "pin":
            return [], self.error(3)  # operation not allowed
        if code == st.pin:
            st.sim, st.reg = "ready", 1 if st.reg == 0 else st.reg
            return [], "OK"
        st.pin_tries -= 1
        if st.pin_tries <= 0:
            st.sim = "puk"
        return [], self.error(16)  # incorrect password

    def _ef_ad(self) -> tuple[list[str], str]:
        st = self.state
        if st.sim == "absent":
            return [], self.error(10)
        data = "000000" if st.mnc_length is None else f"000000{st.mnc_length:02X}"
        return [f'+CRSM: 144,0,"{data}"'], "OK"

    def _iccid(self, upper: str) -> tuple[list[str], str]:
        st = self.state
        variant = "AT+CRSM" if upper.startswith("AT+CRSM") else upper
        if variant != st.iccid_command:
            return [], "ERROR"
        if st.sim == "absent":
            return [], self.error(10)
        if variant == "AT+CRSM":
            if upper != "AT+CRSM=176,12258,0,0,10":
                return [], "ERROR"
            return [f'+CRSM: 144,0,"{_swap_nibbles(st.iccid)}"'], "OK"
        if variant == "AT+ICCID":
            return [st.iccid], "OK"
        if variant == "AT+CICCID":  # SIMCom answers with the +ICCID prefix
            return [f"+ICCID: {st.iccid}"], "OK"
        return [f"{variant[2:]}: {st.iccid}"], "OK"
