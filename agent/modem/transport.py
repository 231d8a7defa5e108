"""AT transport: one modem port opened through pyserial, commands with per-command timeouts.

Opens ports with ``serial.serial_for_url`` (a device path, a pseudo-terminal or a test URL such
as ``loop://``), writes commands, feeds the bytes read to the pure ``AtParser`` and returns the
response. URCs seen along the way are kept in a bounded buffer (drops counted). pyserial and OS
errors become ``PortGone``; a missing final result becomes ``AtTimeout``. It decides nothing:
the probe interprets answers, the manager decides what to do with a silent port.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import serial

from agent.modem.parser import AtParser, Echo, Final, Info, Urc
from agent.modem.report import AtTimeout, PortGone

log = logging.getLogger(__name__)

_READ_SLICE = 0.05  # seconds a single read may block: keeps timeouts and close() responsive


@dataclass(frozen=True)
class AtResponse:
    command: str
    ok: bool
    lines: tuple[str, ...]
    final: str
    code: int | None = None  # +CME/+CMS ERROR number


class AtTransport:
    """One open modem port. Not thread-safe: one owner at a time."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        timeout: float = 5.0,
        urc_limit: int = 64,
        abort: threading.Event | None = None,
    ) -> None:
        self.url = url
        # Set by the owner's owner when stopping: a command waiting for a silent modem gives up
        # at the next read slice instead of at its timeout.
        self._abort = abort
        self.baudrate = baudrate
        self.timeout = timeout
        self._serial: serial.SerialBase | None = None
        self._parser = AtParser()
        self._urcs: deque[str] = deque(maxlen=urc_limit)
        self.urcs_seen = 0
        self.urcs_dropped = 0
        self.timeouts = 0

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    @property
    def noise_bytes(self) -> int:
        return self._parser.noise_bytes

    def open(self) -> None:
        if self._serial is not None:
            return
        try:
            # exclusive: two owners of one port would steal each other's answers.
            self._serial = serial.serial_for_url(
                self.url,
                baudrate=self.baudrate,
                timeout=_READ_SLICE,
                write_timeout=self.timeout,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as err:
            raise PortGone(f"{self.url}: cannot open modem port: {err}") from None
        self._parser.reset()

    def close(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError) as err:
                log.debug("%s: close failed: %s", self.url, err)

    def __enter__(self) -> AtTransport:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def take_urcs(self) -> list[str]:
        out = list(self._urcs)
        self._urcs.clear()
        return out

    def send_only(self, command: str) -> None:
        """Write a command without waiting for its answer (a reset that may never answer)."""
        ser = self._require()
        self._parser.reset()
        self._write(ser, command)

    def command(self, command: str, timeout: float | None = None) -> AtResponse:
        """Send one command and wait for its final result; raise AtTimeout or PortGone."""
        ser = self._require()
        limit = self.timeout if timeout is None else timeout
        self._drain(ser)
        self._parser.start(command)
        self._write(ser, command)
        deadline = time.monotonic() + limit
        lines: list[str] = []
        while True:
            for event in self._parser.feed(self._read(ser)):
                if isinstance(event, Info):
                    lines.append(event.text)
                elif isinstance(event, Urc):
                    self._keep_urc(event.text)
                elif isinstance(event, Final):
                    return AtResponse(command, event.ok, tuple(lines), event.text, event.code)
                elif isinstance(event, Echo):
                    continue
            if self._abort is not None and self._abort.is_set():
                self._parser.reset()
                raise PortGone(f"{self.url}: stopping, {command} abandoned")
            if time.monotonic() >= deadline:
                self._parser.reset()
                self.timeouts += 1
                raise AtTimeout(
                    f"{self.url}: no answer to {command} within {limit:g} s", command, limit
                )

    def _require(self) -> serial.SerialBase:
        if self._serial is None:
            raise PortGone(f"{self.url}: modem port is not open")
        return self._serial

    def _write(self, ser: serial.SerialBase, command: str) -> None:
        try:
            ser.write(command.encode("ascii") + b"\r")
            ser.flush()
        except (serial.SerialException, OSError) as err:
            self.close()
            raise PortGone(f"{self.url}: write failed: {err}") from None

    def _read(self, ser: serial.SerialBase) -> bytes:
        try:
            waiting = ser.in_waiting
            return bytes(ser.read(max(1, waiting)))
        except (serial.SerialException, OSError, TypeError) as err:
            # TypeError: pyserial's posix read can trip over a descriptor closed under it.
            self.close()
            raise PortGone(f"{self.url}: read failed: {err}") from None

    def _drain(self, ser: serial.SerialBase) -> None:
        """Read what is already buffered (late answers, URCs) before a new command."""
        self._parser.reset()
        try:
            waiting = ser.in_waiting
        except (serial.SerialException, OSError) as err:
            self.close()
            raise PortGone(f"{self.url}: port failed: {err}") from None
        if waiting:
            for event in self._parser.feed(self._read(ser)):
                if isinstance(event, Urc):
                    self._keep_urc(event.text)
            self._parser.reset()

    def _keep_urc(self, text: str) -> None:
        self.urcs_seen += 1
        if len(self._urcs) == self._urcs.maxlen:
            self.urcs_dropped += 1
        self._urcs.append(text)
