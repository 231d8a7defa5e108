"""The pipeline's loops: live buses (a wait on its inbox, agent.inline) and replays (the logs
read in the pipeline's own thread, merged by frame time).

Each turn hands a batch to ``Pipeline._turn``, which processes it and runs the timers. It does
not process frames itself, nor open buses (agent.can_source).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

from agent.can_source import END, paced_batches
from agent.canlog import ROW, Row
from agent.errors import SourceError

if TYPE_CHECKING:
    from agent.pipeline import Pipeline

# While running, the loop turns at least this often even with nothing due: the inputs' states
# that follow from time alone (a GNSS receiver that stopped speaking) are polled at turns.
TURN_AT_LEAST = 1.0


def live(p: Pipeline) -> None:
    """Buses read by their sources (some lent to this thread): until every source ended or
    stop() was called."""
    for src in p.sources:
        src.start()
    active = len(p.sources)
    rows = [not src.cfg.is_replay for src in p.sources]
    p.now = p.clock()
    p._reschedule()
    try:
        while active:
            if p.stop_event.is_set() and p.queue.empty():
                break
            items = p.inbox.wait(_block(p))
            p.now = p.clock()
            if not items:
                p._turn(-1, [])
            for index, payload in items:
                if payload is END:
                    active -= 1
                elif isinstance(payload, SourceError):
                    p.stats.source_errors.extend(payload.problems)
                if not isinstance(payload, list):
                    payload = []
                elif rows[index]:
                    # A live bus hands frames (a replay rows): the loop processes rows.
                    payload = list(map(ROW, payload))
                p._turn(index, payload)
    finally:
        # Lent readers go back to their sources' threads, which close their buses.
        p.inbox.close()
    for src in p.sources:
        src.join(timeout=2.0)


def _block(p: Pipeline) -> float:
    """How long the loop may wait for frames: parked, the idle timeout; else until the next
    thing due, at most TURN_AT_LEAST (and the watchdog's interval)."""
    if p.idle_timeout is not None:
        return p.idle_timeout
    most = TURN_AT_LEAST
    if p.watchdog_every is not None:
        most = min(most, p.watchdog_every)
    return max(0.0, min(most, p._due - p.clock()))


def _frame_time(item: tuple[float, Row, int]) -> float:
    return item[1][0]


def replays(p: Pipeline) -> None:
    """Every bus is a replay: read the logs in this thread, merged by frame time.

    No reader threads: handing frames between threads costs more than reading them, and a
    merge by timestamp interleaves several logs as the buses carried them. A large log is
    read in a child process instead (``reader``, agent.logchild), beside this thread.
    """
    sources = p.sources
    batches: Iterator[tuple[int, list[Row]]]
    if len(sources) == 1 and sources[0].cfg.speed <= 0:
        # Unpaced single log: batches filled without a Python step per frame.
        batches = ((0, chunk) for chunk in sources[0].batches())
    else:
        frames: Iterator[tuple[float, Row, int]] = (
            sources[0].frames()
            if len(sources) == 1
            else heapq.merge(*(src.frames() for src in sources), key=_frame_time)
        )
        batches = paced_batches(frames, p.clock, p.stop_event)
    try:
        for index, batch in batches:
            p._turn(index, batch)
            if p.stop_event.is_set():
                break
    except SourceError as err:
        p.stats.source_errors.extend(err.problems)
    finally:
        # A log read in a child process (reader): the child ends with the replay.
        for src in sources:
            src.stop_reading()
