"""Durable store-and-forward outbox: SQLite (WAL, ``synchronous=FULL``), one writer.

Every update is committed here before the uplink may publish it, and deleted only after the
broker acknowledged it. ``put()`` only buffers in memory; a background committer thread writes
the buffer in one transaction when the group-commit window (``commit_interval``, measured on the
monotonic clock from the first buffered put) expires, at once when an ``event`` is put, when the
buffer reaches half of ``memory_bytes``, and on ``flush()``/``close()``. So a process crash loses
nothing committed and a power cut loses at most the open window.

Ids come from ``AUTOINCREMENT`` and are never reused, also after the table empties and across
restarts. When a corrupt file is moved aside the id space of the lost file is unknown, so the
fresh file's sequence starts at the wall clock in milliseconds (ids are 64-bit integers: never
truncate them), which is above any id an earlier file could have reached unless the clock was
wrong.

Space: the outbox holds at most ``max_bytes``, counted as payload bytes plus ``ROW_OVERHEAD``
per row (an estimate of SQLite's record, b-tree cell and index entry for one row). The database
file itself does not shrink: freed pages are reused. When full, the oldest telemetry is evicted
first and events last, each eviction counted by priority.

Disk trouble: if a commit fails (disk full, read-only, I/O error), the transaction is rolled
back and the updates stay in the memory buffer, bounded by ``memory_bytes`` (overflow drops the
oldest telemetry first, counted in ``memory_dropped``). The state is in ``stats()`` and logged
once per change; the committer retries each window. Only committed rows are handed to the uplink
(``next_batch`` reads the database only): updates waiting in memory are published once the disk
takes them, and are lost if the process ends before that.

Leaves to others: what a payload means (agent.updates, agent.spime), publishing, in-flight
tracking and retries (agent.uplink), wiring and status reporting (agent.daemon).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.atomicfile import fsync_dir
from agent.config import OutboxConfig
from agent.errors import OutboxError
from agent.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

# Bytes counted per row on top of its payload, for max_bytes and memory_bytes.
ROW_OVERHEAD = 64

_EVENT, _TELEMETRY = 0, 1
_RANK = {"event": _EVENT, "telemetry": _TELEMETRY}
_PRIORITY = {_EVENT: "event", _TELEMETRY: "telemetry"}

# Acks are deleted in batches: one commit (one fsync) per this many seconds at most.
_ACK_DELAY = 0.02
# Host parameters per statement, well under SQLite's limit.
_CHUNK = 500
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rank INTEGER NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_rank_id ON outbox (rank, id);
"""


_OLDEST = """
SELECT min(c) FROM (
    SELECT (SELECT created FROM outbox WHERE rank = 0 ORDER BY id LIMIT 1) AS c
    UNION ALL
    SELECT (SELECT created FROM outbox WHERE rank = 1 ORDER BY id LIMIT 1)
)
"""


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    priority: str
    created: float  # wall seconds
    payload: bytes


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


class _Corrupt(Exception):
    def __init__(self, reason: str, conn: sqlite3.Connection | None = None) -> None:
        super().__init__(reason)
        self.conn = conn


@dataclass
class _Tx:
    """Changes made by one transaction, applied to the counters only once it commits."""

    rows: list[int] = field(default_factory=lambda: [0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    evicted: list[int] = field(default_factory=lambda: [0, 0])
    committed: int = 0
    acked: int = 0
    purged: int = 0
    expired: int = 0

    def removed(self, rank: int, rows: int, size: int) -> None:
        self.rows[rank] -= rows
        self.bytes[rank] -= size


_Pending = deque[tuple[float, bytes]]


def _errcode(err: BaseException) -> int | None:
    """SQLite's primary result code of an error (extended codes carry it in the low byte)."""
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_corrupt(err: sqlite3.DatabaseError) -> bool:
    return _errcode(err) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _is_full(err: BaseException) -> bool:
    return _errcode(err) == sqlite3.SQLITE_FULL


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Outbox:
    """The durable queue between the pipeline (put) and the uplink (next_batch, ack).

    Thread-safe. Lock order: ``_db_lock`` (connection and transactions) before ``_buf_lock``
    (memory buffer, queued acks, counters); ``put`` and ``ack`` take only ``_buf_lock`` so the
    pipeline never waits for a disk write.
    """

    def __init__(
        self,
        cfg: OutboxConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
        self._path = Path(cfg.path)
        self._clock = clock
        self._wall = wall
        self._max_age = {_EVENT: cfg.max_age_event, _TELEMETRY: cfg.max_age_telemetry}
        # Expiry scans a priority's rows: check often enough that rows outlive their maximum age
        # by at most ~5 %, and not more than once a second.
        ages = [a for a in self._max_age.values() if a > 0]
        self._expire_every = min(60.0, max(1.0, min(ages) / 20)) if ages else 0.0
        self._db_lock = threading.Lock()
        self._buf_lock = threading.Lock()
        self._data = threading.Condition(self._buf_lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._opened = False
        self._closed = False
        self._ratelog = RateLimitedLog(log, interval=60.0, clock=clock)
        # Memory buffer, per rank, oldest first.
        self._pending: tuple[_Pending, _Pending] = (deque(), deque())
        self._mem_bytes = 0
        self._window_start = 0.0
        self._acks: set[int] = set()
        self._purges: set[int] = set()
        self._ack_since = 0.0
        self._retry_at = 0.0
        self._next_expire = 0.0
        self._write_error: str | None = None
        self._disk_full = False
        # Counters.
        self._rows = [0, 0]
        self._bytes = [0, 0]
        self._evicted = [0, 0]
        self._committed = 0
        self._acked = 0
        self._purged = 0
        self._expired = 0
        self._memory_dropped = 0
        self._corrupt_moved: list[str] = []

    # ----------------------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Check the file (moving a corrupt one aside), create the schema, start committing."""
        if self._opened:
            raise RuntimeError("outbox already opened")
        path = self._path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutboxError(f"{path}: cannot create folder: {err.strerror or err}") from None
        try:
            conn = self._connect(seed=False)
        except _Corrupt as err:
            # Moved while the failed connection is still open: closing it would delete the
            # -wal file by name, and that file belongs to the evidence.
            try:
                self._move_aside(str(err))
            finally:
                if err.conn is not None:
                    err.conn.close()
            try:
                conn = self._connect(seed=True)
            except _Corrupt as again:
                if again.conn is not None:
                    again.conn.close()
                raise OutboxError(f"{path}: fresh outbox is corrupt at once: {again}") from None
        with self._db_lock, self._buf_lock:
            self._conn = conn
            self._opened = True
            self._next_expire = self._clock()
        self._thread = threading.Thread(target=self._run, name="outbox-commit", daemon=True)
        self._thread.start()
        log.info("outbox %s: %d rows, %d bytes held", path, sum(self._rows), sum(self._bytes))

    def close(self) -> None:
        """Commit pending puts and acks, stop the committer, close the database."""
        with self._buf_lock:
            if self._closed or not self._opened:
                self._closed = True
                return
            self._closed = True
            self._data.notify_all()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._cycle(force=True)
        with self._db_lock, self._buf_lock:
            lost = len(self._pending[0]) + len(self._pending[1])
            if lost:
                log.error(
                    "outbox %s: closing with %d updates not written (%s); they are lost",
                    self._path,
                    lost,
                    self._write_error,
                )
                self._memory_dropped += lost
                self._pending = (deque(), deque())
                self._mem_bytes = 0
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

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
        rank = _RANK.get(priority)
        if rank is None:
            raise ValueError(f"priority must be 'telemetry' or 'event', not {priority!r}")
        if created is None:
            created = self._wall()
        payload = bytes(payload)
        with self._buf_lock:
            if self._closed or not self._opened:
                raise RuntimeError("outbox is not open")
            if not (self._pending[0] or self._pending[1]):
                self._window_start = self._clock()
            self._pending[rank].append((created, payload))
            self._mem_bytes += len(payload) + ROW_OVERHEAD
            if self._mem_bytes > self._cfg.memory_bytes:
                self._shed_memory()
            wake = rank == _EVENT or self._mem_bytes * 2 >= self._cfg.memory_bytes
        if wake:
            self._wake.set()

    def flush(self) -> None:
        """Commit everything buffered now (blocking). On a failing disk it stays buffered."""
        self._cycle(force=True)

    # -------------------------------------------------------------------------------- uplink

    def next_batch(self, limit: int, exclude: Collection[int] = ()) -> list[OutboxEntry]:
        """Committed rows not in ``exclude`` and not acked: events oldest first, then telemetry."""
        if limit <= 0:
            return []
        with self._db_lock:
            conn = self._conn
            if conn is None:
                return []
            with self._buf_lock:
                skip = self._acks | self._purges
            skip.update(exclude)
            # The id scan reads only the (rank, id) index; payloads are fetched for the chosen.
            ids: list[int] = []
            cur = conn.execute("SELECT id FROM outbox ORDER BY rank, id")
            for (rid,) in cur:
                if rid not in skip:
                    ids.append(rid)
                    if len(ids) >= limit:
                        break
            cur.close()
            rows: dict[int, OutboxEntry] = {}
            for chunk in _chunks(ids):
                marks = _marks(len(chunk))
                sql = f"SELECT id, rank, created, payload FROM outbox WHERE id IN ({marks})"
                for rid, rank, created, payload in conn.execute(sql, chunk):
                    rows[rid] = OutboxEntry(rid, _PRIORITY[rank], created, payload)
        return [rows[i] for i in ids]

    def ack(self, ids: Iterable[int]) -> None:
        """The broker has these: delete them (batched, committed within a few ms)."""
        with self._buf_lock:
            if self._conn is None:
                return
            if not self._acks:
                self._ack_since = self._clock()
            self._acks.update(ids)
        self._wake.set()

    def wait_for_data(self, timeout: float, exclude: Collection[int] = ()) -> bool:
        """Block until committed, unacked rows not in ``exclude`` exist, or ``timeout`` passes.

        Woken by every commit that adds rows, so a new event is seen within milliseconds.
        """
        deadline = time.monotonic() + timeout
        with self._data:
            while True:
                if self._closed:
                    return False
                gone = self._acks | self._purges
                if exclude:
                    gone = gone.union(exclude)
                if sum(self._rows) > len(gone):
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
                if self._conn is None:
                    return
                page = self._conn.execute(
                    "SELECT id, rank, created, payload FROM outbox WHERE id > ? ORDER BY id "
                    "LIMIT ?",
                    (last, _CHUNK),
                ).fetchall()
            if not page:
                return
            for rid, rank, created, payload in page:
                yield OutboxEntry(rid, _PRIORITY[rank], created, payload)
            last = page[-1][0]

    def purge_ids(self, ids: Iterable[int]) -> None:
        """Delete not-yet-sent rows (consent revoked); hidden at once, committed now if possible.

        Updates still in the memory buffer have no id yet: ``flush()`` first to purge them too.
        """
        with self._buf_lock:
            if self._conn is None:
                return
            self._purges.update(ids)
        self._cycle(force=True)

    def replace(self, row_id: int, payload: bytes) -> bool:
        """Rewrite a not-yet-sent row in place (e.g. some of its samples' consent was revoked),
        keeping its id and so its place in the queue. Committed at once. False if the row is
        gone (sent, evicted) or the disk refused the write (the row is then unchanged)."""
        with self._db_lock:
            conn = self._conn
            if conn is None:
                return False
            try:
                found = conn.execute(
                    "SELECT rank, length(payload) FROM outbox WHERE id = ?", (row_id,)
                ).fetchone()
                if found is None:
                    return False
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE outbox SET payload = ? WHERE id = ?", (payload, row_id))
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                log.warning("outbox: cannot rewrite row %d: %s", row_id, err)
                return False
            rank, old_size = found
            with self._buf_lock:
                self._bytes[rank] += len(payload) - old_size
            return True

    # --------------------------------------------------------------------------------- stats

    def stats(self) -> OutboxStats:
        with self._db_lock:
            oldest: float | None = None
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    # The first stored row of each priority: two index lookups, no scan.
                    oldest = self._conn.execute(_OLDEST).fetchone()[0]
            with self._buf_lock:
                return OutboxStats(
                    rows=sum(self._rows),
                    bytes=sum(self._bytes),
                    rows_event=self._rows[_EVENT],
                    rows_telemetry=self._rows[_TELEMETRY],
                    oldest_created=oldest,
                    oldest_age=None if oldest is None else max(0.0, self._wall() - oldest),
                    committed=self._committed,
                    acked=self._acked,
                    purged=self._purged,
                    evicted_telemetry=self._evicted[_TELEMETRY],
                    evicted_event=self._evicted[_EVENT],
                    expired=self._expired,
                    corrupt_moved=tuple(self._corrupt_moved),
                    disk_full=self._disk_full,
                    write_error=self._write_error,
                    memory_rows=len(self._pending[0]) + len(self._pending[1]),
                    memory_bytes=self._mem_bytes,
                    memory_dropped=self._memory_dropped,
                )

    # ------------------------------------------------------------------------- open helpers

    def _connect(self, *, seed: bool) -> sqlite3.Connection:
        path = self._path
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as err:
            raise OutboxError(f"{path}: cannot open outbox: {err}") from None
        try:
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise _Corrupt("; ".join(str(p) for p in problems[:3]), conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise OutboxError(
                    f"{path}: outbox schema version {version} is newer than this agent's "
                    f"({_SCHEMA_VERSION}); use a newer agent or another outbox path"
                )
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"{path}: cannot use WAL journal (got {mode!r}); use a local disk"
                )
            conn.execute("PRAGMA synchronous=FULL")
            fresh = (
                conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone() is None
            )
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            # Written on every start, also when unchanged: a real write now refuses a file the
            # agent can read but not write (read-only or immutable file, read-only mount) that
            # would otherwise be accepted and then fail every commit.
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION if fresh else version}")
            if fresh and seed:
                conn.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                    (int(self._wall() * 1000),),
                )
            conn.execute("COMMIT")
            for rank, n, size in conn.execute(
                "SELECT rank, count(*), sum(length(payload)) FROM outbox GROUP BY rank"
            ):
                if rank in _PRIORITY:
                    self._rows[rank] = n
                    self._bytes[rank] = (size or 0) + n * ROW_OVERHEAD
        except sqlite3.DatabaseError as err:
            if _is_corrupt(err):
                raise _Corrupt(str(err), conn) from None
            conn.close()
            if _errcode(err) == sqlite3.SQLITE_READONLY:
                raise OutboxError(
                    f"{path}: outbox file cannot be written ({err}): make it (and its -wal and "
                    "-shm files) writable by the agent's user, or set [outbox] path elsewhere"
                ) from None
            raise OutboxError(f"{path}: cannot open outbox: {err}") from None
        except _Corrupt:
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, reason: str) -> None:
        path = self._path
        stamp = datetime.fromtimestamp(self._wall(), UTC).strftime("%Y%m%dT%H%M%SZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 0
        while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
            n += 1
            target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
        try:
            os.replace(path, target)
            for suffix in ("-wal", "-shm"):
                side = Path(f"{path}{suffix}")
                if side.exists():
                    os.replace(side, f"{target}{suffix}")
            fsync_dir(path.parent)
        except OSError as err:
            raise OutboxError(
                f"{path}: corrupt outbox ({reason}) cannot be moved aside: {err.strerror or err}"
            ) from None
        self._corrupt_moved.append(str(target))
        log.error(
            "outbox %s is corrupt (%s): moved aside to %s, starting a fresh outbox",
            path,
            reason,
            target,
        )

    # ----------------------------------------------------------------------------- committer

    def _run(self) -> None:
        while True:
            self._wake.clear()
            if self._closed:
                return
            try:
                self._cycle(force=False)
            except Exception:  # a bug must not stop commits for good; the data stays buffered
                log.exception("outbox committer failed; retrying next window")
                self._stop.wait(self._cfg.commit_interval)
                continue
            self._wake.wait(self._due_in())

    def _due_in(self) -> float:
        """Seconds until the committer has something to do; capped so a stale clock is re-read."""
        now = self._clock()
        with self._buf_lock:
            due = [now + self._cfg.commit_interval]
            if self._pending[0] or self._pending[1]:
                due.append(self._pending_due())
            if self._acks or self._purges:
                due.append(self._acks_due())
            if self._expire_every:
                due.append(max(self._next_expire, self._retry_at))
        return max(0.0, min(due) - now)

    def _pending_due(self) -> float:
        if self._write_error is not None:
            return self._retry_at
        if self._pending[_EVENT] or self._mem_bytes * 2 >= self._cfg.memory_bytes:
            return self._window_start
        return self._window_start + self._cfg.commit_interval

    def _acks_due(self) -> float:
        if self._write_error is not None:
            return self._retry_at
        return self._ack_since + _ACK_DELAY

    def _cycle(self, *, force: bool) -> None:
        """Write whatever is due (everything if ``force``) in one transaction."""
        with self._db_lock:
            conn = self._conn
            if conn is None:
                return
            now = self._clock()
            with self._buf_lock:
                has_pending = bool(self._pending[0] or self._pending[1])
                take_pending = has_pending and (force or self._pending_due() <= now)
                expire = bool(self._expire_every) and (
                    force or max(self._next_expire, self._retry_at) <= now
                )
                has_acks = bool(self._acks or self._purges)
                take_acks = has_acks and (
                    force or take_pending or expire or self._acks_due() <= now
                )
                if not (take_pending or take_acks or expire):
                    return
                batch: tuple[_Pending, _Pending] = (deque(), deque())
                if take_pending:
                    batch, self._pending = self._pending, batch
                    self._mem_bytes = 0
                acks, purges = set(), set()
                if take_acks:
                    acks, self._acks = self._acks, acks
                    purges, self._purges = self._purges, purges
                if expire:
                    self._next_expire = now + self._expire_every
                    self._expire_memory(batch)
            tx = _Tx()
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._delete(conn, acks, tx, purge=False)
                self._delete(conn, purges, tx, purge=True)
                if expire:
                    self._expire(conn, tx)
                self._insert(conn, batch, tx)
                conn.execute("COMMIT")
            except Exception as err:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                self._failed(err, batch, acks, purges)
                return
            self._succeeded(tx)

    def _failed(
        self,
        err: Exception,
        batch: tuple[_Pending, _Pending],
        acks: set[int],
        purges: set[int],
    ) -> None:
        message = f"{type(err).__name__}: {err}"
        with self._buf_lock:
            for rank in (_EVENT, _TELEMETRY):
                if batch[rank]:
                    batch[rank].extend(self._pending[rank])
                    self._pending[rank].clear()
                    self._pending[rank].extend(batch[rank])
            self._mem_bytes = sum(len(p) + ROW_OVERHEAD for q in self._pending for _, p in q)
            if self._mem_bytes > self._cfg.memory_bytes:
                self._shed_memory()
            self._acks |= acks
            self._purges |= purges
            self._retry_at = self._clock() + self._cfg.commit_interval
            changed = message != self._write_error
            self._write_error = message
            self._disk_full = _is_full(err)
            buffered = len(self._pending[0]) + len(self._pending[1])
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

    def _succeeded(self, tx: _Tx) -> None:
        with self._buf_lock:
            for rank in (_EVENT, _TELEMETRY):
                self._rows[rank] += tx.rows[rank]
                self._bytes[rank] += tx.bytes[rank]
                self._evicted[rank] += tx.evicted[rank]
            self._committed += tx.committed
            self._acked += tx.acked
            self._purged += tx.purged
            self._expired += tx.expired
            recovered = self._write_error
            self._write_error = None
            self._disk_full = False
            if tx.committed:
                self._data.notify_all()
            self._log_drops(tx)
        if recovered is not None:
            log.warning("outbox %s: writing again (after %s)", self._path, recovered)

    def _log_drops(self, tx: _Tx) -> None:
        """Called with _buf_lock held (the rate limiter is not thread-safe)."""
        if any(tx.evicted):
            self._ratelog.warning(
                "evict",
                "outbox %s full (%d bytes): evicted %d telemetry and %d event updates",
                self._path,
                self._cfg.max_bytes,
                tx.evicted[_TELEMETRY],
                tx.evicted[_EVENT],
            )
        if tx.expired:
            self._ratelog.warning(
                "expire", "outbox %s: %d updates expired (max age)", self._path, tx.expired
            )

    # ------------------------------------------------------------------------- transaction

    def _delete(self, conn: sqlite3.Connection, ids: set[int], tx: _Tx, *, purge: bool) -> None:
        for chunk in _chunks(sorted(ids)):
            gone = conn.execute(
                f"DELETE FROM outbox WHERE id IN ({_marks(len(chunk))}) "
                "RETURNING rank, length(payload)",
                chunk,
            ).fetchall()
            for rank, size in gone:
                tx.removed(rank, 1, size + ROW_OVERHEAD)
            if purge:
                tx.purged += len(gone)
            else:
                tx.acked += len(gone)

    def _expire(self, conn: sqlite3.Connection, tx: _Tx) -> None:
        wall = self._wall()
        for rank, age in self._max_age.items():
            if age <= 0:
                continue
            gone = conn.execute(
                "DELETE FROM outbox WHERE rank = ? AND created < ? RETURNING length(payload)",
                (rank, wall - age),
            ).fetchall()
            if gone:
                tx.removed(rank, len(gone), sum(s for (s,) in gone) + len(gone) * ROW_OVERHEAD)
                tx.expired += len(gone)

    def _insert(self, conn: sqlite3.Connection, batch: tuple[_Pending, _Pending], tx: _Tx) -> None:
        # Works on copies: if the transaction fails, the batch goes back to memory intact.
        rows = [list(batch[_EVENT]), list(batch[_TELEMETRY])]
        incoming = sum(len(p) + ROW_OVERHEAD for q in rows for _, p in q)
        if not incoming:
            return
        need = sum(self._bytes) + sum(tx.bytes) + incoming - self._cfg.max_bytes
        # Eviction order: stored telemetry, new telemetry, stored events, new events.
        for rank in (_TELEMETRY, _EVENT):
            if need > 0:
                need -= self._evict_stored(conn, rank, need, tx)
            drop = 0
            while need > 0 and drop < len(rows[rank]):
                need -= len(rows[rank][drop][1]) + ROW_OVERHEAD
                drop += 1
            if drop:
                tx.evicted[rank] += drop
                del rows[rank][:drop]
        for rank in (_EVENT, _TELEMETRY):
            if not rows[rank]:
                continue
            conn.executemany(
                "INSERT INTO outbox (rank, created, payload) VALUES (?, ?, ?)",
                ((rank, created, payload) for created, payload in rows[rank]),
            )
            n = len(rows[rank])
            tx.rows[rank] += n
            tx.bytes[rank] += sum(len(p) for _, p in rows[rank]) + n * ROW_OVERHEAD
            tx.committed += n

    def _evict_stored(self, conn: sqlite3.Connection, rank: int, need: int, tx: _Tx) -> int:
        freed = n = 0
        last: int | None = None
        cur = conn.execute(
            "SELECT id, length(payload) FROM outbox WHERE rank = ? ORDER BY id", (rank,)
        )
        for rid, size in cur:
            freed += size + ROW_OVERHEAD
            n += 1
            last = rid
            if freed >= need:
                break
        cur.close()
        if last is None:
            return 0
        conn.execute("DELETE FROM outbox WHERE rank = ? AND id <= ?", (rank, last))
        tx.removed(rank, n, freed)
        tx.evicted[rank] += n
        return freed

    # ------------------------------------------------------------------------ memory buffer

    def _shed_memory(self) -> None:
        """Called with _buf_lock held: drop oldest telemetry, then oldest events, to fit."""
        dropped = 0
        for rank in (_TELEMETRY, _EVENT):
            queue = self._pending[rank]
            while self._mem_bytes > self._cfg.memory_bytes and queue:
                _, payload = queue.popleft()
                self._mem_bytes -= len(payload) + ROW_OVERHEAD
                dropped += 1
        self._memory_dropped += dropped
        if dropped:
            self._ratelog.warning(
                "memory",
                "outbox %s: memory buffer full (%d bytes): dropped %d oldest updates",
                self._path,
                self._cfg.memory_bytes,
                dropped,
            )

    def _expire_memory(self, batch: tuple[_Pending, _Pending]) -> None:
        """Called with _buf_lock held: drop buffered updates past their maximum age."""
        wall = self._wall()
        for rank, age in self._max_age.items():
            if age <= 0:
                continue
            for queue in (batch[rank], self._pending[rank]):
                kept = [(c, p) for c, p in queue if c >= wall - age]
                gone = len(queue) - len(kept)
                if gone:
                    if queue is self._pending[rank]:
                        self._mem_bytes -= sum(
                            len(p) + ROW_OVERHEAD for c, p in queue if c < wall - age
                        )
                    queue.clear()
                    queue.extend(kept)
                    self._expired += gone
