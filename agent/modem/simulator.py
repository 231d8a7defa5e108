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
ICCID command variant. The scenarios, the state and the answers are agent.modem.simat's; this
module is the pseudo-terminal around them: echo, line noise, URC storms, hangs, resets and
re-enumeration.

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
from pathlib import Path
from typing import Any

from agent.atomicfile import replace_symlink
from agent.modem.simat import (
    FOREIGN_OPERATOR,
    ICCID_VARIANTS,
    NATIONAL_OPERATOR,
    SCENARIOS,
    AtCommands,
    ModemState,
    identity,
    scenario_state,
)

__all__ = [
    "FOREIGN_OPERATOR",
    "ICCID_VARIANTS",
    "NATIONAL_OPERATOR",
    "SCENARIOS",
    "ModemSimulator",
    "ModemState",
    "identity",
    "main",
    "scenario_state",
]

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
        self.at = AtCommands(self.state)  # the answers (agent.modem.simat)
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
        self.commands: list[str] = []
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
    def cfun_changes(self) -> list[int]:
        """Every AT+CFUN=<n> obeyed, in order: the radio power changes a test checks."""
        return self.at.cfun_changes

    @property
    def pin_entries(self) -> int:
        return self.at.pin_entries

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
        with self._lock:
            self.state.reboot()

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
                lines, final = self.at.answer(upper, cmd)
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
        self.state.reboot()


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
