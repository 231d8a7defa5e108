"""``Outbox``: the durable queue's public face, for the pipeline (put), the uplink (next_batch,
ack, wait_for_data), the privacy purge (iter_rows, purge_ids, replace, rewrite_buffered,
scrub) and the status (stats).

It opens the file (agent.outbox.dbfile), holds the locks, the counters and the open/closed
state, and starts the committer (agent.outbox.committer) that does every write but ``replace``.
Only committed rows are handed to the uplink: ``next_batch`` reads the database, never the
memory buffer. With ``tag_of`` (the daemon passes the schema id reader), ``tags()`` tells which
tags the stored rows carry without reading them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox.committer import Committer
from agent.outbox.dbfile import open_reader, open_table
from agent.outbox.rows import EVENT, RANK, TELEMETRY, Counters, OutboxEntry
from agent.outbox.table import Table
from agent.ratelimit import RateLimitedLog

log = logging.getLogger("agent.outbox")


@dataclass(frozen=True)
class OutboxStats:
    rows: int  # committed rows on disk (acked ones are gone within a few ms)
    bytes: int  # payload bytes plus ROW_OVERHEAD per row
    rows_event: int
    rows_telemetry: int
    oldest_created: float | None  # wall time of the first stored row of either priority
    oldest_age: float | None  # seconds, by the wall clock
    committed: int  # rows committed since open
    acked: int  # rows deleted after an ack since open
    purged: int
    evicted_telemetry: int
    evicted_event: int
    expired: int
    corrupt_moved: tuple[str, ...]  # paths of corrupt files moved aside at open
    disk_full: bool
    write_error: str | None  # the last failed commit while writing is failing, else None
    memory_rows: int  # updates waiting in memory for the disk
    memory_bytes: int
    memory_dropped: int


class Outbox:
    """The durable queue between the pipeline (put) and the uplink (next_batch, ack).

    Thread-safe. Lock order: ``_db_lock`` (connection and transactions) before ``_buf_lock``
    (memory buffer, queued acks, counters); ``put`` and ``ack`` take only ``_buf_lock`` so the
    pipeline never waits for a disk write. ``next_batch`` reads on a connection of its own
    (``_read_lock``, then ``_buf_lock``), so the uplink never waits for a commit's fsync.
    """

    def __init__(
        self,
        cfg: OutboxConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tag_of: Callable[[bytes], str] | None = None,
    ) -> None:
        self._cfg = cfg
        self._tag_of = tag_of
        self._path = Path(cfg.path)
        self._clock = clock
        self._wall = wall
        self._db_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._buf_lock = threading.Lock()
        self._data = threading.Condition(self._buf_lock)
        # Called (on the committing thread, must not block) after each commit: a waiter that
        # cannot block on wait_for_data (the uplink with a downlink) is woken through it.
        self.on_commit: Callable[[], None] | None = None
        # Set by open(), None again after close(); replaced together.
        self._table: Table | None = None
        self._reader: Table | None = None  # the read-only connection of next_batch
        self._committer: Committer | None = None
        self._counters = Counters()
        self._corrupt_moved: tuple[str, ...] = ()
        self._opened = False
        self._closed = False

    def _committed(self) -> None:
        hook = self.on_commit
        if hook is not None:
            hook()

    # ----------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Check the file (moving a corrupt one aside), create the schema, start committing."""
        if self._opened:
            raise RuntimeError("outbox already opened")
        table, moved = open_table(self._path, self._wall, self._tag_of)
        try:
            reader = open_reader(self._path)
        except BaseException:
            table.close()
            raise
        counters = table.counters()
        committer = Committer(
            self._cfg,
            table,
            counters,
            db_lock=self._db_lock,
            data=self._data,
            clock=self._clock,
            wall=self._wall,
            ratelog=RateLimitedLog(log, interval=60.0, clock=self._clock),
            on_commit=self._committed,
        )
        with self._db_lock, self._buf_lock:
            self._table, self._committer, self._counters = table, committer, counters
            self._corrupt_moved = tuple(moved)
            self._opened = True
        with self._read_lock:
            self._reader = reader
        committer.start()
        log.info(
            "outbox %s: %d rows, %d bytes held",
            self._path,
            sum(counters.rows),
            sum(counters.bytes),
        )

    def close(self) -> None:
        """Commit pending puts and acks, stop the committer, close the database."""
        with self._buf_lock:
            if self._closed or not self._opened:
                self._closed = True
                return
            self._closed = True
            self._data.notify_all()
            committer, table = self._committer, self._table
        assert committer is not None and table is not None
        committer.stop()
        committer.cycle(force=True)
        with self._db_lock, self._buf_lock:
            lost = committer.buffer.clear()
            if lost:
                log.error(
                    "outbox %s: closing with %d updates not written (%s); they are lost",
                    self._path,
                    lost,
                    committer.write_error,
                )
            committer.detach()
            table.close()
            self._table = None
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __enter__(self) -> Outbox:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ producer

    def put(
        self, payload: bytes, priority: str = "telemetry", created: float | None = None
    ) -> None:
        """Buffer one update; it is committed with the window (or at once for an event)."""
        rank = RANK.get(priority)
        if rank is None:
            raise ValueError(f"priority must be 'telemetry' or 'event', not {priority!r}")
        if created is None:
            created = self._wall()
        payload = bytes(payload)
        with self._buf_lock:
            if self._closed or self._committer is None:
                raise RuntimeError("outbox is not open")
            self._committer.add(rank, created, payload)

    def flush(self) -> None:
        """Commit everything buffered now (blocking). On a failing disk it stays buffered."""
        if self._committer is not None:
            self._committer.cycle(force=True)

    # -------------------------------------------------------------------------------- uplink

    def next_batch(
        self, limit: int, exclude: Collection[int] = (), after: OutboxEntry | None = None
    ) -> list[OutboxEntry]:
        """Committed rows not in ``exclude`` and not acked: events oldest first, then telemetry.

        ``after``: only the rows that come after this one (the last of an earlier batch), so
        that a reader continuing its read passes no row twice. Rows committed since may come
        before it: the reader reads from the start again when ``generation()`` changed."""
        if limit <= 0:
            return []
        position = None if after is None else (RANK[after.priority], after.id)
        # The ids to skip are taken before the read: a row whose deletion commits in between
        # is still among them (the committer hides it until its transaction is done).
        with self._read_lock:
            reader, committer = self._reader, self._committer
            if reader is None or committer is None:
                return []
            with self._buf_lock:
                if self._closed:
                    return []
                skip = committer.hidden()
            skip.update(exclude)
            return reader.unsent(limit, skip, position)

    def generation(self) -> int:
        """A number that changes whenever a commit adds rows (see ``next_batch``'s ``after``)."""
        with self._buf_lock:
            return self._counters.committed

    def ack(self, ids: Iterable[int]) -> None:
        """The broker has these: delete them (batched, committed within a few ms)."""
        with self._buf_lock:
            if self._table is None or self._committer is None:
                return
            self._committer.add_acks(ids)

    def wait_for_data(self, timeout: float, exclude: Collection[int] = ()) -> bool:
        """Block until committed, unacked rows not in ``exclude`` exist, or ``timeout`` passes.

        Woken by every commit that adds rows, so a new event is seen within milliseconds.
        """
        deadline = time.monotonic() + timeout
        with self._data:
            while True:
                if self._closed or self._committer is None:
                    return False
                gone = self._committer.hidden()
                if exclude:
                    gone = gone.union(exclude)
                if sum(self._counters.rows) > len(gone):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._data.wait(remaining)

    # ------------------------------------------------------------------------------- privacy

    def iter_rows(self) -> Iterator[OutboxEntry]:
        """Every committed row, oldest id first, read in pages (no lock held between pages)."""
        last = -1
        while True:
            with self._db_lock:
                if self._table is None:
                    return
                page = self._table.page(last)
            if not page:
                return
            yield from page
            last = page[-1].id

    def purge_ids(self, ids: Iterable[int]) -> None:
        """Delete not-yet-sent rows (consent revoked); hidden at once, committed now if possible.

        Updates still in the memory buffer have no id yet: ``flush()`` first to purge them too.
        """
        with self._buf_lock:
            committer = self._committer
            if self._table is None or committer is None:
                return
            committer.add_purges(ids)
        committer.cycle(force=True)

    def replace(self, row_id: int, payload: bytes) -> bool:
        """Rewrite a not-yet-sent row in place (e.g. some of its samples' consent was revoked),
        keeping its id and so its place in the queue. Committed at once. False if the row is
        gone (sent, evicted) or the disk refused the write (the row is then unchanged)."""
        with self._db_lock:
            if self._table is None:
                return False
            found = self._table.rewrite(row_id, payload)
            if found is None:
                return False
            rank, old_size = found
            with self._buf_lock:
                self._counters.bytes[rank] += len(payload) - old_size
            return True

    def rewrite_buffered(self, fn: Callable[[bytes], bytes | None]) -> tuple[int, int]:
        """Rewrite the updates still in the memory buffer (the disk refused them so far; after
        ``flush()`` nothing else waits there): ``fn`` returns the payload to keep in the same
        place, None to drop it. (rewritten, dropped); not counted as ``purged``."""
        with self._db_lock, self._buf_lock:
            # The database lock: no commit has a batch out of the buffer meanwhile.
            if self._committer is None:
                return 0, 0
            return self._committer.buffer.rewrite(fn)

    def scrub(self) -> bool:
        """After a purge: commit what is pending, then copy the write-ahead log into the file
        and truncate it, so the old versions of rewritten and deleted rows (zeroed in the file
        itself) are not left in the log either. False if a reader kept the log from being
        truncated (it is then overwritten by later commits)."""
        self.flush()
        with self._db_lock:
            return self._table.checkpoint() if self._table is not None else False

    # --------------------------------------------------------------------------------- stats

    def tags(self) -> set[str]:
        """The tags (``tag_of`` of the payloads) of the committed rows, without reading them.
        Rows acked a few milliseconds ago may still count."""
        with self._db_lock:
            return self._table.tags() if self._table is not None else set()

    def stats(self) -> OutboxStats:
        with self._db_lock:
            oldest = self._table.oldest() if self._table is not None else None
            with self._buf_lock:
                c, committer = self._counters, self._committer
                buffer = committer.buffer if committer is not None else None
                return OutboxStats(
                    rows=sum(c.rows),
                    bytes=sum(c.bytes),
                    rows_event=c.rows[EVENT],
                    rows_telemetry=c.rows[TELEMETRY],
                    oldest_created=oldest,
                    oldest_age=None if oldest is None else max(0.0, self._wall() - oldest),
                    committed=c.committed,
                    acked=c.acked,
                    purged=c.purged,
                    evicted_telemetry=c.evicted[TELEMETRY],
                    evicted_event=c.evicted[EVENT],
                    expired=c.expired,
                    corrupt_moved=self._corrupt_moved,
                    disk_full=committer.disk_full if committer else False,
                    write_error=committer.write_error if committer else None,
                    memory_rows=buffer.rows if buffer else 0,
                    memory_bytes=buffer.bytes if buffer else 0,
                    memory_dropped=buffer.dropped if buffer else 0,
                )
