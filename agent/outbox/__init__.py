"""Durable store-and-forward outbox: SQLite (WAL, ``synchronous=FULL``), one writer.

Every update is committed here before the uplink may publish it, and deleted only after the
broker acknowledged it. ``put()`` only buffers in memory; a background committer writes the
buffer in one transaction when the group-commit window (``commit_interval``, on the monotonic
clock from the first buffered put) expires, at once when an ``event`` is put, when the buffer
reaches half of ``memory_bytes``, and on ``flush()``/``close()``. So a process crash loses
nothing committed and a power cut loses at most the open window.

Ids come from ``AUTOINCREMENT`` and are never reused, also after the table empties, across
restarts and after a corrupt file was moved aside.

Space: the outbox holds at most ``max_bytes``, counted as payload bytes plus ``ROW_OVERHEAD``
per row (an estimate of SQLite's record, b-tree cell and index entry for one row). The database
file itself does not shrink: freed pages are reused. When full, the oldest telemetry is evicted
first and events last, each eviction counted by priority.

Disk trouble: if a commit fails (disk full, read-only, I/O error), the updates stay in the
memory buffer, bounded by ``memory_bytes`` (overflow drops the oldest telemetry first, counted
in ``memory_dropped``); the state is in ``stats()`` and logged once per change, and the
committer retries each window. Updates waiting in memory are published once the disk takes
them, and are lost if the process ends before that. A file that cannot be written at all is
refused at open.

Tags: with ``tag_of`` each row is stored with a tag computed from its payload (the daemon: its
schema id), in an indexed column, so ``tags()`` lists the tags in use without reading the rows.

The parts, each readable on its own:

- ``queue``: ``Outbox``, the public face (put, next_batch, ack, wait_for_data, iter_rows,
  purge_ids, replace, rewrite_buffered, scrub, stats), its locks and counters;
- ``committer``: the thread and the group commit: what is due, one transaction, failure and
  recovery;
- ``buffer``: the bounded memory buffer of updates not yet committed;
- ``table``: the SQL on the open file (select, insert with eviction, delete, expire, tags);
- ``rows``: the values the parts share (priorities, a row, the counters a transaction changes);
- ``dbfile``: opening the file: checks, schema, corrupt and unwritable files.

This package is the only one importing ``sqlite3``. It leaves to others what a payload means
(agent.updates, agent.spime), publishing, in-flight tracking and retries (agent.uplink), wiring
and status reporting (agent.daemon).
"""

from agent.errors import OutboxError
from agent.outbox.queue import Outbox, OutboxStats
from agent.outbox.rows import ROW_OVERHEAD, OutboxEntry

__all__ = ["ROW_OVERHEAD", "Outbox", "OutboxEntry", "OutboxError", "OutboxStats"]
