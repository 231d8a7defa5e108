"""The kernel side of a live SocketCAN socket: its receive buffer's size, the frames the kernel
dropped from it when full, and whether its network interface is up.

Shared by the raw reader (agent.sources.live) and the CAN_BCM one (agent.sources.bcm). It does
not read frames.
"""

from __future__ import annotations

import logging
import math
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from agent.can_source import SourceStatus

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

# How often a live SocketCAN bus's kernel drop counter is read.
DROP_CHECK_SECONDS = 0.5
# getsockopt(SOL_SOCKET, SO_MEMINFO) (linux/asm-generic/socket.h) gives the socket's memory
# figures as u32s; index SK_MEMINFO_DROPS (linux/sock_diag.h) is its drop counter (absent on
# old kernels, which return fewer figures).
_SO_MEMINFO = 55
_SK_MEMINFO_DROPS = 8
_MEMINFO = struct.Struct("=9I")
_AF_CAN = getattr(socket, "AF_CAN", -1)
# SO_RCVBUFFORCE (linux/asm-generic/socket.h): not exported by the socket module.
_SO_RCVBUFFORCE = 33


def link_up(name: str | None) -> bool:
    """Whether a network interface exists and is administratively and operationally up."""
    folder = Path(f"/sys/class/net/{name}")
    try:
        flags = int((folder / "flags").read_text(), 16)
        operstate = (folder / "operstate").read_text().strip()
    except (OSError, ValueError):
        return False
    # sysfs "flags" holds the administrative flags only (IFF_RUNNING, 0x40, is never there):
    # IFF_UP (0x1) says the link was set up; the operational state says whether it works
    # (vcan reports "unknown", a CAN controller "up", or "down" once bus-off or unplugged).
    return bool(flags & 0x1) and operstate not in (
        "down",
        "lowerlayerdown",
        "notpresent",
        "dormant",
    )


class KernelDrops:
    """Frames the kernel dropped because a SocketCAN socket's receive buffer was full.

    The socket's drop counter (the figure SO_RXQ_OVFL would attach to each frame) is read with
    getsockopt(SO_MEMINFO), which leaves python-can's own receive path untouched. Each increase
    is added to ``dropped_frames`` and ``kernel_dropped`` and logged, rate-limited. The
    counter is read at most every DROP_CHECK_SECONDS, and only once frames came since the last
    read (``received``): the kernel drops only what arrives, so an idle socket needs no timer.
    """

    def __init__(self, sock: socket.socket, name: str, status: SourceStatus) -> None:
        self.sock = sock
        self.name = name
        self.status = status
        self.seen = 0
        self.next_check = 0.0
        self.owed = False  # frames came since the counter was last read

    @classmethod
    def of(cls, bus: Any, name: str, status: SourceStatus) -> KernelDrops | None:
        """For a bus with a SocketCAN socket whose kernel reports drops, else None."""
        sock = getattr(bus, "socket", None)
        if not isinstance(sock, socket.socket) or sock.family != _AF_CAN:
            return None
        drops = cls(sock, name, status)
        seen = drops.read()
        if seen is None:
            rlog.warning(
                ("no-drop-counter", name),
                "bus %s: this kernel does not report receive-buffer drops",
                name,
            )
            return None
        drops.seen = seen
        return drops

    def read(self) -> int | None:
        try:
            info = self.sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size)
        except OSError:
            return None
        if len(info) < _MEMINFO.size:
            return None  # a kernel before the drop counter was added to SO_MEMINFO
        return int(_MEMINFO.unpack_from(info)[_SK_MEMINFO_DROPS])

    def received(self) -> None:
        """Frames came: the counter is read at the next ``tick`` due."""
        self.owed = True

    def due(self) -> float:
        """When ``tick`` reads the counter (monotonic; infinity while nothing is owed)."""
        return self.next_check if self.owed else math.inf

    def tick(self, now: float) -> int:
        """Read the counter if frames came and the last read is DROP_CHECK_SECONDS old; the
        frames lost since."""
        if not self.owed or now < self.next_check:
            return 0
        self.owed = False
        self.next_check = now + DROP_CHECK_SECONDS
        return self.check()

    def check(self) -> int:
        """Read the counter now; the frames lost since the last read."""
        now = self.read()
        if now is None or now <= self.seen:
            return 0
        lost, self.seen = now - self.seen, now
        self.status.kernel_dropped += lost
        self.status.dropped_frames += lost
        rlog.warning(
            ("kernel-drops", self.name),
            "bus %s: the kernel dropped %d frames: its receive buffer was full (%d so far)",
            self.name,
            lost,
            self.status.kernel_dropped,
        )
        return lost


def size_receive_buffer(bus: Any, name: str, size: int) -> None:
    """Give a SocketCAN bus socket a receive buffer of ``size`` bytes.

    SO_RCVBUFFORCE passes the system's rmem_max where the process may (CAP_NET_ADMIN); without
    it SO_RCVBUF is capped at rmem_max, and the size the kernel granted is logged once.
    """
    sock = getattr(bus, "socket", None)
    if not isinstance(sock, socket.socket) or sock.family != _AF_CAN:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError as err:
            log.warning("bus %s: cannot size the receive buffer: %s", name, err)
            return
    # The kernel reports twice the usable size (it counts its bookkeeping).
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < size:
        rlog.warning(
            ("rcvbuf", name),
            "bus %s: receive buffer %d bytes, less than the %d configured (net.core.rmem_max)",
            name,
            granted,
            size,
        )
