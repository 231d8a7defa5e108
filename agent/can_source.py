"""CAN input: python-can buses and recorded-log replay, each with a thread of its own.

A source reads frames and hands them, in batches, to one bounded queue shared with the
pipeline; a live SocketCAN bus's reader is lent to the pipeline's thread instead, which reads
it itself (agent.inline; the live bus's opening, reading and reopening: agent.sources.live). A
live bus never blocks on that queue: when it is full the batch is dropped and counted. A replay
blocks instead (a recording has no deadline, and losing part of it would falsify it). A live
bus that fails is closed, reported "down" and reopened with exponential backoff and jitter; one
that delivers nothing for ``silent_after`` seconds is reported "silent", so a dead bus never
looks like a quiet one. Frames the kernel drops from a full SocketCAN
receive buffer are counted too. A replay reads every format python-can reads (and their gzip
variants); a line of a text log that cannot be read is skipped and counted, as a bad frame would
be on a live bus (the log formats: agent.canlog). It does not decode frames.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import can

from agent.canlog import ROW, Row, log_suffixes, open_log, readable_suffix
from agent.config import BusConfig, Config
from agent.errors import ConfigError, SourceError
from agent.logchild import LogChild
from agent.ratelimit import RateLimitedLog
from agent.sources import bcm, live
from agent.sources.kernelsock import link_up
from agent.sources.live import BATCH, IDLE_RECV

if TYPE_CHECKING:
    from agent.inline import Lender

log = logging.getLogger(__name__)

END = "end"  # queue item payload: this source has no more frames

# A replay with reader = "auto" reads a log at least this large in a child process: below it the
# overlap gains less than the child costs (forking, the pipe, its first frames before the
# pipeline starts): measured, a 0.9 MB candump log took longer through a child, 2.3 MB less.
PROCESS_MIN_BYTES = 2 * 1024 * 1024

Item = tuple[int, Any]
rlog = RateLimitedLog(log)


def interface_names() -> list[str]:
    return sorted(can.interfaces.VALID_INTERFACES)


def validate_sources(cfg: Config) -> None:
    """Problems visible before opening anything: unknown interfaces, unreadable logs."""
    known = set(can.interfaces.VALID_INTERFACES)
    src = str(cfg.source or "config")
    problems = []
    for i, bus in enumerate(cfg.bus):
        if bus.is_replay:
            assert bus.log is not None
            if not bus.log.is_file():
                problems.append(f"{src}: bus[{i}].log: no such file: {bus.log}")
            elif not readable_suffix(bus.log):
                problems.append(
                    f"{src}: bus[{i}].log: {bus.log.name}: not a log format python-can reads "
                    f"({', '.join(log_suffixes())})"
                )
        elif bus.interface not in known:
            problems.append(
                f"{src}: bus[{i}].interface: unknown python-can interface {bus.interface!r} "
                f'(use "replay" or one of: {", ".join(sorted(known))})'
            )
    if problems:
        raise ConfigError(*problems)


def _cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def paced_batches(
    frames: Iterable[tuple[float, Any, int]], clock: Callable[[], float], stop: threading.Event
) -> Iterator[tuple[int, list[Any]]]:
    """Group ``(due, frame, bus)`` items into ``(bus, batch)``: a batch ends at BATCH frames, at
    a change of bus, and before waiting for a paced frame's due time, so nothing held waits
    with it. Ends early when ``stop`` is set."""
    batch: list[Any] = []
    index = 0
    for due, msg, i in frames:
        if due and due - clock() > 0.002:
            if batch:
                yield index, batch
                batch = []
            if stop.wait(due - clock()):
                return
        if batch and (i != index or len(batch) >= BATCH):
            yield index, batch
            batch = []
            if stop.is_set():
                return
        index = i
        batch.append(msg)
    if batch:
        yield index, batch


@dataclass
class SourceStatus:
    name: str
    kind: str
    state: str = "starting"  # starting, up, silent, down, finished, failed
    frames: int = 0
    dropped_frames: int = 0
    reopens: int = 0
    # Of dropped_frames: those the kernel dropped from a full socket receive buffer.
    kernel_dropped: int = 0
    # Lines of a replayed text log that no frame could be read from (skipped).
    unreadable_lines: int = 0
    first_unreadable_line: int = 0
    last_error: str = ""


class Source:
    """One bus or log, read on its own thread into the shared queue."""

    def __init__(
        self,
        index: int,
        cfg: BusConfig,
        out: queue.Queue[Item],
        stop: threading.Event,
        *,
        can_filters: list[dict[str, Any]] | None = None,
        messages: dict[int, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self.cfg = cfg
        self.out = out
        self.stop = stop
        self.can_filters = can_filters
        # The catalog's messages of this bus, for kernel-side change detection (agent.sources.bcm).
        self.messages = messages
        self._bcm: bcm.BcmReader | None = None
        # Where a live SocketCAN reader is lent to the pipeline's thread (agent.inline); None:
        # it is read on this source's own thread.
        self.lender: Lender | None = None
        self.clock = clock
        self.status = SourceStatus(cfg.name, "replay" if cfg.is_replay else cfg.interface)
        self._last_frame = clock()
        self._bus: Any = None
        # How long an idle read blocks: each timeout wakes the process, so a parked car's
        # lifecycle raises it (agent.lifecycle); a stop request waits at most this long.
        self.idle_recv = IDLE_RECV
        self._read_error: SourceError | None = None
        self._child: LogChild | None = None
        self._thread = threading.Thread(target=self._main, name=f"source-{cfg.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def set_filters(
        self, can_filters: list[dict[str, Any]] | None, messages: dict[int, Any] | None = None
    ) -> None:
        """New kernel filters, applied to the open bus at once and kept for reopening."""
        self.can_filters = can_filters
        self.messages = messages if messages is not None else self.messages
        if (reader := self._bcm) is not None and self.messages is not None:
            reader.update(self.messages)
            return
        bus = self._bus
        if bus is not None:
            try:
                bus.set_filters(can_filters)
            except (can.CanError, OSError) as err:
                log.warning("bus %s: cannot set filters: %s", self.cfg.name, err)

    def state(self) -> str:
        """The state, with "silent" derived from the time since the last frame.

        A SocketCAN socket on an interface that went down raises once and then only times
        out, like a quiet bus: so a silent socketcan bus is checked against the interface's
        own state, and reported "down" when the kernel says so.
        """
        st = self.status.state
        if st == "up" and self.clock() - self._last_frame > self.cfg.silent_after:
            if self.cfg.interface == "socketcan" and not link_up(self.cfg.channel):
                return "down"
            return "silent"
        return st

    def heard(self, now: float | None = None) -> None:
        """A frame arrived (``now``, else the clock's now): the bus is not silent."""
        self._last_frame = self.clock() if now is None else now

    def heard_until(self, when: float) -> None:
        """Frames are known to have arrived until ``when`` (CAN_BCM's confirmations)."""
        self._last_frame = max(self._last_frame, when)

    def set_state(self, state: str, why: str = "") -> None:
        if state == self.status.state:
            return
        self.status.state = state
        if state == "down":
            self.status.last_error = why
            log.warning("bus %s is down: %s (reopening with backoff)", self.cfg.name, why)
        elif state == "up":
            log.info(
                "bus %s is up (%s)",
                self.cfg.name,
                self.cfg.log if self.cfg.is_replay else f"{self.cfg.interface} {self.cfg.channel}",
            )
        elif state == "failed":
            self.status.last_error = why
            log.error("bus %s failed: %s", self.cfg.name, why)

    def _main(self) -> None:
        try:
            if self.cfg.is_replay:
                self._replay()
            else:
                live.run(self)
        except Exception as err:  # a source must end visibly, never by a silent thread death
            self.set_state("failed", f"{type(err).__name__}: {err}")
            self._put_blocking(SourceError(f"bus {self.cfg.name}: {err}"))
        finally:
            self.stop_reading()
            self._put_blocking(END)

    def _put_blocking(self, payload: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put((self.index, payload), timeout=0.1)
                return True
            except queue.Full:
                continue
        # Stopping: the end marker still matters to a pipeline draining the queue.
        try:
            self.out.put_nowait((self.index, payload))
            return True
        except queue.Full:
            return False

    # -- replay ------------------------------------------------------------------------
    def _unreadable_line(self, number: int, err: Exception) -> None:
        self._unreadable(number, type(err).__name__, str(err))

    def _unreadable(self, number: int, kind: str, text: str) -> None:
        st = self.status
        st.unreadable_lines += 1
        if not st.first_unreadable_line:
            st.first_unreadable_line = number
        rlog.warning(
            ("unreadable", self.index),
            "bus %s: %s:%d: unreadable line skipped (%s: %s)",
            self.cfg.name,
            self.cfg.log,
            number,
            kind,
            text,
        )

    def _unreadable_summary(self) -> str:
        st = self.status
        if not st.unreadable_lines:
            return ""
        return (
            f"{st.unreadable_lines} unreadable lines skipped "
            f"(the first at line {st.first_unreadable_line})"
        )

    def in_process(self) -> bool:
        """Whether the log is read in a child process (``reader``; agent.logchild)."""
        cfg = self.cfg
        if not cfg.is_replay or cfg.reader == "thread":
            return False
        if cfg.reader == "process":
            return True
        assert cfg.log is not None
        try:
            size = cfg.log.stat().st_size
        except OSError:
            return False  # the in-thread reading reports it
        # On one core the child's work (rows, pickling) only adds to the pipeline's.
        return cfg.speed <= 0 and size >= PROCESS_MIN_BYTES and _cores() >= 2

    def _messages(self) -> Iterator[Any]:
        """The log's frames, time-shifted as configured. A log that breaks off ends the
        iteration and leaves a SourceError naming the file in ``_read_error``: the frames read
        before it must still be handed on, then the consumer raises it (``_raise_read_error``).
        Unreadable lines of a text log are skipped, counted and reported."""
        path = self.cfg.log
        assert path is not None
        reader, close = open_log(path, self._unreadable_line)
        self.set_state("up")
        shift = self.cfg.time == "now"
        offset = None
        count = 0
        stop = self.stop
        try:
            for msg in reader:
                if offset is None:
                    offset = time.time() - msg.timestamp if shift else 0.0
                if offset:
                    msg.timestamp += offset
                count += 1
                if not count & 0xFF:
                    self.status.frames = count
                    if stop.is_set():
                        return
                yield msg
        except Exception as err:
            self._broke_off(count, str(err))
            return
        finally:
            close()
            self.status.frames = count
        self._ended(count)

    def _child_batches(self) -> Iterator[list[Row]]:
        """As ``_messages``, from a child process reading the log (agent.logchild), in rows
        and in lists of up to BATCH, cut where the in-thread reading cuts them."""
        path = self.cfg.log
        assert path is not None
        self._child = child = LogChild(path, shift=self.cfg.time == "now")
        count = 0
        try:
            child.open()
            self.set_state("up")
            stop, status = self.stop, self.status
            for chunk, bad in child.chunks():
                for line in bad:
                    self._unreadable(*line)
                for start in range(0, len(chunk), BATCH):
                    batch = chunk[start : start + BATCH]
                    count += len(batch)
                    status.frames = count
                    yield batch
                    if stop.is_set():
                        return
        finally:
            self.stop_reading()
            self.status.frames = count
        if child.error is not None:
            self._broke_off(count, child.error)
            return
        self._ended(count)

    @property
    def reader_pid(self) -> int:
        """The child process reading the log while it runs (``reader``), else 0."""
        return self._child.pid if self._child is not None else 0

    def stop_reading(self) -> None:
        """End the child process reading the log, if there is one (idempotent)."""
        if (child := self._child) is not None:
            child.close()

    def _broke_off(self, count: int, why: str) -> None:
        skipped = self._unreadable_summary()
        self._read_error = SourceError(
            f"{self.cfg.log}: unreadable after frame {count}: {why}"
            + (f"; {skipped}" if skipped else "")
        )

    def _ended(self, count: int) -> None:
        if skipped := self._unreadable_summary():
            if not count:
                self._read_error = SourceError(f"{self.cfg.log}: no readable frame; {skipped}")
                return
            log.warning(
                "bus %s: %s: %d frames read, %s", self.cfg.name, self.cfg.log, count, skipped
            )
        self.set_state("finished")

    def frames(self) -> Iterator[tuple[float, Row, int]]:
        """The log's frames as ``(due, frame row, bus index)`` (rows: agent.canlog.ROW).

        ``due`` is the monotonic time at which a paced replay should hand the frame on (0 when
        the replay runs as fast as possible); waiting is the consumer's job, so it can first
        pass on what it holds.
        """
        speed, index = self.cfg.speed, self.index
        rows: Iterator[Row] = (
            itertools.chain.from_iterable(self._child_batches())
            if self.in_process()
            else map(ROW, self._messages())
        )
        t0_mono = t0_ts = None
        for row in rows:
            if speed <= 0:
                yield 0.0, row, index
                continue
            if t0_mono is None or t0_ts is None:
                t0_mono, t0_ts = self.clock(), row[0]
            yield t0_mono + (row[0] - t0_ts) / speed, row, index
        self._raise_read_error()

    def batches(self) -> Iterator[list[Row]]:
        """The log's frames as rows in lists of up to BATCH, for an unpaced replay
        (``speed = 0``): the lists are filled in C, without a Python step per frame."""
        if self.in_process():
            yield from self._child_batches()
        else:
            messages = self._messages()
            while batch := list(map(ROW, itertools.islice(messages, BATCH))):
                yield batch
        self._raise_read_error()

    def _raise_read_error(self) -> None:
        if self._read_error is not None:
            raise self._read_error

    def _replay(self) -> None:
        for _, batch in paced_batches(self.frames(), self.clock, self.stop):
            self._put_blocking(batch)
