"""The pipeline's wait with lent readers (agent.inline), on real file descriptors: a socket pair
stands in for a bus socket (SocketCAN itself is tested in tests/vcan). Queued items and
``wake``-style puts end a long wait; a lent reader is stepped when its socket is ready or its
timer is due, not while it sleeps out its window; the error that breaks it goes back to the
lending thread; closing hands every reader back."""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from agent.inline import QUEUE_ITEMS, Inbox
from tests.support.wait import wait_for

LONG = 60.0  # a wait that only a wake-up ends within the tests' timeouts


class PairReader:
    """A Lendable over one end of a socket pair: each step takes every datagram waiting."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.window = 0.0
        self.timer = math.inf
        self.steps: list[list[int]] = []
        self.fail: Exception | None = None

    def fds(self) -> tuple[int, ...]:
        return (self.sock.fileno(),)

    def window_end(self) -> float:
        return self.window

    def due(self) -> float:
        return self.timer

    def step(self, ready: Sequence[int]) -> list[Any]:
        self.steps.append(list(ready))
        if self.fail is not None:
            raise self.fail
        self.timer = math.inf
        out = []
        while ready:
            try:
                out.append(self.sock.recv(64))
            except BlockingIOError:
                break
        return out


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    bus, car = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    bus.setblocking(False)
    yield bus, car
    bus.close()
    car.close()


def _lend(inbox: Inbox, reader: PairReader) -> tuple[threading.Thread, list[object]]:
    """Lend ``reader`` from a thread of its own, as a source does; what lend ended with."""
    assert inbox.lender is not None
    lender = inbox.lender
    result: list[object] = []

    def lend() -> None:
        try:
            result.append(lender.lend(0, reader))
        except Exception as err:
            result.append(err)

    thread = threading.Thread(target=lend, daemon=True)
    thread.start()
    wait_for(lambda: lender._new, timeout=10, what="the loan")
    return thread, result


def _wait_in_thread(inbox: Inbox, timeout: float) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(inbox.wait(timeout)), daemon=True)
    thread.start()
    return thread, got


def test_a_put_on_the_queue_ends_a_long_wait() -> None:
    inbox = Inbox(4, inline=True, clock=time.monotonic)
    thread, got = _wait_in_thread(inbox, LONG)
    inbox.queue.put_nowait((-1, None))
    wait_for(lambda: not thread.is_alive(), timeout=10, what="the wait to end")
    assert got == [(-1, None)]
    inbox.close()


def test_items_beyond_one_wait_s_share_are_taken_by_the_next_wait() -> None:
    inbox = Inbox(QUEUE_ITEMS + 8, inline=True, clock=time.monotonic)
    for i in range(QUEUE_ITEMS + 8):
        inbox.queue.put_nowait((i, None))
    assert len(inbox.wait(LONG)) == QUEUE_ITEMS
    assert [i for i, _ in inbox.wait(LONG)] == list(range(QUEUE_ITEMS, QUEUE_ITEMS + 8))
    inbox.close()


def test_frames_on_a_lent_socket_are_stepped_and_handed_on(pair: Any) -> None:
    bus, car = pair
    inbox = Inbox(4, inline=True, clock=time.monotonic)
    reader = PairReader(bus)
    lender_thread, result = _lend(inbox, reader)
    assert inbox.wait(0) == []  # the loan taken, nothing on the bus yet
    thread, got = _wait_in_thread(inbox, LONG)
    car.send(b"a")
    car.send(b"b")
    wait_for(lambda: not thread.is_alive(), timeout=10, what="the frames to end the wait")
    assert got == [(0, [b"a", b"b"])]
    assert lender_thread.is_alive()  # lent until handed back
    inbox.close()
    wait_for(lambda: result, timeout=10, what="the reader handed back")
    assert result == [True]


def test_a_reader_in_its_window_is_not_polled_until_the_window_ends(pair: Any) -> None:
    bus, car = pair
    inbox = Inbox(4, inline=True, clock=time.monotonic)
    reader = PairReader(bus)
    _lend(inbox, reader)
    reader.window = time.monotonic() + LONG
    car.send(b"x")
    assert inbox.wait(0) == []
    assert reader.steps == []
    reader.window = 0.0
    assert inbox.wait(0) == [(0, [b"x"])]
    inbox.close()


def test_a_due_timer_steps_a_reader_with_no_socket_ready(pair: Any) -> None:
    bus, _ = pair
    inbox = Inbox(4, inline=True, clock=time.monotonic)
    reader = PairReader(bus)
    _lend(inbox, reader)
    reader.timer = time.monotonic()
    assert inbox.wait(LONG) == []  # returns at the timer, not after LONG
    assert reader.steps == [[]]
    inbox.close()


def test_the_error_that_breaks_a_reader_goes_back_to_its_thread(pair: Any) -> None:
    bus, car = pair
    inbox = Inbox(4, inline=True, clock=time.monotonic)
    reader = PairReader(bus)
    reader.fail = OSError(100, "Network is down")
    _, result = _lend(inbox, reader)
    car.send(b"y")
    assert inbox.wait(LONG) == []
    wait_for(lambda: result, timeout=10, what="the error handed back")
    assert isinstance(result[0], OSError) and result[0].errno == 100
    assert inbox.loans == []
    inbox.close()


def test_after_the_loop_ended_a_loan_is_refused_and_the_wake_up_is_closed(pair: Any) -> None:
    bus, _ = pair
    inbox = Inbox(4, inline=True, clock=time.monotonic)
    inbox.close()
    assert inbox.lender is not None
    assert inbox.lender.lend(0, PairReader(bus)) is False
    inbox.queue.put_nowait((0, "end"))  # a late end marker: no write to a closed descriptor
    assert inbox.queue.get_nowait() == (0, "end")


def test_without_inline_readers_the_wait_is_the_queue_s() -> None:
    inbox = Inbox(4, inline=False, clock=time.monotonic)
    assert inbox.lender is None
    inbox.queue.put_nowait((1, [1]))
    assert inbox.wait(LONG) == [(1, [1])]
    assert inbox.wait(0) == []
