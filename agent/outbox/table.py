"""The outbox's rows in SQL: reading them, and one transaction that deletes, expires, evicts
and inserts. Each row may carry a tag (the daemon: its schema id), indexed, so the tags in use
are known without reading the rows.

A ``Table`` wraps one open connection (agent.outbox.dbfile opens it). Its methods run on the
caller's thread while the caller holds the database lock. A transaction's effect on the
counters is collected in a ``Tx`` and applied to the ``Counters`` by the caller once it has
committed, so a rolled-back transaction changes no counter. This module keeps no buffer and no
thread (agent.outbox.committer) and exposes nothing to the rest of the agent
(agent.outbox.queue does).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from agent.outbox.rows import EVENT, PRIORITY, ROW_OVERHEAD, TELEMETRY, Counters, OutboxEntry, Tx

log = logging.getLogger("agent.outbox")

# Host parameters per statement, well under SQLite's limit.
CHUNK = 500
# Consecutive ids deleted as one range rather than in a list (a range costs one seek).
_MIN_RUN = 3

_OLDEST = """
SELECT min(c) FROM (
    SELECT (SELECT created FROM outbox WHERE rank = 0 ORDER BY id LIMIT 1) AS c
    UNION ALL
    SELECT (SELECT created FROM outbox WHERE rank = 1 ORDER BY id LIMIT 1)
)
"""

# Distinct tags by skipping through the tag index: min(tag), then the next above it, and so on.
_TAGS = """
WITH RECURSIVE t(tag) AS (
    SELECT min(tag) FROM outbox
    UNION ALL
    SELECT (SELECT min(tag) FROM outbox WHERE tag > t.tag) FROM t WHERE t.tag IS NOT NULL
)
SELECT tag FROM t WHERE tag IS NOT NULL
"""

# Rows to insert, per rank: (created wall time, payload), oldest first.
Rows = tuple[Sequence[tuple[float, bytes]], Sequence[tuple[float, bytes]]]


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i : i + CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def id_runs(ids: Iterable[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """``ids`` as runs of consecutive integers ``(first, last)``, every id between included, of
    ``_MIN_RUN`` ids or more, and the ids left over, each list ascending. A run never covers an
    id that is not in ``ids``, so deleting ``id BETWEEN first AND last`` deletes only those:
    acks come almost in order, and one range replaces hundreds of parameters."""
    runs: list[tuple[int, int]] = []
    single: list[int] = []
    ordered = sorted(ids)
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            if i - start >= _MIN_RUN:
                runs.append((ordered[start], ordered[i - 1]))
            else:
                single += ordered[start:i]
            start = i
    return runs, single


class Table:
    """``tag_of`` names a payload's tag (the daemon: its schema id); rows it cannot name, or
    all rows without it, are stored untagged."""

    def __init__(
        self, conn: sqlite3.Connection, tag_of: Callable[[bytes], str] | None = None
    ) -> None:
        self._conn = conn
        self._tag_of = tag_of

    def _tag(self, payload: bytes) -> str | None:
        if self._tag_of is None:
            return None
        try:
            return self._tag_of(payload)
        except Exception:  # a payload the tagger cannot read is still kept, untagged
            return None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()

    # -------------------------------------------------------------------------------- reading

    def counters(self) -> Counters:
        """Counters for the rows the file holds now (at open)."""
        counters = Counters()
        for rank, n, size in self._conn.execute(
            "SELECT rank, count(*), sum(length(payload)) FROM outbox GROUP BY rank"
        ):
            if rank in PRIORITY:
                counters.rows[rank] = n
                counters.bytes[rank] = (size or 0) + n * ROW_OVERHEAD
        return counters

    def unsent(
        self, limit: int, skip: set[int], after: tuple[int, int] | None = None
    ) -> list[OutboxEntry]:
        """Up to ``limit`` rows whose ids are not in ``skip``: events oldest first, then
        telemetry; with ``after`` (a row's rank and id), only the rows that come after it."""
        if after is not None:
            return self._unsent_after(limit, skip, after)
        # From the start, the acked rows not yet deleted and the rows in flight come first: the
        # id scan reads only the (rank, id) index to pass them; payloads are fetched for the
        # chosen.
        ids: list[int] = []
        cur = self._conn.execute("SELECT id FROM outbox ORDER BY rank, id")
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
            for rid, rank, created, payload in self._conn.execute(sql, chunk):
                rows[rid] = OutboxEntry(rid, PRIORITY[rank], created, payload)
        return [rows[i] for i in ids]

    def _unsent_after(
        self, limit: int, skip: set[int], after: tuple[int, int]
    ) -> list[OutboxEntry]:
        # A reader continuing its read has the rows it skips behind it: one pass over the index
        # range, each row's payload read as it comes, and no id list. Two statements, because
        # SQLite seeks a row value ``(rank, id) > (?, ?)`` by ``rank`` alone.
        rank, last = after
        out: list[OutboxEntry] = []
        for sql, args in (
            ("WHERE rank = ? AND id > ? ORDER BY id", (rank, last)),
            ("WHERE rank > ? ORDER BY rank, id", (rank,)),
        ):
            cur = self._conn.execute(f"SELECT id, rank, created, payload FROM outbox {sql}", args)
            for rid, r, created, payload in cur:
                if rid not in skip:
                    out.append(OutboxEntry(rid, PRIORITY[r], created, payload))
                    if len(out) >= limit:
                        break
            cur.close()
            if len(out) >= limit:
                break
        return out

    def page(self, after: int) -> list[OutboxEntry]:
        """The next ``CHUNK`` rows with an id above ``after``, by id."""
        return [
            OutboxEntry(rid, PRIORITY[rank], created, payload)
            for rid, rank, created, payload in self._conn.execute(
                "SELECT id, rank, created, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after, CHUNK),
            )
        ]

    def tags(self) -> set[str]:
        """The distinct tags of the stored rows: one index lookup per tag, no row read."""
        found = self._conn.execute(_TAGS).fetchall()
        return {str(tag) for (tag,) in found}

    def oldest(self) -> float | None:
        """Wall time of the first stored row of either priority: two index lookups, no scan."""
        with contextlib.suppress(sqlite3.Error):
            value = self._conn.execute(_OLDEST).fetchone()[0]
            return None if value is None else float(value)
        return None

    # -------------------------------------------------------------------------------- writing

    def rewrite(self, row_id: int, payload: bytes) -> tuple[int, int] | None:
        """Replace one row's payload, committed at once: ``(rank, old payload size)``, or None
        if the row is gone or the disk refused (the row is then unchanged)."""
        conn = self._conn
        try:
            found = conn.execute(
                "SELECT rank, length(payload) FROM outbox WHERE id = ?", (row_id,)
            ).fetchone()
            if found is None:
                return None
            self._secure(True)
            conn.execute("BEGIN IMMEDIATE")
            if self._tag_of is None:
                conn.execute("UPDATE outbox SET payload = ? WHERE id = ?", (payload, row_id))
            else:
                conn.execute(
                    "UPDATE outbox SET payload = ?, tag = ? WHERE id = ?",
                    (payload, self._tag(payload), row_id),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            log.warning("outbox: cannot rewrite row %d: %s", row_id, err)
            return None
        finally:
            self._secure(False)
        return int(found[0]), int(found[1])

    def _secure(self, on: bool) -> None:
        """Rewrites and purges zero what they remove, overflow pages too (``ON``: the content
        was taken back for privacy); other deletions only within the pages they write anyway
        (``FAST``: no extra flash writes per acknowledged row)."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute(f"PRAGMA secure_delete = {'ON' if on else 'FAST'}")

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the file and truncate it (the old versions of rows a
        purge rewrote or deleted go with it); False if a reader kept it from finishing."""
        try:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as err:
            log.warning("outbox: checkpoint failed: %s", err)
            return False
        return not busy

    def tag_untagged(self) -> None:
        """Tag the rows stored without a tag (by an agent before tags, or untaggable then)."""
        if self._tag_of is None:
            return
        conn, last = self._conn, -1
        try:
            conn.execute("BEGIN IMMEDIATE")
            while True:
                page = conn.execute(
                    "SELECT id, payload FROM outbox WHERE tag IS NULL AND id > ? "
                    "ORDER BY id LIMIT ?",
                    (last, CHUNK),
                ).fetchall()
                if not page:
                    break
                tagged = [(self._tag(payload), rid) for rid, payload in page]
                conn.executemany(
                    "UPDATE outbox SET tag = ? WHERE id = ?",
                    [(tag, rid) for tag, rid in tagged if tag is not None],
                )
                last = page[-1][0]
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def transaction(
        self,
        *,
        acks: set[int],
        purges: set[int],
        max_age: Mapping[int, float] | None,
        wall: float,
        rows: Rows,
        stored_bytes: int,
        max_bytes: int,
    ) -> Tx:
        """One transaction: delete ``acks`` and ``purges``, expire rows older than ``max_age``
        (per rank, seconds; 0 = never; None = skip), then insert ``rows`` evicting the oldest
        to stay within ``max_bytes``. On an error it is rolled back and the error raised."""
        conn = self._conn
        tx = Tx()
        if purges:
            self._secure(True)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._delete(acks, tx, purge=False)
            self._delete(purges, tx, purge=True)
            if max_age is not None:
                self._expire(max_age, wall, tx)
            self._insert(rows, tx, stored_bytes, max_bytes)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        finally:
            if purges:
                self._secure(False)
        return tx

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _delete(self, ids: set[int], tx: Tx, *, purge: bool) -> None:
        runs, single = id_runs(ids)
        gone: list[tuple[int, int]] = []
        for first, last in runs:
            gone += self._conn.execute(
                "DELETE FROM outbox WHERE id BETWEEN ? AND ? RETURNING rank, length(payload)",
                (first, last),
            ).fetchall()
        for chunk in _chunks(single):
            gone += self._conn.execute(
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

    def _expire(self, max_age: Mapping[int, float], wall: float, tx: Tx) -> None:
        for rank, age in max_age.items():
            if age <= 0:
                continue
            gone = self._conn.execute(
                "DELETE FROM outbox WHERE rank = ? AND created < ? RETURNING length(payload)",
                (rank, wall - age),
            ).fetchall()
            if gone:
                tx.removed(rank, len(gone), sum(s for (s,) in gone) + len(gone) * ROW_OVERHEAD)
                tx.expired += len(gone)

    def _insert(self, batch: Rows, tx: Tx, stored_bytes: int, max_bytes: int) -> None:
        # Works on copies: if the transaction fails, the caller's batch is intact.
        rows = [list(batch[EVENT]), list(batch[TELEMETRY])]
        incoming = sum(len(p) + ROW_OVERHEAD for q in rows for _, p in q)
        if not incoming:
            return
        need = stored_bytes + sum(tx.bytes) + incoming - max_bytes
        # Eviction order: stored telemetry, new telemetry, stored events, new events.
        for rank in (TELEMETRY, EVENT):
            if need > 0:
                need -= self._evict_stored(rank, need, tx)
            drop = 0
            while need > 0 and drop < len(rows[rank]):
                need -= len(rows[rank][drop][1]) + ROW_OVERHEAD
                drop += 1
            if drop:
                tx.evicted[rank] += drop
                del rows[rank][:drop]
        for rank in (EVENT, TELEMETRY):
            if not rows[rank]:
                continue
            self._conn.executemany(
                "INSERT INTO outbox (rank, created, payload, tag) VALUES (?, ?, ?, ?)",
                ((rank, created, p, self._tag(p)) for created, p in rows[rank]),
            )
            n = len(rows[rank])
            tx.rows[rank] += n
            tx.bytes[rank] += sum(len(p) for _, p in rows[rank]) + n * ROW_OVERHEAD
            tx.committed += n

    def _evict_stored(self, rank: int, need: int, tx: Tx) -> int:
        freed = n = 0
        last: int | None = None
        cur = self._conn.execute(
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
        self._conn.execute("DELETE FROM outbox WHERE rank = ? AND id <= ?", (rank, last))
        tx.removed(rank, n, freed)
        tx.evicted[rank] += n
        return freed
