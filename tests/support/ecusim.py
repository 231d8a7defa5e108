"""ECUs for the diagnostics tests: they answer OBD-II and UDS over ISO-TP on a python-can bus.

Each simulated ECU has a physical ISO-TP stack (its request id -> its answer id) and a
functional one (0x7DF, or 0x18DB33F1 with 29-bit ids): can-isotp's user-space stacks reading
through one python-can Notifier, or with ``kernel=True`` (SocketCAN only) the kernel's
can_isotp sockets, so the agent's user-space ISO-TP is checked against the kernel's. Answers
always leave through the physical stack, so multi-frame answers wait for the tester's flow
control as a real ECU's do. An ECU can be told to answer
"response pending" (0x78) a number of times first, to stay silent, or to change its DTCs while
running. What it was asked is recorded for the tests to check (PIDs per request, unsupported
PIDs asked). ``ReadingLog`` keeps what the agent's poller handed on, by signal.
"""

from __future__ import annotations

import select
import threading
from dataclasses import dataclass, field
from typing import Any

import can
import isotp

from agent.diag.obd import PIDS, SUPPORT_PIDS
from agent.diag.poller import Reading
from agent.spime.dtc import dtc_code, split_raw


@dataclass
class Ecu:
    answer_id: int  # 0x7E8.. (11-bit) or 0x18DAF1xx (29-bit)
    pids: dict[int, int] = field(default_factory=dict)  # PID -> raw value
    dtcs: dict[int, list[int]] = field(default_factory=dict)  # mode (3, 7, 0xA) -> 2-byte DTCs
    uds_dtcs: dict[int, int] = field(default_factory=dict)  # 3-byte DTC -> status byte
    pending: int = 0  # "response pending" answers before each real answer
    silent: bool = False
    asked: list[bytes] = field(default_factory=list)
    request_id: int | None = None  # physical request id (default: the OBD-II pair)

    def supported_bitmap(self, base: int) -> int:
        have = set(self.pids)
        bits = 0
        for i in range(32):
            pid = base + 1 + i
            more = pid in SUPPORT_PIDS and any(p > pid for p in have)
            if pid in have or more:
                bits |= 1 << (31 - i)
        return bits

    def answer(self, req: bytes) -> bytes | None:
        self.asked.append(req)
        mode = req[0]
        if mode == 0x01:
            out = bytearray([0x41])
            for pid in req[1:]:
                if pid in SUPPORT_PIDS:
                    bitmap = self.supported_bitmap(pid)
                    if bitmap or pid == 0:
                        out += bytes([pid]) + bitmap.to_bytes(4, "big")
                elif pid in self.pids:
                    out += bytes([pid]) + self.pids[pid].to_bytes(PIDS[pid].size, "big")
            return bytes(out) if len(out) > 1 else None
        if mode in (0x03, 0x07, 0x0A):
            dtcs = self.dtcs.get(mode, [])
            return bytes([mode + 0x40, len(dtcs)]) + b"".join(d.to_bytes(2, "big") for d in dtcs)
        if mode == 0x19 and len(req) == 3 and req[1] == 0x02:
            out = bytearray([0x59, 0x02, 0xFF])
            for dtc, status in sorted(self.uds_dtcs.items()):
                if status & req[2]:
                    out += dtc.to_bytes(3, "big") + bytes([status])
            return bytes(out)
        return bytes([0x7F, mode, 0x11])  # service not supported


class EcuSim:
    """The ECUs on one bus; use as a context manager."""

    def __init__(
        self,
        ecus: list[Ecu],
        *,
        interface: str,
        channel: str,
        extended: bool = False,
        kernel: bool = False,
    ):
        self.ecus = ecus
        self.extended = extended
        self.channel = channel
        self.kernel = kernel
        self.bus: Any = None
        self.notifier: Any = None
        if not kernel:
            self.bus = can.Bus(interface=interface, channel=channel, ignore_config=True)
            self.notifier = can.Notifier(self.bus, [], timeout=0.05)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stacks: list[Any] = []

    def _addresses(self, ecu: Ecu) -> tuple[isotp.Address, isotp.Address]:
        if self.extended:
            mode = isotp.AddressingMode.Normal_29bits
            req = ecu.request_id or (0x18DA00F1 | ((ecu.answer_id & 0xFF) << 8))
            functional = 0x18DB33F1
        else:
            mode = isotp.AddressingMode.Normal_11bits
            req = ecu.request_id or ecu.answer_id - 8
            functional = 0x7DF
        return (
            isotp.Address(mode, txid=ecu.answer_id, rxid=req),
            isotp.Address(mode, txid=ecu.answer_id, rxid=functional),
        )

    def _kernel_sockets(self, ecu: Ecu) -> tuple[Any, Any]:
        socks = []
        for addr in self._addresses(ecu):
            s = isotp.socket(timeout=0.05)
            s.set_opts(txpad=0x55)
            s.set_fc_opts(bs=0, stmin=0)
            s.bind(self.channel, addr)
            socks.append(s)
        self._stacks += socks
        return socks[0], socks[1]

    def __enter__(self) -> EcuSim:
        for ecu in self.ecus:
            if self.kernel:
                phys, func = self._kernel_sockets(ecu)
                t = threading.Thread(target=self._serve_kernel, args=(ecu, phys, func), daemon=True)
                t.start()
                self._threads.append(t)
                continue
            phys_addr, func_addr = self._addresses(ecu)
            params = {"tx_padding": 0x55, "blocksize": 0, "stmin": 0}
            phys = isotp.NotifierBasedCanStack(
                self.bus, self.notifier, address=phys_addr, params=params
            )
            func = isotp.NotifierBasedCanStack(
                self.bus, self.notifier, address=func_addr, params=params
            )
            phys.start()
            func.start()
            self._stacks += [phys, func]
            t = threading.Thread(target=self._serve, args=(ecu, phys, func), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for st in self._stacks:
            if self.kernel:
                st.close()
            else:
                st.stop()
        if self.notifier is not None:
            self.notifier.stop()
            self.bus.shutdown()

    def _respond(self, ecu: Ecu, phys: Any, req: bytes | None) -> None:
        if not req or ecu.silent:
            return
        answer = ecu.answer(bytes(req))
        if answer is None:
            return
        for _ in range(ecu.pending):
            phys.send(bytes([0x7F, req[0], 0x78]))
            self._stop.wait(0.05)
        phys.send(answer)

    def _serve(self, ecu: Ecu, phys: Any, func: Any) -> None:
        while not self._stop.is_set():
            for stack in (phys, func):
                self._respond(ecu, phys, stack.recv(block=True, timeout=0.01))

    def _serve_kernel(self, ecu: Ecu, phys: Any, func: Any) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([phys, func], [], [], 0.05)
            for sock in ready:
                try:
                    req = sock.recv()
                except OSError:  # a broken exchange (e.g. a flow control timeout)
                    continue
                self._respond(ecu, phys, req)


def request_category(payload: bytes) -> str:
    """The consent category a request asks for: ``vehicle_health`` (mode 01 PID values),
    ``diagnostics`` (DTC lists), or ``discovery`` (mode 01 support bitmaps only)."""
    if payload[:1] == b"\x01":
        return "discovery" if all(p in SUPPORT_PIDS for p in payload[1:]) else "vehicle_health"
    return "diagnostics"


class RequestLog:
    """The diagnostic requests on a ``virtual`` channel (11-bit ids), in the order the bus
    carried them: single frames to the functional id 0x7DF or a physical request id
    0x7E0-0x7E7 (the tester's flow controls are not requests). ``mark()`` puts a marker frame
    on the bus; since a virtual bus hands a frame to every reader inside ``send``, a request
    that comes after a mark was sent after ``mark()`` returned."""

    MARK_ID = 0x5A5

    def __init__(self, channel: str) -> None:
        self._reader = can.Bus(interface="virtual", channel=channel, ignore_config=True)
        self._marker = can.Bus(interface="virtual", channel=channel, ignore_config=True)
        self._marks = 0  # marks sent
        self._passed = 0  # the last mark read back from the bus
        self._seen: list[tuple[int, bytes]] = []  # (marks before, request payload)
        self._lock = threading.Lock()

    def __enter__(self) -> RequestLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.shutdown()
        self._marker.shutdown()

    def mark(self) -> int:
        """A marker on the bus now; its number, for ``after``."""
        with self._lock:
            self._marks += 1
            n = self._marks
        self._marker.send(
            can.Message(arbitration_id=self.MARK_ID, data=bytes([n]), is_extended_id=False)
        )
        return n

    def requests(self) -> list[tuple[int, bytes]]:
        """Every request so far: (the number of the last mark before it, its payload)."""
        with self._lock:
            while (msg := self._reader.recv(0)) is not None:
                self._take(msg)
            return list(self._seen)

    def after(self, mark: int) -> list[bytes]:
        return [payload for m, payload in self.requests() if m >= mark]

    def categories(self, mark: int = 0) -> list[str]:
        """The category of each request after ``mark`` (0: every request)."""
        return [request_category(payload) for payload in self.after(mark)]

    def _take(self, msg: can.Message) -> None:
        data = bytes(msg.data)
        if msg.is_extended_id or not data:
            return
        if msg.arbitration_id == self.MARK_ID:
            self._passed = data[0]
            return
        functional = msg.arbitration_id == 0x7DF
        if (functional or 0x7E0 <= msg.arbitration_id <= 0x7E7) and data[0] >> 4 == 0:
            self._seen.append((self._passed, data[1 : 1 + (data[0] & 0x0F)]))


class ReadingLog:
    """The readings a ``DiagPoller`` emitted (pass it as ``emit``), from its thread."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Reading]) -> None:
        with self.lock:
            self.readings.extend(batch)

    def values(self, name: str) -> list[int]:
        """The raw values of signal ``name``, in the order they came."""
        with self.lock:
            return [r.raw for r in self.readings if r.name == name]

    def codes(self, name: str) -> list[tuple[str, int]]:
        """The DTC events of signal ``name``: (code, answer id of the ECU) each."""
        with self.lock:
            return [
                (dtc_code(split_raw(r.raw)[1]), split_raw(r.raw)[0])
                for r in self.readings
                if r.name == name
            ]
