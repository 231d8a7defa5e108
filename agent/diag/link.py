"""ISO-TP (ISO 15765-2) over one python-can bus, for diagnostic requests and their answers,
and the small interface (``Transport``) it shares with the kernel's ISO-TP (agent.diag.kernel).

The ISO-TP protocol is can-isotp's (its user-space transport layer, so it runs over any
python-can interface: SocketCAN, virtual, vendor adapters); this module only gives it frames
and takes its frames. One endpoint per ECU, keyed by the CAN id the ECU answers on: it
reassembles multi-frame answers and sends the flow control to that ECU's physical request id.
Functional requests (OBD-II: 0x7DF, or 0x18DB33F1 with 29-bit ids) are single frames to all
ECUs. Every endpoint is driven from the caller's thread (no thread per ECU); answers from ECUs
not seen before open an endpoint, at most ``MAX_ECUS``. Bits on the bus, sent and received, are
counted for the bus-load cap (agent.diag.schedule). Errors of the bus (a full transmit queue, a
bus that went down) are raised as LinkError; ISO-TP protocol errors (a lost consecutive frame)
are counted. It does not decide what to ask (agent.diag.poller) nor which transport a bus
uses (agent.diag.transport).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import can
import isotp

from agent.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from agent.config import BusConfig

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

MAX_ECUS = 16
TESTER = 0xF1  # the external test equipment's address in 29-bit ids (ISO 15765-4)
OBD_11BIT = (0x7DF, 0x7E8, 0x7F8)  # functional request id, answer ids and their mask
OBD_29BIT = (0x18DB33F1, 0x18DAF100, 0x1FFFFF00)
# Padding of transmitted frames: ISO 15765-4 asks for 8-byte frames.
PADDING = 0xCC
# A python-can send waits at most this long for room in the transmit queue (a busy bus).
SEND_TIMEOUT = 0.05


class LinkError(Exception):
    """The bus refused a frame or failed: a busy or down bus."""


def frame_bits(data_bytes: int, extended: bool) -> int:
    """Bits a classic CAN data frame takes on the wire, worst-case bit stuffing and the
    interframe space included."""
    n = 8 * data_bytes
    if extended:
        return 67 + n + (54 + n - 1) // 4
    return 47 + n + (34 + n - 1) // 4


def message_frames(size: int) -> int:
    """Classic 8-byte CAN frames an ISO-TP message of ``size`` bytes takes with normal
    addressing: a single frame up to 7 bytes, else a first frame (6 bytes) and consecutive
    frames (7 bytes each). The receiver's flow control is not included."""
    if size <= 7:
        return 1
    return 1 + -(-(size - 6) // 7)


def physical_tx(rx_id: int, extended: bool) -> int:
    """The request id of the ECU answering on ``rx_id`` (OBD-II pairs: 0x7E8 -> 0x7E0,
    0x18DAF1xx -> 0x18DAxxF1)."""
    if extended:
        return 0x18DA0000 | ((rx_id & 0xFF) << 8) | TESTER
    return rx_id - 8


@dataclass
class LinkStats:
    frames_sent: int = 0
    frames_received: int = 0
    bits: int = 0
    isotp_errors: int = 0
    ignored_ecus: int = 0
    # ECUs whose answer the link could not take because it had no ear for them yet (the
    # kernel's 29-bit sockets are opened on a first answer); they are heard from then on.
    missed_ecus: int = 0


class Transport(Protocol):
    """What the diagnostics ask of an ISO-TP transport: requests out, complete answers in,
    the bus bits both took counted in ``stats`` (for the load cap). Bus failures raise
    LinkError; ISO-TP protocol errors are counted in ``stats.isotp_errors``."""

    kind: str  # "user" or "kernel", for the status
    clock: Callable[[], float]
    stats: LinkStats

    def send_functional(self, payload: bytes) -> None: ...
    def send(self, rx: int, payload: bytes) -> None: ...
    def discard(self) -> None: ...
    def poll(self, timeout: float) -> tuple[int, bytes] | None: ...
    def close(self) -> None: ...


class _Endpoint:
    """One ISO-TP conversation partner: can-isotp's transport layer fed from a deque."""

    def __init__(self, link: IsoTpLink, tx: int, rx: int) -> None:
        self.rx = rx
        self.frames: deque[isotp.CanMessage] = deque(maxlen=512)
        mode = (
            isotp.AddressingMode.Normal_29bits
            if link.extended
            else isotp.AddressingMode.Normal_11bits
        )
        self.layer = isotp.TransportLayerLogic(
            rxfn=self._rx,
            txfn=link.transmit,
            address=isotp.Address(mode, txid=tx, rxid=rx),
            error_handler=link.on_isotp_error,
            params={"tx_padding": PADDING, "blocksize": 0, "stmin": 0},
        )

    def _rx(self, _timeout: float) -> isotp.CanMessage | None:
        return self.frames.popleft() if self.frames else None


class IsoTpLink:
    """ISO-TP endpoints over an open python-can bus (closed with the link)."""

    kind = "user"

    @classmethod
    def open(
        cls,
        bus: BusConfig,
        *,
        extended: bool,
        pairs: dict[int, int],
        clock: Callable[[], float] = time.monotonic,
    ) -> IsoTpLink:
        """A python-can bus of its own on the ``[[bus]]``'s channel, with kernel filters (where
        the interface has them) that keep only the answer ids."""
        kwargs: dict[str, Any] = dict(bus.options)
        if bus.bitrate:
            kwargs["bitrate"] = bus.bitrate
        filters = cls(None, extended=extended, pairs=pairs).can_filters()
        opened = can.Bus(
            interface=bus.interface,
            channel=bus.channel,
            can_filters=filters,
            ignore_config=True,
            **kwargs,
        )
        return cls(opened, extended=extended, pairs=pairs, clock=clock)

    def __init__(
        self,
        bus: Any,
        *,
        extended: bool,
        pairs: dict[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.extended = extended
        self.clock = clock
        self.stats = LinkStats()
        functional, self.answer_id, self.answer_mask = OBD_29BIT if extended else OBD_11BIT
        # Configured (UDS) pairs, rx -> tx: these ECUs' endpoints use the given request id.
        self.pairs = dict(pairs or {})
        self.endpoints: dict[int, _Endpoint] = {}
        # Functional requests are single frames only; this endpoint is never fed a frame, so
        # its receive id (which can-isotp wants different from the sending one) is unused.
        self.functional = _Endpoint(self, functional, functional ^ 1)
        self.answers: deque[tuple[int, bytes]] = deque(maxlen=256)
        self.error: Exception | None = None

    def can_filters(self) -> list[dict[str, Any]]:
        """Kernel filters for the bus socket: OBD answer ids and the configured ECUs."""
        filters = [
            {"can_id": self.answer_id, "can_mask": self.answer_mask, "extended": self.extended}
        ]
        full = 0x1FFFFFFF if self.extended else 0x7FF
        for rx in self.pairs:
            if rx & self.answer_mask != self.answer_id:
                filters.append({"can_id": rx, "can_mask": full, "extended": self.extended})
        return filters

    def close(self) -> None:
        bus, self.bus = self.bus, None
        if bus is not None:
            try:
                bus.shutdown()
            except Exception as err:  # a broken bus may fail to close; nothing left to do
                log.debug("diagnostics: bus shutdown: %s", err)

    # -- can-isotp's side --------------------------------------------------------------------
    def transmit(self, msg: isotp.CanMessage) -> None:
        frame = can.Message(
            arbitration_id=msg.arbitration_id,
            data=msg.data,
            is_extended_id=msg.is_extended_id,
            dlc=msg.dlc,
        )
        try:
            self.bus.send(frame, timeout=SEND_TIMEOUT)
        except (can.CanError, OSError) as err:
            # Raised out of the transport layer's process() to send() / poll().
            raise LinkError(f"{type(err).__name__}: {err}") from err
        self.stats.frames_sent += 1
        self.stats.bits += frame_bits(len(msg.data), msg.is_extended_id)

    def on_isotp_error(self, err: Exception) -> None:
        self.stats.isotp_errors += 1
        rlog.log(logging.INFO, ("isotp", type(err).__name__), "diagnostics: ISO-TP: %s", err)

    # -- requests and answers ----------------------------------------------------------------
    def endpoint(self, rx: int) -> _Endpoint | None:
        ep = self.endpoints.get(rx)
        if ep is None:
            if len(self.endpoints) >= MAX_ECUS:
                self.stats.ignored_ecus += 1
                return None
            tx = self.pairs.get(rx, physical_tx(rx, self.extended))
            ep = self.endpoints[rx] = _Endpoint(self, tx, rx)
        return ep

    def send_functional(self, payload: bytes) -> None:
        """A single-frame request to every ECU (OBD-II functional addressing)."""
        self.functional.layer.send(payload, isotp.TargetAddressType.Functional)
        self.functional.layer.process(do_rx=False)

    def send(self, rx: int, payload: bytes) -> None:
        """A request to the ECU that answers on ``rx`` (physical addressing)."""
        ep = self.endpoint(rx)
        if ep is None:
            raise LinkError(f"no room for ECU {rx:X}")
        ep.layer.send(payload)
        self._drive(ep)

    def discard(self) -> None:
        """Forget answers not yet taken (a late answer to an earlier request)."""
        self.answers.clear()

    def poll(self, timeout: float) -> tuple[int, bytes] | None:
        """The next complete answer ``(ECU's answer id, payload)``, waiting at most
        ``timeout`` seconds; frames go through the ISO-TP endpoints meanwhile."""
        deadline = self.clock() + timeout
        while not self.answers:
            left = deadline - self.clock()
            if left <= 0:
                return None
            # Short reads: an endpoint in a multi-frame exchange has timers to check.
            try:
                msg = self.bus.recv(min(left, 0.01))
            except (can.CanError, OSError) as err:
                raise LinkError(f"{type(err).__name__}: {err}") from err
            if msg is not None:
                self._feed(msg)
            for ep in list(self.endpoints.values()):
                if ep.frames or ep.layer.is_rx_active() or ep.layer.transmitting():
                    self._drive(ep)
        return self.answers.popleft()

    def _feed(self, msg: Any) -> None:
        if msg.is_error_frame or msg.is_remote_frame or msg.is_extended_id != self.extended:
            return
        rx = msg.arbitration_id
        if rx & self.answer_mask != self.answer_id and rx not in self.pairs:
            return
        self.stats.frames_received += 1
        self.stats.bits += frame_bits(len(msg.data), self.extended)
        ep = self.endpoint(rx)
        if ep is None:
            return
        ep.frames.append(
            isotp.CanMessage(
                arbitration_id=rx,
                data=bytes(msg.data),
                dlc=msg.dlc,
                extended_id=msg.is_extended_id,
            )
        )

    def _drive(self, ep: _Endpoint) -> None:
        ep.layer.process()
        while ep.layer.available():
            data = ep.layer.recv()
            if data is not None:
                self.answers.append((ep.rx, bytes(data)))
