"""Direct batch reader of a SocketCAN bus socket that python-can opened and configured.

python-can still opens the bus, binds it and sets its options (kernel filters, CAN FD, error
frames, kernel timestamps); this module only reads the socket it made (``bus.socket``), faster
than python-can's ``recv``, which costs per frame a ``select``, a ``recvmsg`` (in which CPython
looks up the interface name with an ioctl) and a ``Message``. Here one ``poll`` waits for a
frame and one ``recvmmsg(2)`` call takes up to ``size`` frames with their kernel receive times
(SO_TIMESTAMPNS); after a call that took frames, the reader sleeps out a window (``WINDOW``)
before the next instead of waking for each frame, and it calls ``recvmmsg`` only when ``poll``
says something is there. A caller that waits itself (the pipeline's poll, agent.inline)
leaves the socket alone until ``window_end`` and then calls ``take`` (or ``read_now``), which
receive without waiting. The frames are parsed by ``struct`` into ``Frame``
tuples that carry the attributes the pipeline reads of a python-can ``Message``. The same
batched receive serves other SocketCAN datagram sockets (``record``: the largest datagram, and
``unpack`` with the caller's layout): agent.sources.bcm reads CAN_BCM notifications with it,
and it can wake for further sockets too (``watch``), such as python-can's socket carrying error
frames beside them.

Where libc has no ``recvmmsg`` (or the bus is not a SocketCAN one) ``BatchReader.of`` returns
None and the caller keeps python-can's own path. It does not open, configure or close buses,
count kernel drops (agent.can_source reads the socket's drop counter) nor decode frames.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

# linux/can.h: flags in can_id, and the CAN FD frame layout (id, len, flags, 2 reserved bytes,
# 64 data bytes); a classic frame is the first 16 bytes of the same layout.
_CAN_EFF_FLAG = 0x80000000
_CAN_RTR_FLAG = 0x40000000
_CAN_ERR_FLAG = 0x20000000
_SPECIAL = _CAN_EFF_FLAG | _CAN_RTR_FLAG | _CAN_ERR_FLAG
_RTR_OR_ERR = _CAN_RTR_FLAG | _CAN_ERR_FLAG
_CANFD_BRS = 0x01
CANFD_MTU = 72
_FRAME = struct.Struct("=IBBxx64s")
# SO_TIMESTAMPNS (asm-generic/socket.h; the socket module does not export it): the kernel's
# receive time as one control message per frame, a native struct timespec. The control
# message is laid out as struct cmsghdr (size_t, int, int) then the timespec, each field at its
# natural alignment, which the struct module's native mode reproduces.
SO_TIMESTAMPNS = 35
_CMSG_TIMESPEC = struct.Struct("@Niill")
MSG_DONTWAIT = 0x40
# While frames keep coming, a batch is taken at most this often. Each wake of the reader (and
# of the pipeline, once per batch) costs about as much as a few frames, so on a busy bus the
# wakes, not the frames, decided the CPU; 20 ms stays well inside the 100 ms event latency.
WINDOW = 0.02


class Frame(NamedTuple):
    """A received frame, with the attribute names of python-can's ``Message`` that the
    pipeline reads; ``arbitration_id`` is masked as python-can masks it."""

    timestamp: float
    arbitration_id: int
    is_extended_id: bool
    is_remote_frame: bool
    is_error_frame: bool
    is_fd: bool
    bitrate_switch: bool
    dlc: int
    data: bytes


_new_frame = tuple.__new__


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def _recvmmsg() -> Any:
    """libc's recvmmsg, or None where there is none."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_RECVMMSG = _recvmmsg()
# The length the kernel wrote into each message header: tells a CAN FD frame from a classic one.
_MSG_LEN = struct.Struct(
    f"{_MMsgHdr.len.offset}xI{ctypes.sizeof(_MMsgHdr) - _MMsgHdr.len.offset - 4}x"
)


class BatchReader:
    """Reads batches of frames from a bound CAN_RAW socket (see the module doc); with
    ``record``, batches of datagrams of at most that size from another SocketCAN socket."""

    def __init__(
        self, sock: socket.socket, *, size: int, window: float = WINDOW, record: int = CANFD_MTU
    ) -> None:
        if _RECVMMSG is None:
            raise OSError(errno.ENOSYS, "libc has no recvmmsg")
        self.sock = sock
        self.size = size
        self.window = window
        self.record = record
        # Other sockets ready at the last ``receive`` (those given to ``watch``).
        self.ready: list[int] = []
        # The kernel stamps each frame as it arrives; python-can sets this too.
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._fd = sock.fileno()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        # One buffer for the frames, one for their control messages, and the headers that
        # point each message into them: allocated once, reused by every call.
        cmsg = _CMSG_TIMESPEC.size
        self._frames = (ctypes.c_char * (record * size))()
        self._control = (ctypes.c_char * (cmsg * size))()
        self._iov = (_IoVec * size)()
        self._hdrs = (_MMsgHdr * size)()
        frames, control = ctypes.addressof(self._frames), ctypes.addressof(self._control)
        for i in range(size):
            self._iov[i].base = frames + record * i
            self._iov[i].len = record
            hdr = self._hdrs[i].hdr
            hdr.iov = ctypes.addressof(self._iov[i])
            hdr.iovlen = 1
            hdr.control = control + cmsg * i
            hdr.controllen = cmsg
        self._hdrs_at = ctypes.addressof(self._hdrs)
        self._frame_view = memoryview(self._frames).cast("B")
        self._control_view = memoryview(self._control).cast("B")
        self._hdr_view = memoryview(self._hdrs).cast("B")
        self._last = 0.0
        self._others = False

    @classmethod
    def of(cls, bus: Any, *, size: int, window: float = WINDOW) -> BatchReader | None:
        """A reader of the bus's socket when it is a bound CAN_RAW socket and libc has
        recvmmsg; None otherwise (the caller reads through python-can)."""
        sock = getattr(bus, "socket", None)
        if (
            _RECVMMSG is None
            or not isinstance(sock, socket.socket)
            or sock.family != getattr(socket, "AF_CAN", -1)
            or sock.proto != getattr(socket, "CAN_RAW", -1)
        ):
            return None
        return cls(sock, size=size, window=window)

    def watch(self, fd: int) -> None:
        """Wake for ``fd`` too: when it is readable, ``receive`` lists it in ``ready``."""
        self._poll.register(fd, select.POLLIN)
        self._others = True

    def read(self, timeout: float) -> list[Frame]:
        """Wait up to ``timeout`` seconds for a frame, then return every frame received so far
        (up to ``size``; an empty list after a timeout). Raises OSError when the socket fails
        (ENETDOWN once after its interface went down, ENODEV when it vanished)."""
        n = self.receive(timeout)
        return self._parse(n) if n else []

    def read_now(self) -> list[Frame]:
        """As ``read``, without waiting: for a caller that waits itself (``take``)."""
        n = self.take()
        return self._parse(n) if n else []

    def receive(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for a datagram (or a watched socket), then receive
        every datagram waiting (up to ``size``) into the buffers; returns how many, which
        ``unpack`` reads. Raises as ``read``."""
        # Datagrams came at the last call: rather than wake for each new one, sleep out the
        # window and take what gathered meanwhile (a busy bus costs one wake per window); the
        # poll that follows then returns at once, and only a pause blocks in it.
        wait = self._last + self.window - time.monotonic()
        if wait > 0:
            time.sleep(wait)
            timeout -= wait
        events = self._poll.poll(max(0, int(timeout * 1000)))
        if self._others:
            self.ready = [fd for fd, _ in events if fd != self._fd]
            if len(self.ready) == len(events):
                return 0
        elif not events:
            return 0
        return self.take()

    @property
    def fd(self) -> int:
        return self._fd

    def window_end(self) -> float:
        """Until when (monotonic) a caller waiting itself should leave the socket alone: the
        window after a call that took datagrams (0 when none is open)."""
        return self._last + self.window if self._last else 0.0

    def take(self) -> int:
        """Receive every datagram waiting (up to ``size``) without waiting, for a caller that
        waits itself (agent.inline): ``receive`` without its sleep and poll."""
        n = _RECVMMSG(self._fd, self._hdrs_at, self.size, MSG_DONTWAIT, None)
        # A full batch leaves more waiting: take it at once next time.
        self._last = 0.0 if n <= 0 or n == self.size else time.monotonic()
        if n <= 0:
            err = ctypes.get_errno()
            if n == 0 or err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        return n

    def unpack(self, n: int, layout: struct.Struct) -> Iterator[tuple[Any, Any, Any]]:
        """The first ``n`` datagrams received, each as ``(fields, timespec, (size,))``:
        ``layout`` (of ``record`` bytes) unpacked from it, stale bytes beyond a short
        datagram's ``size`` included; the kernel's receive time (``timespec[3]`` seconds,
        ``timespec[4]`` nanoseconds); the datagram's size."""
        assert layout.size == self.record
        return zip(
            layout.iter_unpack(self._frame_view[: self.record * n]),
            _CMSG_TIMESPEC.iter_unpack(self._control_view[: _CMSG_TIMESPEC.size * n]),
            _MSG_LEN.iter_unpack(self._hdr_view[: _MSG_LEN.size * n]),
            strict=True,
        )

    def _parse(self, n: int) -> list[Frame]:
        new = _new_frame
        out: list[Frame] = []
        append = out.append
        for (can_id, length, flags, data), (_, _, _, sec, nsec), (size,) in self.unpack(n, _FRAME):
            fd = size == CANFD_MTU
            brs = fd and flags & _CANFD_BRS != 0
            if not can_id & _SPECIAL:  # the common case: a data frame with a standard id
                ext = False
            elif not can_id & _RTR_OR_ERR:
                ext, can_id = True, can_id & 0x1FFFFFFF
            else:
                append(_special(sec + nsec * 1e-9, can_id, fd, brs, length, data))
                continue
            append(
                new(
                    Frame,
                    (sec + nsec * 1e-9, can_id, ext, False, False, fd, brs, length, data[:length]),
                )
            )
        return out


def _special(ts: float, can_id: int, fd: bool, brs: bool, length: int, data: bytes) -> Frame:
    """A remote or error frame, as python-can reads it (a remote frame carries no data)."""
    ext = can_id & _CAN_EFF_FLAG != 0
    remote = can_id & _CAN_RTR_FLAG != 0
    return Frame(
        ts,
        can_id & 0x1FFFFFFF if ext else can_id & 0x7FF,
        ext,
        remote,
        can_id & _CAN_ERR_FLAG != 0,
        fd,
        brs,
        length,
        b"" if remote else data[:length],
    )
