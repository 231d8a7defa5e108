"""The outbox's values: priorities, the row size estimate, a row, and the counters a
transaction changes. Shared by the parts of agent.outbox; no I/O here but SQLite's error codes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

# Bytes counted per row on top of its payload, for max_bytes and memory_bytes.
ROW_OVERHEAD = 64

EVENT, TELEMETRY = 0, 1
RANK = {"event": EVENT, "telemetry": TELEMETRY}
PRIORITY = {EVENT: "event", TELEMETRY: "telemetry"}


# Slots: one is made per row the uplink reads, and a slotted one is made a quarter faster.
@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    priority: str
    created: float  # wall seconds
    payload: bytes


@dataclass
class _Tally:
    """Rows and bytes held per rank, rows evicted per rank, and what happened to rows."""

    rows: list[int] = field(default_factory=lambda: [0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    evicted: list[int] = field(default_factory=lambda: [0, 0])
    committed: int = 0
    acked: int = 0
    purged: int = 0
    expired: int = 0


@dataclass
class Tx(_Tally):
    """Changes made by one transaction, applied to the counters only once it commits."""

    def removed(self, rank: int, rows: int, size: int) -> None:
        self.rows[rank] -= rows
        self.bytes[rank] -= size


@dataclass
class Counters(_Tally):
    """What the file holds (rows, bytes per rank) and what happened to rows since open."""

    def apply(self, tx: Tx) -> None:
        for rank in (EVENT, TELEMETRY):
            self.rows[rank] += tx.rows[rank]
            self.bytes[rank] += tx.bytes[rank]
            self.evicted[rank] += tx.evicted[rank]
        self.committed += tx.committed
        self.acked += tx.acked
        self.purged += tx.purged
        self.expired += tx.expired


def errcode(err: BaseException) -> int | None:
    """SQLite's primary result code of an error (extended codes carry it in the low byte)."""
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_full(err: BaseException) -> bool:
    return errcode(err) == sqlite3.SQLITE_FULL
