"""A modem simulator on a real pseudo-terminal, for tests and demos.

Serves one ``os.openpty()`` pair from a thread: the agent opens the slave path (or a symlink to
it) exactly like a USB modem port and talks AT to it. Scenarios set the starting state (healthy,
no SIM, PIN or PUK locked, searching, denied, roaming abroad or nationally, weak or fading
signal, hung, half-wedged (answers AT, then nothing), garbage and URC storms, hung until reset,
registered for voice only, detached from packet data); a GNSS engine (``gnss``, a
``agent.modem.simgnss.GnssScript``) answers Quectel or SIMCom position queries along a scripted
track; tests change the state with calls
(``set``, ``hang``, ``urc``, ``reenumerate``), never by wall time, except the short silence
after ``AT+CFUN=1,1``. Each simulated modem has its own ICCID/IMSI/operator and answers one
ICCID command variant.

Shell use (kept running until killed; the symlink follows re-enumerations)::

    python -m agent.modem.simulator --scenario healthy --link /tmp/modemA --ident 1

It is a test fixture, not part of the agent's data path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import signal
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.atomicfile import replace_symlink
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

_STORM = (
    "+CREG: 1",
    "RING",
    '+CEREG: 1,"1A2B","01C3D4E5",7',
    '+QIND: "csq",20,99',
    "+CGREG: 5",
    "SMS DONE",
    '+CMTI: "SM",3',
)
_NOISE = bytes([b for b in range(256) if not (0x20 <= b <= 0x7E) and b not in (0x0D, 0x0A)])


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


class ModemSimulator:
    """``with ModemSimulator("healthy", ident=1) as sim: open(sim.port)``."""

    def __init__(
        self,
        scenario: str = "healthy",
        *,
        ident: int = 0,
        link: str | Path | None = None,
        seed: int = 0,
        **overrides: Any,
    ) -> None:
        self.state = scenario_state(scenario, ident, **overrides)
        self.scenario = scenario
        self._link = Path(link) if link is not None else None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._master = -1
        self._slave = -1
        self._slave_path = ""
        self._buf = bytearray()
        self._silent_until: float | None = None
        self._outbox: list[bytes] = []
        self._requests: list[tuple[str | Path | None, threading.Event]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._csq_steps = 0
        self.commands: list[str] = []
        # Every AT+CFUN=<n> obeyed, in order: the radio power changes a test checks.
        self.cfun_changes: list[int] = []
        self.pin_entries = 0
        self.resets = 0
        self.dropped_bytes = 0
        self.enumerations = 0

    # -- life cycle ------------------------------------------------------------------------
    def __enter__(self) -> ModemSimulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self._new_pty(self._link)
        self._thread = threading.Thread(target=self._serve, name="modem-sim", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._close_pty()
        if self._link is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link.unlink()

    @property
    def port(self) -> str:
        """The path the agent opens: the symlink when there is one, else the pty slave."""
        return str(self._link) if self._link is not None else self._slave_path

    # -- test controls ---------------------------------------------------------------------
    def set(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.state, key):
                    raise AttributeError(f"ModemState has no field {key!r}")
                setattr(self.state, key, value)

    def hang(self, hung: bool = True) -> None:
        self.set(hung=hung)

    def urc(self, line: str) -> None:
        with self._lock:
            self._outbox.append(f"\r\n{line}\r\n".encode("ascii"))

    def reenumerate(self, link: str | Path | None = None, timeout: float = 5.0) -> str:
        """Close the pty (the agent's port dies) and serve a new one, at ``link`` if given.

        Returns the new port path.
        """
        done = threading.Event()
        with self._lock:
            self._requests.append((link, done))
        if not done.wait(timeout):
            raise TimeoutError("simulator did not re-enumerate")
        return self.port

    # -- the pty ---------------------------------------------------------------------------
    def _new_pty(self, link: Path | None) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_path = os.ttyname(slave)
        self._buf.clear()
        self.enumerations += 1
        if link is not None:
            link.parent.mkdir(parents=True, exist_ok=True)
            replace_symlink(link, self._slave_path)
            self._link = link

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def _reenumerate_now(self, link: str | Path | None) -> None:
        old_link = self._link
        self._close_pty()
        if old_link is not None and link is not None and Path(link) != old_link:
            with contextlib.suppress(FileNotFoundError):
                old_link.unlink()
        self._new_pty(Path(link) if link is not None else old_link)
        # A re-enumerated modem has rebooted: defaults come back.
        with self._lock:
            self.state.echo, self.state.cmee = True, 0
            if self.state.gnss is not None:
                self.state.gnss.reset()

    # -- serving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                requests, self._requests = self._requests, []
            for link, done in requests:
                self._reenumerate_now(link)
                done.set()
            self._tick()
            try:
                ready, _, _ = select.select([self._master], [], [], 0.02)
            except (OSError, ValueError):
                continue
            if not ready:
                continue
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                continue
            self._buf.extend(data)
            while b"\r" in self._buf:
                raw, _, rest = bytes(self._buf).partition(b"\r")
                self._buf = bytearray(rest)
                cmd = raw.replace(b"\n", b"").decode("ascii", "replace").strip()
                if cmd:
                    self._on_command(cmd)

    def _tick(self) -> None:
        with self._lock:
            out, self._outbox = self._outbox, []
            silent = self._silent_until
            if silent is not None and time.monotonic() >= silent:
                self._silent_until = None
                self.state.hung = self.state.wedged = False
                out.append(b"\r\nRDY\r\n")
        for chunk in out:
            self._write(chunk)

    def _write(self, data: bytes) -> None:
        # Chunked writes make the reader see lines split across reads.
        while data:
            n = self._rng.randint(1, 16) if len(data) > 16 else len(data)
            try:
                os.write(self._master, data[:n])
            except BlockingIOError:
                self.dropped_bytes += len(data)
                return
            except OSError:
                return
            data = data[n:]

    def _on_command(self, cmd: str) -> None:
        with self._lock:
            self.commands.append(cmd)
            st = self.state
            upper = cmd.upper()
            if self._silent_until is not None:
                return
            if st.hung or (st.wedged and upper != "AT"):
                if st.obeys_reset and upper == "AT+CFUN=1,1":
                    self._start_reset()
                return
            out: list[str] = []
            echo = st.echo
            if upper == "AT+CFUN=1,1":
                self._start_reset()
                lines: list[str] = []
                final = "OK"
            else:
                lines, final = self._answer(upper, cmd)
                if not final:
                    return  # a command the modem leaves unanswered
            garbage, storm = st.garbage, st.urc_storm
        data = bytearray()
        if echo:
            data += cmd.encode("ascii", "replace") + b"\r"
        if storm:
            out.append(self._rng.choice(_STORM))
        for line in lines:
            out.append(line)
            if storm and self._rng.random() < 0.5:
                out.append(self._rng.choice(_STORM))
        if storm:
            out.append(self._rng.choice(_STORM))
        out.append(final)
        for line in out:
            if garbage:
                data += bytes(self._rng.choice(_NOISE) for _ in range(self._rng.randint(1, 6)))
            data += b"\r\n" + line.encode("ascii") + b"\r\n"
        if storm:
            data += f"\r\n{self._rng.choice(_STORM)}\r\n".encode("ascii")
        self._write(bytes(data))

    def _start_reset(self) -> None:
        self.resets += 1
        self._silent_until = time.monotonic() + self.state.reset_silence
        self.state.echo, self.state.cmee = True, 0
        if self.state.gnss is not None:
            self.state.gnss.reset()

    def _error(self, code: int) -> str:
        return f"+CME ERROR: {code}" if self.state.cmee == 1 else "ERROR"

    def _sim_error(self) -> str | None:
        sim = self.state.sim
        if sim == "absent":
            return self._error(10)
        if sim == "pin":
            return self._error(11)
        if sim == "puk":
            return self._error(12)
        return None

    def _answer(self, upper: str, cmd: str) -> tuple[list[str], str]:
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
        if st.gnss is not None and (gnss := st.gnss.answer(upper, self._error)) is not None:
            return gnss
        if upper in ("ATE0", "ATE1"):
            st.echo = upper == "ATE1"
            return [], "OK"
        if upper.startswith("AT+CMEE="):
            st.cmee = int(upper[8:] or 0) if upper[8:].isdigit() else 0
            return [], "OK"
        if upper == "AT+CPIN?":
            if st.sim == "absent":
                return [], self._error(10)
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
            return [], self._error(3)  # operation not allowed
        if code == st.pin:
            st.sim, st.reg = "ready", 1 if st.reg == 0 else st.reg
            return [], "OK"
        st.pin_tries -= 1
        if st.pin_tries <= 0:
            st.sim = "puk"
        return [], self._error(16)  # incorrect password

    def _ef_ad(self) -> tuple[list[str], str]:
        st = self.state
        if st.sim == "absent":
            return [], self._error(10)
        data = "000000" if st.mnc_length is None else f"000000{st.mnc_length:02X}"
        return [f'+CRSM: 144,0,"{data}"'], "OK"

    def _iccid(self, upper: str) -> tuple[list[str], str]:
        st = self.state
        variant = "AT+CRSM" if upper.startswith("AT+CRSM") else upper
        if variant != st.iccid_command:
            return [], "ERROR"
        if st.sim == "absent":
            return [], self._error(10)
        if variant == "AT+CRSM":
            if upper != "AT+CRSM=176,12258,0,0,10":
                return [], "ERROR"
            return [f'+CRSM: 144,0,"{_swap_nibbles(st.iccid)}"'], "OK"
        if variant == "AT+ICCID":
            return [st.iccid], "OK"
        if variant == "AT+CICCID":  # SIMCom answers with the +ICCID prefix
            return [f"+ICCID: {st.iccid}"], "OK"
        return [f"{variant[2:]}: {st.iccid}"], "OK"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.modem.simulator", description=__doc__)
    ap.add_argument("--scenario", default="healthy", choices=SCENARIOS)
    ap.add_argument("--link", required=True, type=Path, help="symlink kept pointing at the pty")
    ap.add_argument("--ident", type=int, default=0, help="selects a distinct ICCID/IMSI")
    ap.add_argument("--operator", default=None, help="numeric MCCMNC")
    ap.add_argument("--iccid-command", default=None, choices=ICCID_VARIANTS)
    ap.add_argument("--rssi", type=int, default=None)
    ap.add_argument("--imsi", default=None, help="the SIM's IMSI (its home network)")
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.operator:
        overrides["operator"] = args.operator
    if args.iccid_command:
        overrides["iccid_command"] = args.iccid_command
    if args.rssi is not None:
        overrides["rssi"] = args.rssi
    if args.imsi:
        overrides["imsi"] = args.imsi
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ModemSimulator(args.scenario, ident=args.ident, link=args.link, **overrides):
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
