"""Opening the outbox file: checks, schema, and what to do with a corrupt or unwritable file.

``open_table`` creates the folder, opens the SQLite file, runs ``PRAGMA quick_check``, refuses a
file written by a newer agent, switches to WAL with ``synchronous=FULL``, creates the table, and
adds the tag column and its index to a file that lacks them, and
writes to the file once, so that a file the agent can read but not write is refused at start
(an OutboxError naming the file) instead of failing every commit later.

A corrupt file (and its -wal and -shm files) is moved aside as ``<path>.corrupt-<UTC time>``,
never deleted, and a fresh file is started. The id space of the lost file is unknown, so the
fresh file's sequence starts at the wall clock in milliseconds (ids are 64-bit integers: never
truncate them), above any id an earlier file could have reached unless the clock was wrong.

``open_reader`` opens the second, read-only connection the uplink's reads use.

Reading and writing rows is agent.outbox.table's job.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent.atomicfile import fsync_dir
from agent.errors import OutboxError
from agent.outbox.rows import errcode
from agent.outbox.table import Table

log = logging.getLogger("agent.outbox")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rank INTEGER NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL,
    tag TEXT
);
CREATE INDEX IF NOT EXISTS outbox_rank_id ON outbox (rank, id);
"""
# The tag column came later, without a new schema version: an older agent's inserts name their
# columns and leave it NULL, and untagged rows are tagged at the next open.
_TAG_INDEX = "CREATE INDEX IF NOT EXISTS outbox_tag ON outbox (tag)"


class _Corrupt(Exception):
    def __init__(self, reason: str, conn: sqlite3.Connection) -> None:
        super().__init__(reason)
        self.conn = conn


def open_table(
    path: Path, wall: Callable[[], float], tag_of: Callable[[bytes], str] | None = None
) -> tuple[Table, list[str]]:
    """The checked, writable outbox at ``path`` (its untagged rows tagged with ``tag_of``) and
    the corrupt files moved aside on the way."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutboxError(f"{path}: cannot create folder: {err.strerror or err}") from None
    moved: list[str] = []
    try:
        conn = _connect(path, wall, seed=False)
    except _Corrupt as err:
        # Moved while the failed connection is still open: closing it would delete the -wal
        # file by name, and that file belongs to the evidence.
        try:
            moved.append(_move_aside(path, wall, str(err)))
        finally:
            err.conn.close()
        try:
            conn = _connect(path, wall, seed=True)
        except _Corrupt as again:
            again.conn.close()
            raise OutboxError(f"{path}: fresh outbox is corrupt at once: {again}") from None
    table = Table(conn, tag_of)
    try:
        table.tag_untagged()
    except sqlite3.Error as err:
        table.close()
        raise OutboxError(f"{path}: cannot tag stored rows: {err}") from None
    return table, moved


def open_reader(path: Path) -> Table:
    """A second, read-only connection to an opened outbox, for the uplink's reads: in WAL mode
    it reads the last committed state while a commit (and its fsync) runs on the writer's."""
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as err:
        raise OutboxError(f"{path}: cannot open outbox for reading: {err}") from None
    return Table(conn)


def _connect(path: Path, wall: Callable[[], float], *, seed: bool) -> sqlite3.Connection:
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
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"{path}: outbox schema version {version} is newer than this agent's "
                f"({SCHEMA_VERSION}); use a newer agent or another outbox path"
            )
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"{path}: cannot use WAL journal (got {mode!r}); use a local disk")
        conn.execute("PRAGMA synchronous=FULL")
        # Removed rows are zeroed within the pages written anyway (agent.outbox.table).
        conn.execute("PRAGMA secure_delete = FAST")
        fresh = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone() is None
        conn.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        if "tag" not in {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}:
            conn.execute("ALTER TABLE outbox ADD COLUMN tag TEXT")
        conn.execute(_TAG_INDEX)
        # Written on every start, also when unchanged: a real write now refuses a file the
        # agent can read but not write (read-only or immutable file, read-only mount) that
        # would otherwise be accepted and then fail every commit.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION if fresh else version}")
        if fresh and seed:
            conn.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                (int(wall() * 1000),),
            )
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as err:
        if errcode(err) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise _Corrupt(str(err), conn) from None
        conn.close()
        if errcode(err) == sqlite3.SQLITE_READONLY:
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


def _move_aside(path: Path, wall: Callable[[], float], reason: str) -> str:
    stamp = datetime.fromtimestamp(wall(), UTC).strftime("%Y%m%dT%H%M%SZ")
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
    log.error(
        "outbox %s is corrupt (%s): moved aside to %s, starting a fresh outbox",
        path,
        reason,
        target,
    )
    return str(target)
