"""The outbox's writer: group commit of buffered updates, batched deletion of acked rows, expiry.

A background thread writes, in one transaction, whatever is due: the memory buffer when the
group-commit window (``commit_interval``, on the monotonic clock from the first buffered put)
expires, at once for an event or when the buffer reaches half of ``memory_bytes``; acked and
purged rows within ``_ACK_DELAY`` (``_DRAIN_ACK_DELAY`` while a backlog drains); rows past their
maximum age every ``_expire_every`` seconds.
``cycle(force=True)`` writes everything now (flush, purge, close).

If a commit fails (disk full, read-only, I/O error) the transaction is rolled back, the updates
go back to the memory buffer, acks and purges are kept, the state is logged once per change, and
the thread retries every window. The counters change only when a transaction commits.

Locks (owned by agent.outbox.queue, passed in): the database lock before the buffer lock. The
methods named "caller holds the buffer lock" are for the queue's put/ack paths, which never wait
for a disk write.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable

from agent.config import OutboxConfig
from agent.outbox.buffer import Batch, MemoryBuffer
from agent.outbox.rows import EVENT, TELEMETRY, Counters, Tx, is_full
from agent.outbox.table import Table
from agent.ratelimit import RateLimitedLog

log = logging.getLogger("agent.outbox")

# Acks are deleted in batches: one commit (one fsync) per this many seconds at most.
_ACK_DELAY = 0.02
# While a backlog drains (this many acks or more waiting when the batch falls due), the batch
# waits on until it is this old: a fifth of the commits, the WAL pages and fsyncs they write,
# and of the commit thread's turns. Bounded, because acked rows that are not yet deleted are
# sent again after a crash (duplicates of the same (boot, seq), never lost, never new data).
_DRAIN_ACKS = 256
_DRAIN_ACK_DELAY = 0.1


class Committer:
    def __init__(
        self,
        cfg: OutboxConfig,
        table: Table,
        counters: Counters,
        *,
        db_lock: threading.Lock,
        data: threading.Condition,
        clock: Callable[[], float],
        wall: Callable[[], float],
        ratelog: RateLimitedLog,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._on_commit = on_commit
        self._path = cfg.path
        self._table: Table | None = table  # None once detached at close
        self._counters = counters
        self._db_lock = db_lock
        self._data = data  # its lock is the buffer lock
        self._clock = clock
        self._wall = wall
        self._ratelog = ratelog
        self._max_age = {EVENT: cfg.max_age_event, TELEMETRY: cfg.max_age_telemetry}
        # Expiry scans a priority's rows: check often enough that rows outlive their maximum age
        # by at most ~5 %, and not more than once a second.
        ages = [a for a in self._max_age.values() if a > 0]
        self._expire_every = min(60.0, max(1.0, min(ages) / 20)) if ages else 0.0
        # Under the buffer lock:
        self.buffer = MemoryBuffer(cfg.memory_bytes, ratelog, cfg.path)
        self._acks: set[int] = set()
        self._purges: set[int] = set()
        # Acked and purged ids a transaction is deleting right now: still hidden from readers
        # (agent.outbox.queue reads on a connection of its own) until the deletion commits.
        self._deleting: set[int] = set()
        self._ack_since = 0.0
        self._retry_at = 0.0
        self._next_expire = clock()
        self.write_error: str | None = None  # the last failed commit while writing fails
        self.disk_full = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------- the queue's side (buffer lock held)

    def add(self, rank: int, created: float, payload: bytes) -> None:
        """Caller holds the buffer lock."""
        opens_window = not self.buffer.rows
        self.buffer.add(rank, created, payload, self._clock())
        # The first row opens a window the idle thread is not timing yet.
        if opens_window or rank == EVENT or self.buffer.half_full:
            self._wake.set()

    def add_acks(self, ids: Iterable[int]) -> None:
        """Caller holds the buffer lock."""
        if not self._acks:
            # The first ack of a batch sets when it is due; the committer, woken once, then
            # sleeps until then, so later acks of the batch need not wake it again.
            self._ack_since = self._clock()
            self._acks.update(ids)
            self._wake.set()
        else:
            self._acks.update(ids)

    def add_purges(self, ids: Iterable[int]) -> None:
        """Caller holds the buffer lock."""
        self._purges.update(ids)

    def hidden(self) -> set[int]:
        """Caller holds the buffer lock: ids stored but no longer to be sent (acked, purged)."""
        return self._acks | self._purges | self._deleting

    # ------------------------------------------------------------------------------ thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-commit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (without a last commit: ``cycle(force=True)`` does that)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def detach(self) -> None:
        """Caller holds the database lock: the table is closing; later cycles do nothing."""
        self._table = None

    def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.cycle(force=False)
            except Exception:  # a bug must not stop commits for good; the data stays buffered
                log.exception("outbox committer failed; retrying next window")
                self._stop.wait(self._cfg.commit_interval)
                continue
            self._wake.wait(self._due_in())

    def _due_in(self) -> float | None:
        """Seconds until the committer has something to do; None when only a put, an ack or a
        purge can give it work (they wake it): an idle outbox, e.g. in a parked car, has no
        timer running."""
        now = self._clock()
        with self._data:
            due: list[float] = []
            if self.buffer.rows:
                due.append(self._pending_due())
            if self._acks or self._purges:
                due.append(self._acks_due())
            if self._expire_every:
                due.append(max(self._next_expire, self._retry_at))
        return max(0.0, min(due) - now) if due else None

    def _pending_due(self) -> float:
        if self.write_error is not None:
            return self._retry_at
        if self.buffer.has_event or self.buffer.half_full:
            return self.buffer.window_start
        return self.buffer.window_start + self._cfg.commit_interval

    def _acks_due(self) -> float:
        if self.write_error is not None:
            return self._retry_at
        draining = len(self._acks) >= _DRAIN_ACKS
        return self._ack_since + (_DRAIN_ACK_DELAY if draining else _ACK_DELAY)

    # ------------------------------------------------------------------------------ writing

    def cycle(self, *, force: bool) -> None:
        """Write whatever is due (everything if ``force``) in one transaction."""
        with self._db_lock:
            table = self._table
            if table is None:
                return
            now = self._clock()
            with self._data:
                take_pending = bool(self.buffer.rows) and (force or self._pending_due() <= now)
                expire = bool(self._expire_every) and (
                    force or max(self._next_expire, self._retry_at) <= now
                )
                has_acks = bool(self._acks or self._purges)
                take_acks = has_acks and (
                    force or take_pending or expire or self._acks_due() <= now
                )
                if not (take_pending or take_acks or expire):
                    return
                batch: Batch = self.buffer.take() if take_pending else (deque(), deque())
                acks, purges = set(), set()
                if take_acks:
                    acks, self._acks = self._acks, acks
                    purges, self._purges = self._purges, purges
                    self._deleting = acks | purges
                if expire:
                    self._next_expire = now + self._expire_every
                    self._counters.expired += self.buffer.expire(batch, self._max_age, self._wall())
                stored = sum(self._counters.bytes)
            try:
                tx = table.transaction(
                    acks=acks,
                    purges=purges,
                    max_age=self._max_age if expire else None,
                    wall=self._wall(),
                    rows=batch,
                    stored_bytes=stored,
                    max_bytes=self._cfg.max_bytes,
                )
            except Exception as err:
                self._failed(err, batch, acks, purges)  # puts them back before they show
                return
            finally:
                if take_acks:
                    with self._data:
                        self._deleting = set()
            self._succeeded(tx)

    def _failed(self, err: Exception, batch: Batch, acks: set[int], purges: set[int]) -> None:
        message = f"{type(err).__name__}: {err}"
        with self._data:
            self.buffer.put_back(batch)
            self._acks |= acks
            self._purges |= purges
            self._retry_at = self._clock() + self._cfg.commit_interval
            changed = message != self.write_error
            self.write_error = message
            self.disk_full = is_full(err)
            buffered = self.buffer.rows
        if changed:
            log.error(
                "outbox %s: cannot write (%s); keeping %d updates in memory (at most %d bytes), "
                "retrying every %.3g s",
                self._path,
                message,
                buffered,
                self._cfg.memory_bytes,
                self._cfg.commit_interval,
            )

    def _succeeded(self, tx: Tx) -> None:
        with self._data:
            self._counters.apply(tx)
            recovered = self.write_error
            self.write_error = None
            self.disk_full = False
            if tx.committed:
                self._data.notify_all()
                if self._on_commit is not None:
                    self._on_commit()
            self._log_drops(tx)
        if recovered is not None:
            log.warning("outbox %s: writing again (after %s)", self._path, recovered)

    def _log_drops(self, tx: Tx) -> None:
        """Called with the buffer lock held (the rate limiter is not thread-safe)."""
        if any(tx.evicted):
            self._ratelog.warning(
                "evict",
                "outbox %s full (%d bytes): evicted %d telemetry and %d event updates",
                self._path,
                self._cfg.max_bytes,
                tx.evicted[TELEMETRY],
                tx.evicted[EVENT],
            )
        if tx.expired:
            self._ratelog.warning(
                "expire", "outbox %s: %d updates expired (max age)", self._path, tx.expired
            )
