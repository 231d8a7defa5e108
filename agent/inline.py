"""Live SocketCAN buses read in the pipeline's thread: one thread wakes per batch, not two.

A live SocketCAN bus's source thread (agent.can_source, agent.sources.live) opens and
configures the bus, then lends its reader to the pipeline (``Lender.lend``) and blocks until the
pipeline hands it back with the error that broke the bus (the source closes it, reports it down
and reopens it with backoff) or with none at a stop. Meanwhile the pipeline's wait
(``Inbox.wait``) polls the lent readers' sockets together with a wake-up file descriptor
(``Wakeup``), signalled by every item put on the pipeline's queue: the batches of the buses
still read on their own threads (other python-can interfaces), ``Pipeline.wake`` (feeds,
``call_soon``, reloads, stop, parked mode) and the sources' end markers and errors. A reader
that took frames sleeps out its window (agent.sources.socketcan ``WINDOW``) as it does on its
own thread: its sockets are left out of the poll until then, so a busy bus costs one wake per
window. Its timers (kernel drop counts, CAN_BCM confirmations) are deadlines of the same wait;
nothing else wakes it, so an idle agent blocks until its next real deadline.

It does not open, configure or close buses, nor process frames (agent.pipeline).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import select
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

# How many items of the queue one wait takes at most: the rest wait for the next turn.
QUEUE_ITEMS = 64


class Lendable(Protocol):
    """A live reader's receive step, as agent.sources.live's ``RawStep`` and
    agent.sources.bcm's ``BcmReader`` offer it."""

    def fds(self) -> tuple[int, ...]:
        """The sockets to wait for."""
        ...

    def window_end(self) -> float:
        """Until when (monotonic) its sockets are left alone after a batch (0: none)."""
        ...

    def due(self) -> float:
        """When (monotonic) ``step`` must run even if no socket is ready (its timers)."""
        ...

    def step(self, ready: Sequence[int]) -> list[Any]:
        """Receive from the sockets in ``ready`` (none: only its timers are due) and do the
        bookkeeping; the frames to process. Raises what breaks the bus."""
        ...


class Wakeup:
    """A file descriptor any thread can make readable (an eventfd; a pipe where there is none)."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            self._read = self._write = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._token = (1).to_bytes(8, "little")
        else:  # pragma: no cover - a Python without os.eventfd
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)
            self._token = b"\0"
        # Held while signalling and closing: a descriptor closed (and its number reused) is
        # never written to.
        self._lock = threading.Lock()
        self._closed = False

    def fileno(self) -> int:
        return self._read

    def signal(self) -> None:
        with self._lock:
            if self._closed:
                return
            # A full pipe is readable anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write, self._token)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._read, 4096)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in {self._read, self._write}:
                os.close(fd)


class WakingQueue(queue.Queue[tuple[int, Any]]):
    """A bounded queue whose every put also signals a ``Wakeup``."""

    def __init__(self, maxsize: int, wakeup: Wakeup) -> None:
        super().__init__(maxsize)
        self.wakeup = wakeup

    def _put(self, item: tuple[int, Any]) -> None:
        super()._put(item)
        self.wakeup.signal()


class Loan:
    """A reader lent by its source's thread: handed back once, with the error that broke it
    (None at a stop)."""

    def __init__(self, index: int, reader: Lendable) -> None:
        self.index = index
        self.reader = reader
        self.fds = reader.fds()
        self.polled = False  # its sockets are in the pipeline's poll (not in its window)
        self.error: BaseException | None = None
        self._back = threading.Event()

    def hand_back(self, error: BaseException | None = None) -> None:
        self.error = error
        self._back.set()

    def wait_back(self) -> BaseException | None:
        self._back.wait()
        return self.error


class Lender:
    """Where sources lend their readers to the pipeline's loop, across threads."""

    def __init__(self, wakeup: Wakeup) -> None:
        self.wakeup = wakeup
        self._lock = threading.Lock()
        self._new: list[Loan] = []
        self._closed = False

    def lend(self, index: int, reader: Lendable) -> bool:
        """The source's thread: read ``reader`` in the pipeline's thread until it is handed
        back; raises the error that broke it. False at once if the loop has ended (the caller
        reads on its own thread)."""
        loan = Loan(index, reader)
        with self._lock:
            if self._closed:
                return False
            self._new.append(loan)
        self.wakeup.signal()
        error = loan.wait_back()
        if error is not None:
            raise error
        return True

    def take(self) -> list[Loan]:
        """The pipeline's thread: the loans made since the last call."""
        if not self._new:
            return []
        with self._lock:
            new, self._new = self._new, []
        return new

    def close(self) -> list[Loan]:
        """The loop ended: later loans are refused; the ones not taken yet are returned."""
        with self._lock:
            self._closed = True
            new, self._new = self._new, []
        return new


class Inbox:
    """The pipeline's wait: its queue, and with a lender the lent readers' sockets too."""

    def __init__(self, maxsize: int, *, inline: bool, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.wakeup: Wakeup | None = Wakeup() if inline else None
        self.queue: queue.Queue[tuple[int, Any]] = (
            queue.Queue(maxsize) if self.wakeup is None else WakingQueue(maxsize, self.wakeup)
        )
        self.lender = Lender(self.wakeup) if self.wakeup is not None else None
        self.loans: list[Loan] = []
        self._poll: Any = None
        self._owner: dict[int, Loan] = {}  # a lent socket -> its loan
        self._more = False  # the last wait left items on the queue

    def wait(self, timeout: float) -> list[tuple[int, Any]]:
        """Items (bus index, payload) within ``timeout`` seconds: queued ones first, then the
        batches of lent readers whose sockets were ready or whose timers were due. Empty
        after a timeout."""
        if self.lender is None:
            try:
                return [self.queue.get(timeout=timeout)]
            except queue.Empty:
                return []
        return self._wait_inline(timeout)

    def _wait_inline(self, timeout: float) -> list[tuple[int, Any]]:
        assert self.wakeup is not None and self.lender is not None
        poll = self._poll
        if poll is None:
            poll = self._poll = select.poll()
            poll.register(self.wakeup.fileno(), select.POLLIN)
        for loan in self.lender.take():
            self.loans.append(loan)
            for fd in loan.fds:
                self._owner[fd] = loan
        now = self.clock()
        deadline = now + timeout
        for loan in self.loans:
            reader = loan.reader
            window = reader.window_end()
            # A reader sleeping out its window is left out of the poll until the window ends.
            if window > now:
                if window < deadline:
                    deadline = window
                if loan.polled:
                    loan.polled = False
                    for fd in loan.fds:
                        poll.unregister(fd)
            elif not loan.polled:
                loan.polled = True
                for fd in loan.fds:
                    poll.register(fd, select.POLLIN)
            due = reader.due()
            if due < deadline:
                deadline = due
        if self._more:
            deadline = now
        wait = deadline - now
        # poll() takes milliseconds: round up, so a deadline is not missed by a fraction.
        events = poll.poll(None if wait == math.inf else math.ceil(wait * 1000) if wait > 0 else 0)
        out: list[tuple[int, Any]] = []
        ready: dict[Loan, list[int]] = {}
        signalled = False
        owner = self._owner
        for fd, _ in events:
            lent = owner.get(fd)
            if lent is None:
                signalled = True
            else:
                ready.setdefault(lent, []).append(fd)
        if signalled or self._more:
            # Every put signals: the queue is looked at only then (or when items were left).
            self.wakeup.clear()
            get = self.queue.get_nowait
            self._more = False
            try:
                for _ in range(QUEUE_ITEMS):
                    out.append(get())
                self._more = True
            except queue.Empty:
                pass
        now = self.clock()
        for loan in list(self.loans):
            fds = ready.get(loan, [])
            if not fds and loan.reader.due() > now:
                continue
            try:
                batch = loan.reader.step(fds)
            except Exception as err:  # the source's thread reports and reopens (or fails)
                self._return(loan, err)
                continue
            if batch:
                out.append((loan.index, batch))
        return out

    def _return(self, loan: Loan, error: BaseException | None) -> None:
        self.loans.remove(loan)
        for fd in loan.fds:
            del self._owner[fd]
            if loan.polled and self._poll is not None:
                self._poll.unregister(fd)
        loan.polled = False
        loan.hand_back(error)

    def close(self) -> None:
        """The loop ended: every lent reader goes back to its source's thread."""
        if self.lender is None or self.wakeup is None:
            return
        for loan in self.lender.close():
            loan.hand_back()
        for loan in list(self.loans):
            self._return(loan, None)
        self._poll = None
        # Whatever still puts on the queue (a late wake, an end marker) finds it closed.
        self.wakeup.close()
