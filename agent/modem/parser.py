"""AT response parser: a pure state machine turning modem bytes into events.

Bytes go in (in any chunking), events come out: the echo of the pending command, its
information lines, its final result (``OK``, ``ERROR``, ``+CME ERROR: <n>``...) and unsolicited
result codes (URCs) that may arrive before, inside or after any response. Line noise (bytes that
are not printable ASCII) is dropped and counted; over-long lines are dropped and counted.

It does no I/O and knows no clock: the transport writes commands, reads bytes and enforces
timeouts (and calls ``start``/``reset`` around them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Lines a modem sends on its own. A line with one of these prefixes is a URC unless it is the
# answer of the pending command (see ``_is_answer``).
URC_PREFIXES: tuple[str, ...] = (
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+C5GREG:",
    "+CPIN:",
    "+CMTI:",
    "+CMT:",
    "+CDS:",
    "+CBM:",
    "+CRING:",
    "+CLIP:",
    "+CIEV:",
    "+CTZV:",
    "+CTZE:",
    "+CGEV:",
    "+CUSD:",
    "+QIND:",
    "+QUSIM:",
    "+QSTK:",
    "+CFUN:",
    "+PACSP",
    "^",
    "RING",
    "RDY",
    "SMS DONE",
    "PB DONE",
    "SMS READY",
    "CALL READY",
    "POWERED DOWN",
    "NORMAL POWER DOWN",
    "*PSUTTZ:",
    "DST:",
)

_FINAL_ERRORS = ("ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE")
_CME = re.compile(r"^\+(CME|CMS) ERROR:\s*(.*)$")
_REG_PREFIXES = ("+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:")
_MAX_LINE = 1024


@dataclass(frozen=True)
class Echo:
    """The modem repeating the command it was sent (echo on, or ``ATE0`` answering itself)."""

    text: str


@dataclass(frozen=True)
class Info:
    """An information line belonging to the pending command's response."""

    text: str


@dataclass(frozen=True)
class Urc:
    """An unsolicited result code: not part of any response."""

    text: str


@dataclass(frozen=True)
class Final:
    """The final result of the pending command.

    ``code`` is the numeric ``+CME ERROR``/``+CMS ERROR`` value when the modem gave one.
    """

    ok: bool
    text: str
    code: int | None = None


Event = Echo | Info | Urc | Final


def response_prefix(command: str) -> str | None:
    """``AT+CSQ`` -> ``+CSQ:``; ``AT+CREG?`` -> ``+CREG:``; basic commands have none."""
    cmd = command.strip().upper()
    if not cmd.startswith("AT+") and not cmd.startswith("AT^"):
        return None
    name = re.split(r"[=?]", cmd[2:], maxsplit=1)[0]
    return name + ":"


def _is_final(line: str) -> Final | None:
    if line == "OK":
        return Final(ok=True, text=line)
    if line in _FINAL_ERRORS:
        return Final(ok=False, text=line)
    m = _CME.match(line)
    if m:
        value = m.group(2).strip()
        return Final(ok=False, text=line, code=int(value) if value.isdigit() else None)
    return None


def _is_answer(line: str, prefix: str | None) -> bool:
    """True when ``line`` is the pending command's answer rather than a look-alike URC."""
    if prefix is None or not line.upper().startswith(prefix):
        return False
    if prefix in _REG_PREFIXES:
        # A read answer is "<n>,<stat>[,...]": its second field is a bare number. A URC is
        # "<stat>" or "<stat>,"<lac>",...": one field, or a quoted second one.
        fields = line[len(prefix) :].split(",")
        return len(fields) >= 2 and fields[1].strip().isdigit()
    return True


def _is_urc(line: str) -> bool:
    upper = line.upper()
    return any(upper.startswith(p) for p in URC_PREFIXES)


class AtParser:
    """Incremental parser for one modem port. Not thread-safe: one owner (the transport)."""

    def __init__(self, max_line: int = _MAX_LINE) -> None:
        self._max_line = max_line
        self._buf = bytearray()
        self._overflow = False
        self._command: str | None = None
        self._prefix: str | None = None
        self._echo_seen = False
        self.noise_bytes = 0
        self.long_lines = 0

    @property
    def pending(self) -> str | None:
        return self._command

    def start(self, command: str) -> None:
        """A command was written: lines until its final result belong to it."""
        self._command = command.strip()
        self._prefix = response_prefix(command)
        self._echo_seen = False

    def reset(self) -> None:
        """Forget the pending command and any partial line (after a timeout or a reopen)."""
        self._buf.clear()
        self._overflow = False
        self._command = None
        self._prefix = None
        self._echo_seen = False

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._overflow:
                    self._overflow = False
                    self._buf.clear()
                elif self._buf:
                    line = self._buf.decode("ascii").strip()
                    self._buf.clear()
                    if line:
                        events.append(self._classify(line))
            elif 0x20 <= byte <= 0x7E:
                if self._overflow:
                    continue
                self._buf.append(byte)
                if len(self._buf) > self._max_line:
                    # Never a real response line: drop it whole, up to its end.
                    self._overflow = True
                    self._buf.clear()
                    self.long_lines += 1
            else:
                self.noise_bytes += 1
        return events

    def _classify(self, line: str) -> Event:
        cmd = self._command
        if cmd is None:
            final = _is_final(line)
            # A result with no command pending is a late answer to an abandoned one; report it
            # as unsolicited so that it can never complete the next command.
            return Urc(line) if final is None else Urc(final.text)
        if not self._echo_seen and line.upper() == cmd.upper():
            self._echo_seen = True
            return Echo(line)
        final = _is_final(line)
        if final is not None:
            self.reset_pending()
            return final
        if _is_answer(line, self._prefix):
            return Info(line)
        if _is_urc(line):
            return Urc(line)
        return Info(line)

    def reset_pending(self) -> None:
        self._command = None
        self._prefix = None
        self._echo_seen = False
