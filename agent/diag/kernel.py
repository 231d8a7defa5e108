"""ISO-TP (ISO 15765-2) through the kernel: the ``can_isotp`` module's AF_CAN / CAN_ISOTP sockets
on a SocketCAN interface, for diagnostic requests and their answers.

The kernel segments, reassembles, sends the flow control and pads the frames (8 bytes, as
ISO 15765-4 asks); this module opens the sockets through can-isotp's ``isotp.socket`` wrapper
and moves whole messages only, so no frame costs Python anything. A kernel socket listens on
one CAN id, and functional requests are answered by ECUs not known in advance. With 11-bit ids
the eight OBD-II answer ids (0x7E8-0x7EF) and every configured UDS pair have their sockets from
the start, so the first frame of a multi-frame answer always meets a socket that sends its
flow control. With 29-bit ids (0x18DAF100-0x18DAF1FF) that would be 255 sockets, and a socket
holds about 0.25 MB of kernel memory on Linux 6.1 (64 kB message buffers), so only the UDS
pairs start with one: a raw CAN socket whose joined kernel filters pass only answer ids
without a socket notices an ECU that answers for the first time and opens its socket (at most
MAX_ECUS); that first answer is lost (discovery asks again), later ones arrive whole, and once
every ECU has its socket the raw socket receives nothing. Functional requests (0x7DF,
0x18DB33F1) leave through a socket that sends single frames and registers no receive filter
(CAN_ISOTP_SF_BROADCAST).

The kernel hides the frames, so the bus bits for the load cap (agent.diag.schedule) are counted
from the message lengths: the frames of each ISO-TP message (agent.diag.link.message_frames),
8 bytes each, and one flow control per multi-frame answer. There is no python-can bus here: the
answers reach only these sockets (no user-space frame feed sees them), and the broadcast
pipeline's own socket and filters are left as they are. Errors of the interface (down, gone, a
full transmit queue) raise LinkError; ISO-TP protocol errors the kernel reports on a socket (a
lost consecutive frame, a timeout inside a multi-frame answer) are counted. It does not decide
when the kernel is used (agent.diag.transport).
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import isotp

from agent.diag.link import (
    MAX_ECUS,
    OBD_11BIT,
    OBD_29BIT,
    PADDING,
    SEND_TIMEOUT,
    LinkError,
    LinkStats,
    frame_bits,
    message_frames,
    physical_tx,
)
from agent.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

# linux/can/isotp.h (Linux 5.11+): single frames to many receivers, no reception; can-isotp's
# flags do not name it.
SF_BROADCAST = 0x800
# linux/can.h: a filter that passes the ids it does not match.
CAN_INV_FILTER = 0x20000000
_FILTER = struct.Struct("=II")  # struct can_filter: can_id, can_mask
_CAN_ID = struct.Struct("=I")  # the first field of struct can_frame
# These errors are the interface's, not one exchange's: the link is closed and reopened.
LINK_ERRNOS = frozenset({errno.ENETDOWN, errno.ENODEV, errno.ENXIO, errno.EBADF})


def open_socket(channel: str, tx: int, rx: int, *, extended: bool, broadcast: bool) -> Any:
    """A bound kernel ISO-TP socket: padded 8-byte frames, flow control without block limit
    or separation time; ``broadcast``: functional requests (single frames, nothing received)."""
    sock = isotp.socket(timeout=SEND_TIMEOUT)
    try:
        sock.set_opts(optflag=SF_BROADCAST if broadcast else 0, txpad=PADDING)
        sock.set_fc_opts(bs=0, stmin=0)
        mode = (
            isotp.AddressingMode.Normal_29bits if extended else isotp.AddressingMode.Normal_11bits
        )
        sock.bind(channel, isotp.Address(mode, txid=tx, rxid=rx))
    except BaseException:
        sock.close()
        raise
    return sock


class KernelIsoTpLink:
    """The kernel ISO-TP sockets of one SocketCAN channel (closed with the link)."""

    kind = "kernel"

    def __init__(
        self,
        channel: str,
        *,
        extended: bool,
        pairs: dict[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.extended = extended
        self.clock = clock
        self.stats = LinkStats()
        self.answers: deque[tuple[int, bytes]] = deque(maxlen=256)
        self._frame_bits = frame_bits(8, extended)
        # poll(2) rather than epoll: a socket stays off the kernel socket's wait queue between
        # reads (older can_isotp refuses a send while anything waits on that queue).
        self._selector = selectors.PollSelector()
        self._sockets: dict[int, Any] = {}
        functional, self._answer_id, self._mask = OBD_29BIT if extended else OBD_11BIT
        self.channel = channel
        txs = dict(pairs or {})
        if not extended:
            ids = range(self._answer_id, self._answer_id + 8)
            txs.update({rx: physical_tx(rx, extended) for rx in ids if rx not in txs})
        self._ignored: set[int] = set()
        self._functional: Any = None
        self._watch: socket.socket | None = None
        try:
            # The receive id is never registered (broadcast), but must differ from the sending one.
            self._functional = open_socket(
                channel, functional, functional ^ 1, extended=extended, broadcast=True
            )
            for rx, tx in sorted(txs.items()):
                self._add(rx, tx)
            if extended:
                self._watch = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
                self._watch.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_JOIN_FILTERS, 1)
                self._watch_filters()
                self._watch.bind((channel,))
                self._selector.register(self._watch, selectors.EVENT_READ, None)
        except BaseException:
            self.close()
            raise

    def _add(self, rx: int, tx: int) -> None:
        sock = self._sockets[rx] = open_socket(
            self.channel, tx, rx, extended=self.extended, broadcast=False
        )
        self._selector.register(sock, selectors.EVENT_READ, rx)

    def _watch_filters(self) -> None:
        """The raw socket passes answer ids that have no socket yet (filters joined: all must
        match), so it stays silent once every answering ECU has one."""
        assert self._watch is not None
        eff = socket.CAN_EFF_FLAG
        full = socket.CAN_EFF_MASK | eff | socket.CAN_RTR_FLAG
        filters = [_FILTER.pack(self._answer_id | eff, self._mask | eff | socket.CAN_RTR_FLAG)]
        for rx in sorted({*self._sockets, *self._ignored}):
            filters.append(_FILTER.pack(rx | eff | CAN_INV_FILTER, full))
        self._watch.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, b"".join(filters))

    def _learn(self) -> None:
        """ECUs answering for the first time (29-bit ids): each gets its socket."""
        assert self._watch is not None
        seen: set[int] = set()
        for _ in range(256):  # bounded: the filters below quiet the ids seen
            try:
                frame = self._watch.recv(72, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as err:
                raise LinkError(f"{type(err).__name__}: {err}") from err
            self.stats.frames_received += 1
            self.stats.bits += self._frame_bits
            seen.add(_CAN_ID.unpack_from(frame)[0] & socket.CAN_EFF_MASK)
        for rx in sorted(seen - set(self._sockets) - self._ignored):
            tx = physical_tx(rx, self.extended)
            if len(self._sockets) >= MAX_ECUS or tx == rx:
                self.stats.ignored_ecus += 1
                self._ignored.add(rx)
                continue
            try:
                self._add(rx, tx)
            except (OSError, ValueError) as err:
                raise LinkError(f"{type(err).__name__}: {err}") from err
            self.stats.missed_ecus += 1
            log.info("diagnostics: ECU %X answers: kernel ISO-TP socket opened", rx)
        self._watch_filters()

    def close(self) -> None:
        socks = [self._functional, self._watch, *self._sockets.values()]
        self._functional = self._watch = None
        self._sockets = {}
        self._selector.close()
        for sock in socks:
            if sock is not None:
                sock.close()

    # -- requests and answers ----------------------------------------------------------------
    def send_functional(self, payload: bytes) -> None:
        """A single-frame request to every ECU (OBD-II functional addressing)."""
        self._send(self._functional, payload)

    def send(self, rx: int, payload: bytes) -> None:
        """A request to the ECU that answers on ``rx`` (physical addressing)."""
        sock = self._sockets.get(rx)
        if sock is None:
            raise LinkError(f"no ISO-TP socket for ECU {rx:X}")
        self._send(sock, payload)

    def discard(self) -> None:
        """Forget answers not yet taken, also those waiting in the sockets."""
        self.answers.clear()
        for _ in range(64):  # bounded: a babbling ECU cannot hold the request up
            if not self._read_ready(0):
                break
        self.answers.clear()

    def poll(self, timeout: float) -> tuple[int, bytes] | None:
        """The next complete answer ``(ECU's answer id, payload)``, waiting at most
        ``timeout`` seconds."""
        deadline = self.clock() + timeout
        while not self.answers:
            left = deadline - self.clock()
            if left <= 0:
                return None
            self._read_ready(left)
        return self.answers.popleft()

    # -- the sockets -------------------------------------------------------------------------
    def _send(self, sock: Any, payload: bytes) -> None:
        if sock is None:
            raise LinkError("the link is closed")
        try:
            sock.send(payload)
        except OSError as err:  # also a transmission still busy after SEND_TIMEOUT
            raise LinkError(f"{type(err).__name__}: {err}") from err
        self._count(len(payload), sent=True)

    def _read_ready(self, timeout: float) -> bool:
        try:
            ready = self._selector.select(timeout)
        except (OSError, ValueError) as err:  # ValueError: a closed selector
            raise LinkError(f"{type(err).__name__}: {err}") from err
        for key, _ in ready:
            if key.data is None:
                self._learn()
            else:
                self._read(key.data, key.fileobj)
        return bool(ready)

    def _read(self, rx: int, sock: Any) -> None:
        try:
            data = sock.recv(flags=socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno in LINK_ERRNOS:
                raise LinkError(f"{type(err).__name__}: {err}") from err
            # The kernel reports a failed exchange once, as the socket's error.
            self.stats.isotp_errors += 1
            rlog.log(
                logging.INFO,
                ("isotp", rx, err.errno),
                "diagnostics: ISO-TP from %X: %s",
                rx,
                err,
            )
            return
        self._count(len(data), sent=False)
        self.answers.append((rx, bytes(data)))

    def _count(self, size: int, *, sent: bool) -> None:
        frames = message_frames(size)
        # A multi-frame message has one flow control going the other way (block size 0).
        flow = 1 if frames > 1 else 0
        out, back = (frames, flow) if sent else (flow, frames)
        self.stats.frames_sent += out
        self.stats.frames_received += back
        self.stats.bits += (frames + flow) * self._frame_bits
