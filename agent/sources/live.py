"""A live python-can bus, read for its source (agent.can_source ``Source``): opened, read,
closed and reopened with exponential backoff and jitter when it fails.

A SocketCAN bus is read in batches (agent.sources.socketcan), or through CAN_BCM where change
detection wants it (agent.sources.bcm); either reader is lent to the pipeline's thread when the
source has a lender (agent.inline), so reading and processing a batch wake one thread, and is
read on the source's own thread otherwise. Any other python-can interface is read through
python-can's ``recv`` on the source's thread, in batches of up to BATCH frames or
BATCH_SECONDS. Every frame read counts as heard (``Source.state`` tells a silent bus from a
dead one); a SocketCAN socket's kernel drops are counted (agent.sources.kernelsock).

It does not decode frames nor replay logs (agent.can_source).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import can

from agent.backoff import Backoff
from agent.sources import bcm
from agent.sources.kernelsock import KernelDrops, size_receive_buffer
from agent.sources.socketcan import BatchReader

if TYPE_CHECKING:
    from agent.can_source import Source

log = logging.getLogger(__name__)

BATCH = 256
# A batch read through python-can's recv is handed over after this long even if not full,
# bounding added latency.
BATCH_SECONDS = 0.005
# Frames of a held batch (the pipeline fell behind) the pipeline's thread processes per turn
# before it reads the socket again.
BEHIND_CHUNK = 64
# An idle read's timeout on the source's own thread while driving (stop requests are seen this
# fast), and at most while parked. A reader lent to the pipeline has none: it is woken.
IDLE_RECV, IDLE_RECV_PARKED = 0.05, 5.0


def open_bus(src: Source) -> Any:
    cfg = src.cfg
    kwargs: dict[str, Any] = dict(cfg.options)
    if cfg.bitrate:
        kwargs["bitrate"] = cfg.bitrate
    if cfg.data_bitrate:
        kwargs["data_bitrate"] = cfg.data_bitrate
    if cfg.fd:
        kwargs["fd"] = True
    return can.Bus(
        interface=cfg.interface,
        channel=cfg.channel,
        can_filters=src.can_filters,
        ignore_config=True,
        **kwargs,
    )


def run(src: Source) -> None:
    """Open, read and reopen the bus until the source stops."""
    cfg = src.cfg
    # The delays start over only once a bus stayed up as long as the longest wait: one that
    # opens and fails at once (bus-off, a flapping adapter) keeps backing off.
    backoff = Backoff(cfg.reopen_min, cfg.reopen_max, stable_after=cfg.reopen_max, clock=src.clock)
    while not src.stop.is_set():
        try:
            bus = open_bus(src)
        except (can.CanError, OSError, ValueError) as err:
            src.set_state("down", f"cannot open: {err}")
            src.status.reopens += 1
            if src.stop.wait(backoff.next_delay()):
                return
            continue
        backoff.succeeded()
        src.heard()
        src.set_state("up")
        src._bus = bus
        try:
            _read(src, bus)
        except (can.CanError, OSError, ValueError) as err:
            src.set_state("down", str(err) or type(err).__name__)
            src.status.reopens += 1
            if src.stop.wait(backoff.next_delay()):
                return
        finally:
            src._bus = None
            try:
                bus.shutdown()
            except Exception as err:  # closing a broken bus may fail again; nothing to do
                log.debug("bus %s shutdown: %s", cfg.name, err)


def _read(src: Source, bus: Any) -> None:
    size_receive_buffer(bus, src.cfg.name, src.cfg.receive_buffer)
    if (reader := bcm.reader(src, bus)) is not None:
        src._bcm = reader
        try:
            reader.start()
            if not _lent(src, reader):
                reader.run()  # the rest of its start is done
        finally:
            src._bcm = None
            reader.close()
        return
    drops = KernelDrops.of(bus, src.cfg.name, src.status)
    try:
        # A SocketCAN bus's socket is read directly, in batches (agent.sources.socketcan).
        if (batches := BatchReader.of(bus, size=BATCH)) is not None:
            step = RawStep(src, batches, drops)
            if not _lent(src, step):
                step.run()
        else:
            _read_loop(src, bus, drops)
    finally:
        if drops is not None:
            drops.check()


def _lent(src: Source, reader: Any) -> bool:
    """Read in the pipeline's thread until it hands the reader back (agent.inline); raises the
    error that broke the bus. False when there is no one to lend it to."""
    return src.lender is not None and src.lender.lend(src.index, reader)


def _hand_on(src: Source, batch: list[Any]) -> bool:
    """A batch read on the source's own thread, to the pipeline's queue: never blocking; a full
    queue drops it, counted (False)."""
    try:
        src.out.put_nowait((src.index, batch))
        return True
    except queue.Full:
        src.status.dropped_frames += len(batch)
        return False


class RawStep:
    """The raw batch reader's turn: a receive and its bookkeeping (frames counted, the bus
    heard, kernel drops), in the pipeline's thread (``step``) or the source's own (``run``).

    In the pipeline's thread, a full batch means the pipeline fell behind: the step then reads
    ahead, every batch waiting, up to the bus's ``queue_frames`` held here, and hands them on
    BEHIND_CHUNK frames per turn, reading again between two. So a burst the pipeline works off
    later is held as on the source's own thread (the kernel's receive buffer plus the queue),
    not in the kernel's buffer alone.
    """

    def __init__(self, src: Source, batches: BatchReader, drops: KernelDrops | None) -> None:
        self.src = src
        self.batches = batches
        self.drops = drops
        self.held: collections.deque[list[Any]] = collections.deque()
        self.held_frames = 0
        self.error: Exception | None = None  # met reading ahead: raised once the held are out

    def fds(self) -> tuple[int, ...]:
        return (self.batches.fd,)

    def window_end(self) -> float:
        return 0.0 if self.held else self.batches.window_end()

    def due(self) -> float:
        if self.held or self.error is not None:
            return 0.0
        return self.drops.due() if self.drops is not None else math.inf

    def step(self, ready: Sequence[int]) -> list[Any]:
        if ready and self.error is None:
            try:
                self._read_ahead()
            except OSError as err:
                if not self.held:
                    raise
                self.error = err
        if not self.held:
            if self.error is not None:
                raise self.error
            return self._after([])  # the timers only
        batch = self.held[0]
        if len(batch) > BEHIND_CHUNK:
            # Behind: a turn processes a part, so the socket is read again soon (a small
            # receive buffer overflows while a whole batch is processed).
            self.held[0] = batch[BEHIND_CHUNK:]
            batch = batch[:BEHIND_CHUNK]
        else:
            self.held.popleft()
        self.held_frames -= len(batch)
        return batch

    def _read_ahead(self) -> None:
        read, size, held = self.batches.read_now, self.batches.size, self.held
        limit = self.src.cfg.queue_frames
        while True:
            batch = self._after(read())
            if batch:
                held.append(batch)
                self.held_frames += len(batch)
            # Not full: nothing more is waiting. Beyond the limit the kernel holds (or drops
            # and counts) the rest.
            if len(batch) < size or self.held_frames >= limit:
                return

    def _after(self, batch: list[Any]) -> list[Any]:
        src, drops = self.src, self.drops
        if batch:
            src.heard()
            src.status.frames += len(batch)
            if drops is not None:
                drops.received()
        if drops is not None:
            drops.tick(src.clock())
        return batch

    def run(self) -> None:
        """On the source's own thread: hand on what each read returns, until the stop."""
        src, read = self.src, self.batches.read
        while not src.stop.is_set():
            batch = self._after(read(src.idle_recv))
            if batch:
                _hand_on(src, batch)


def _read_loop(src: Source, bus: Any, drops: KernelDrops | None) -> None:
    """python-can's ``recv``, batched by count and age."""
    batch: list[Any] = []
    started = 0.0
    clock, recv, stop = src.clock, bus.recv, src.stop
    status = src.status
    now = clock()
    while not stop.is_set():
        # Block long when idle; with a batch open, only until it is due.
        msg = recv(max(0.0, started + BATCH_SECONDS - now) if batch else src.idle_recv)
        now = clock()
        if msg is not None:
            if not batch:
                started = now
            batch.append(msg)
            src.heard(now)
            status.frames += 1
            if drops is not None:
                drops.received()
            if len(batch) < BATCH and now - started < BATCH_SECONDS:
                continue
        if batch and (msg is None or len(batch) >= BATCH or now - started >= BATCH_SECONDS):
            _hand_on(src, batch)
            batch = []
        if drops is not None:
            drops.tick(now)
