"""Kernel-side change detection on a live SocketCAN bus (the broadcast manager, CAN_BCM).

For each message the pipeline decodes, one ``RX_SETUP`` asks the kernel to hand over a frame
only when the bits of the decoded signals changed (agent.sources.bcmmask), its length changed
(``RX_CHECK_DLC``), or the id resumes after a silence (``RX_ANNOUNCE_RESUME``); a per-id
timeout (``RX_TIMEOUT``) says when an id went silent. Unchanged frames then never wake user
space. What the pipeline learns from them is kept: every ``CONFIRM_SECONDS`` each id that has
not timed out is confirmed by handing its last frame on again, stamped with the latest time a
frame of it is known to have arrived (now minus its timeout), so heartbeats still need a frame
that confirmed the value, and the bus counts as heard, so silence is still detected.

A notification lost to a full receive buffer (the socket's drop counter, read as on the raw
path) or to a full pipeline queue could hide a change for good: after either, every setup is
issued again, which makes the kernel forward the next frame of each id. python-can still opens
and configures the bus; its raw socket then receives error frames only.

Notifications are read as the raw path reads frames (agent.sources.socketcan's BatchReader): up
to a batch per ``recvmmsg(2)``, at most one call per window while they keep coming, each with
the kernel's receive time of the frame that changed, parsed into the same ``Frame`` tuples; each
call's frames (and the confirmations then due) go to the pipeline as one batch. The reader is
read on its source's thread (``run``) or lent to the pipeline's (agent.inline), which calls its
receive step (``step``) when its sockets are ready or its timers (confirmations while an id is
live, a drop check after notifications came) are due: a quiet bus wakes nothing but its
timeouts' notifications.

It does not decode frames (agent.pipeline) nor choose signals (agent.catalog). The struct
layouts are those of linux/can/bcm.h and linux/can.h.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.config import BusConfig
from agent.ratelimit import RateLimitedLog
from agent.sources.bcmmask import CLASSIC_DATA, FD_DATA, content_mask
from agent.sources.kernelsock import KernelDrops, size_receive_buffer
from agent.sources.socketcan import BatchReader, Frame

_new_frame = tuple.__new__

if TYPE_CHECKING:
    from agent.can_source import Source
    from agent.catalog import MessagePlan

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

# struct bcm_msg_head: opcode, flags, count, ival1 and ival2 (struct bcm_timeval: two longs
# each), can_id, nframes; native alignment pads after count on 64-bit systems.
_HEAD = struct.Struct("@3I4l2I")
_CAN_FRAME = struct.Struct("=IB3x8s")  # can_id, len, pad, res0, len8_dlc, data[8]
_CANFD_FRAME = struct.Struct("=IBB2x64s")  # can_id, len, flags, res0, res1, data[64]
# A notification as received: the head, then a CAN FD frame (a classic one is its first 16
# bytes; an RX_TIMEOUT has the head only). canfd_frame's flags byte is a classic frame's pad.
_RECORD = struct.Struct("@3I4l2IIBB2x64s")
_CAN_EFF_FLAG = 0x80000000
_CAN_EFF_MASK = 0x1FFFFFFF
_CAN_SFF_MASK = 0x7FF
_CANFD_BRS = 0x01

_SETUP_FLAGS = (
    socket.CAN_BCM_SETTIMER
    | socket.CAN_BCM_STARTTIMER
    | socket.CAN_BCM_RX_CHECK_DLC
    | socket.CAN_BCM_RX_ANNOUNCE_RESUME
)

# How often live ids are confirmed to the pipeline (at most; a short silent_after shortens it).
CONFIRM_SECONDS = 0.5
# An id's receive timeout: three of its DBC cycle times, else this; at most half the bus's
# silent_after, so that a confirmed bus never looks silent between two confirmations.
DEFAULT_TIMEOUT = 1.0
MIN_TIMEOUT = 0.05


@dataclass(frozen=True)
class Watch:
    """One RX_SETUP: an id (CAN_EFF_FLAG set for 29-bit ids), its frame kind and mask."""

    can_id: int
    fd: bool
    mask: bytes
    timeout: float


def wanted(cfg: BusConfig, messages: Mapping[int, Any] | None) -> bool:
    """Whether a bus reads through change detection: socketcan, not switched off, no id mask
    (the kernel watches exact ids), something selected."""
    return bool(
        messages
        and cfg.change_detection != "off"
        and cfg.interface == "socketcan"
        and cfg.id_mask is None
    )


def _decoded(mp: MessagePlan) -> set[str]:
    """The signals of a message the agent decodes: sent, read by triggers or by the lifecycle."""
    names = {s.signal for s in mp.signals}
    names.update(r.signal for r in mp.reads)
    names.update(p.signal for p in mp.power)
    return names


def watches(cfg: BusConfig, messages: Mapping[int, MessagePlan]) -> list[Watch]:
    """The setups for a bus: per message, the signals sent, read by triggers or by the
    lifecycle, since each of those is decoded from its frames."""
    most = max(MIN_TIMEOUT, cfg.silent_after / 2)
    out = []
    for mp in messages.values():
        msg = mp.message
        names = _decoded(mp)
        fd = bool(msg.is_fd) or msg.length > CLASSIC_DATA
        cycle = (msg.cycle_time or 0) / 1000
        timeout = min(most, max(MIN_TIMEOUT, 3 * cycle if cycle else DEFAULT_TIMEOUT))
        can_id = msg.frame_id | (_CAN_EFF_FLAG if msg.is_extended_frame else 0)
        out.append(
            Watch(can_id, fd, content_mask(msg, names, FD_DATA if fd else CLASSIC_DATA), timeout)
        )
    return out


def _setup(w: Watch) -> bytes:
    sec, usec = int(w.timeout), round((w.timeout % 1) * 1_000_000)
    flags = _SETUP_FLAGS | (socket.CAN_BCM_CAN_FD_FRAME if w.fd else 0)
    head = _HEAD.pack(socket.CAN_BCM_RX_SETUP, flags, 0, sec, usec, 0, 0, w.can_id, 1)
    frame = _CANFD_FRAME if w.fd else _CAN_FRAME
    if w.fd:
        return head + frame.pack(w.can_id, len(w.mask), 0, w.mask)
    return head + frame.pack(w.can_id, len(w.mask), w.mask)


def _delete(w: Watch) -> bytes:
    flags = socket.CAN_BCM_CAN_FD_FRAME if w.fd else 0
    return _HEAD.pack(socket.CAN_BCM_RX_DELETE, flags, 0, 0, 0, 0, 0, w.can_id, 0)


class _Id:
    """What is known of one watched id: its last frame handed on and whether it is live."""

    __slots__ = ("last", "live", "stamp", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.last: Frame | None = None
        self.live = False
        self.stamp = 0.0  # data time of the last frame or confirmation handed on


class BcmReader:
    """Reads one open socketcan bus through CAN_BCM (``start`` in the source's thread, then
    ``run`` there or ``step`` in the pipeline's)."""

    def __init__(self, source: Source, bus: Any, messages: Mapping[int, MessagePlan]) -> None:
        self.source = source
        self.bus = bus
        self.channel = source.cfg.channel
        self.sock: socket.socket | None = None
        self.ids: dict[tuple[int, bool], _Id] = {}
        self._watches: list[Watch] = []
        self._pending: Mapping[int, MessagePlan] | None = messages
        self._batches: BatchReader | None = None
        self._drops: KernelDrops | None = None  # of the BCM socket
        self._resync = False
        self._since = 0.0  # when the first setups were issued
        self._started = False
        self._raw_fd = -1  # python-can's socket, for error frames
        self._held: list[Any] = []  # frames taken at the start, handed on with the first batch
        self._live = False  # some id is live: confirmations are due
        self._every = CONFIRM_SECONDS
        self._next_confirm = 0.0
        # Counters for tests and the bench.
        self.notifications = 0
        self.timeouts = 0
        self.confirmations = 0
        self.resyncs = 0

    def update(self, messages: Mapping[int, MessagePlan]) -> None:
        """Thread-safe: watch these messages instead (a reload); applied by the reader."""
        self._pending = messages

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self._batches = None

    # -- kernel ------------------------------------------------------------------------
    def _open(self) -> socket.socket:
        from agent.sources.live import BATCH

        sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_BCM)
        try:
            sock.connect((self.channel,))
            size_receive_buffer(_Holder(sock), self.source.cfg.name, self.source.cfg.receive_buffer)
            sock.setblocking(False)
            # Notifications are taken as the raw path takes frames: up to BATCH per call, at
            # most one call per window while they keep coming (it sets SO_TIMESTAMPNS).
            self._batches = BatchReader(sock, size=BATCH, record=_RECORD.size)
        except OSError:
            sock.close()
            raise
        self._drops = KernelDrops(sock, self.source.cfg.name, self.source.status)
        self._drops.seen = self._drops.read() or 0
        return sock

    def _apply(self, messages: Mapping[int, MessagePlan]) -> None:
        """Watch a selection: the socket is opened the first time; later (a reload) ids no
        longer wanted are deleted and the rest set up again on the same socket, so no frame
        falls between two selections."""
        new = watches(self.source.cfg, messages)
        old, self._watches = self._watches, new
        ids = self.ids
        self.ids = {}
        for w in new:
            state = ids.get((w.can_id, w.fd)) or _Id(w.timeout)
            state.timeout = w.timeout
            self.ids[(w.can_id, w.fd)] = state
        first = self.sock is None
        if self.sock is None:
            self.sock = self._open()
        for w in old:
            if (w.can_id, w.fd) not in self.ids:
                self.sock.sendall(_delete(w))
        self._setup_all()
        if first:
            self._since = time.time()

    def _setup_all(self) -> None:
        assert self.sock is not None
        for w in self._watches:
            self.sock.sendall(_setup(w))

    def resync(self) -> None:
        """Issue every setup again: the kernel forgets the last content and forwards the next
        frame of each id, so a lost notification cannot hide a change."""
        self.resyncs += 1
        self._setup_all()

    def _quiet_raw(self) -> None:
        """python-can's raw socket: no frames (the BCM socket carries them), error frames
        still (they are filtered apart in the kernel)."""
        sock = getattr(self.bus, "socket", None)
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, b"")

    def _notices(self, batches: BatchReader, n: int, out: list[Any]) -> int:
        """The ``n`` notifications received: changed frames go to ``out`` (in the order the
        kernel queued them, with the receive time of the frame that changed); timeouts mark
        their id silent. Returns how many frames went to ``out``."""
        ids = self.ids
        new = _new_frame
        changed = 0
        for (
            (opcode, flags, _, _, _, _, _, can_id, nframes, fid, length, fflags, data),
            (_, _, _, sec, nsec),
            _,
        ) in batches.unpack(n, _RECORD):
            fd = flags & socket.CAN_BCM_CAN_FD_FRAME != 0
            state = ids.get((can_id, fd))
            if state is None:
                continue  # an id deleted by a reload, its last notification still queued
            if opcode == socket.CAN_BCM_RX_CHANGED and nframes:
                ext = fid & _CAN_EFF_FLAG != 0
                frame = new(
                    Frame,
                    (
                        sec + nsec * 1e-9 if sec else time.time(),
                        fid & (_CAN_EFF_MASK if ext else _CAN_SFF_MASK),
                        ext,
                        False,
                        False,
                        fd,
                        fd and fflags & _CANFD_BRS != 0,
                        length,
                        data[:length],
                    ),
                )
                state.last = frame
                state.live = True
                state.stamp = frame.timestamp
                out.append(frame)
                changed += 1
            elif opcode == socket.CAN_BCM_RX_TIMEOUT:
                self.timeouts += 1
                state.live = False
        self.notifications += changed
        return changed

    def _confirm(self, out: list[Any]) -> float | None:
        """Hand on the last frame of every live id, stamped with the latest time a frame of it
        is known to have arrived; returns the shortest timeout of a live id (None: none live)."""
        now = time.time()
        shortest = None
        for state in self.ids.values():
            last = state.last
            if not state.live or last is None:
                continue
            if shortest is None or state.timeout < shortest:
                shortest = state.timeout
            stamp = now - state.timeout
            if stamp <= state.stamp:
                continue
            state.stamp = stamp
            out.append(last._replace(timestamp=stamp))
            self.confirmations += 1
        return shortest

    # -- loop --------------------------------------------------------------------------
    def _take_raw(self, since: float, out: list[Any]) -> None:
        """The frames python-can's socket took before the setups were in place (from its
        opening until ``since``): the BCM socket has only the later ones."""
        while (msg := self.bus.recv(0)) is not None:
            if msg.is_error_frame or msg.timestamp < since:
                out.append(msg)

    def _raw(self, out: list[Any]) -> None:
        """Frames on python-can's socket (at most a batch): error frames are handed on; any
        other can only come from filters set just before this reader quieted the socket (a
        reload racing it), and the BCM socket carries it too."""
        from agent.sources.live import BATCH

        for _ in range(BATCH):
            msg = self.bus.recv(0)
            if msg is None:
                return
            if msg.is_error_frame:
                out.append(msg)
            else:
                self._quiet_raw()

    def open(self) -> None:
        """Apply a pending selection now: its setups are in place when this returns."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._apply(pending)

    def start(self) -> None:
        """In the source's thread, the bus just opened: the setups in place, python-can's
        socket quieted; the frames it took before go with the first batch (``step``). Once."""
        if self._started:
            return
        self._started = True
        self.open()
        self._quiet_raw()
        self._take_raw(self._since, self._held)
        assert self._batches is not None
        raw = getattr(self.bus, "socket", None)
        if isinstance(raw, socket.socket):
            self._raw_fd = raw.fileno()
            self._batches.watch(self._raw_fd)
        self._resync = False
        self._every = min(CONFIRM_SECONDS, self.source.cfg.silent_after / 4)
        self._next_confirm = self.source.clock() + self._every

    # -- the receive step (agent.inline), also the loop of ``run`` ------------------------------
    def fds(self) -> tuple[int, ...]:
        assert self._batches is not None
        return (self._batches.fd,) if self._raw_fd < 0 else (self._batches.fd, self._raw_fd)

    def window_end(self) -> float:
        assert self._batches is not None
        return self._batches.window_end()

    def due(self) -> float:
        """The next of: a pending selection or held frames (now), the confirmations of live
        ids, the drop check owed."""
        if self._pending is not None or self._held:
            return 0.0
        due = self._next_confirm if self._live else math.inf
        return min(due, self._drops.due()) if self._drops is not None else due

    def step(self, ready: Sequence[int]) -> list[Any]:
        """Receive what ``ready`` says is waiting (without waiting), then the bookkeeping."""
        batches = self._batches
        assert batches is not None
        n = batches.take() if batches.fd in ready else 0
        return self._after(n, self._raw_fd in ready)

    def _after(self, n: int, raw_ready: bool) -> list[Any]:
        """The bookkeeping of a receive that took ``n`` notifications: the frames to hand on
        (changes, error frames, confirmations then due)."""
        if self._pending is not None:
            self.open()
        src = self.source
        batch, self._held = self._held, []
        now = src.clock()
        if n and self._notices(self._batches, n, batch):  # type: ignore[arg-type]
            src.heard(now)
            self._live = True
            if self._drops is not None:
                self._drops.received()
        if raw_ready:
            self._raw(batch)
        src.status.frames += len(batch)
        if self._live and now >= self._next_confirm:
            self._next_confirm = now + self._every
            shortest = self._confirm(batch)
            self._live = shortest is not None
            if shortest is not None:
                # A frame of a live id arrived within its timeout: the bus was heard.
                src.heard_until(now - shortest)
        if self._drops is not None and self._drops.tick(now):
            self._resync = True
        if self._resync:
            self._resync = False
            self.resync()
        return batch

    def run(self) -> None:
        """In the source's thread: read until the source stops; raises what breaks the bus
        (the source reopens it)."""
        src = self.source
        try:
            self.start()
            batches = self._batches
            assert batches is not None
            while not src.stop.is_set():
                wait = src.idle_recv
                if self._live:
                    wait = min(wait, max(0.0, self._next_confirm - src.clock()))
                n = batches.receive(wait)
                batch = self._after(n, bool(batches.ready))
                if batch:
                    try:
                        src.out.put_nowait((src.index, batch))
                    except queue.Full:
                        # A lost notification could hide a change for good.
                        src.status.dropped_frames += len(batch)
                        self.resync()
        finally:
            self.close()


def reader(source: Source, bus: Any) -> BcmReader | None:
    """A change-detecting reader for a bus that wants one, or None: not wanted, or (with
    ``change_detection = "auto"``) this kernel has no CAN_BCM, which is logged."""
    messages = source.messages
    if messages is None or not wanted(source.cfg, messages):
        return None
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_BCM).close()
    except OSError as err:
        if source.cfg.change_detection == "bcm":
            raise
        rlog.warning(
            ("no-bcm", source.cfg.name),
            "bus %s: no CAN_BCM in this kernel (%s): every frame is read",
            source.cfg.name,
            err,
        )
        return None
    return BcmReader(source, bus, messages)


class _Holder:
    """A socket where a python-can bus's ``socket`` attribute is expected."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
