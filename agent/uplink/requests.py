"""What other threads ask of the uplink's worker, behind one lock: schemas to publish, reconnect
requests, the pause, and control messages queued by ``Uplink.publish``.

Any thread writes; the worker takes what is new once per turn of its loop and hands it to the
connected session (agent.uplink.session). The lock is held only for a few assignments, never
across a paho call or a wait. It decides nothing about when to connect or pause: the worker
(agent.uplink.uplink) does.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from agent.uplink.session import Outgoing

MAX_PENDING = 256  # control messages queued by publish() while not connected


@dataclass(frozen=True)
class Fresh:
    """What was asked since the worker last looked: schemas added (id, document), the schema in
    force, and control messages to publish."""

    schemas: list[tuple[str, bytes]]
    current: str
    pending: list[Outgoing]


class Requests:
    def __init__(self, schema_id: str, schema_json: bytes) -> None:
        self._lock = threading.Lock()
        self._schemas: dict[str, bytes] = {schema_id: bytes(schema_json)}
        self._current = schema_id
        self._new: deque[str] = deque()
        self._reconnects = 0  # reconnect() requests so far
        self._reconnect_reason = ""
        self._pending: deque[Outgoing] = deque()
        self.pending_dropped = 0
        self._paused: str | None = None  # why radio traffic is stopped, until resumed

    # ---- any thread ---------------------------------------------------------------------------

    def add_schema(self, schema_id: str, schema_json: bytes, *, current: bool) -> None:
        with self._lock:
            if current:
                self._current = schema_id
            if schema_id not in self._schemas or current:
                self._schemas[schema_id] = bytes(schema_json)
                self._new.append(schema_id)

    def reconnect(self, reason: str) -> None:
        with self._lock:
            self._reconnects += 1
            self._reconnect_reason = reason

    def set_paused(self, reason: str | None) -> None:
        with self._lock:
            self._paused = reason

    def queue(self, msg: Outgoing) -> bool:
        """Queue a control message; False (and counted) when MAX_PENDING already wait."""
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self.pending_dropped += 1
                return False
            self._pending.append(msg)
            return True

    # ---- the worker ---------------------------------------------------------------------------

    def paused(self) -> str | None:
        with self._lock:
            return self._paused

    def reconnect_count(self) -> int:
        with self._lock:
            return self._reconnects

    def reconnect_requested(self, seen: int) -> str | None:
        """The reason of a reconnect request made since ``seen`` requests, if any."""
        with self._lock:
            return self._reconnect_reason if self._reconnects > seen else None

    def all_schemas(self) -> tuple[list[tuple[str, bytes]], str]:
        """Every schema (id, document) and the one in force, for a new connection; what was
        added before is no longer new."""
        with self._lock:
            self._new.clear()
            return list(self._schemas.items()), self._current

    def take(self) -> Fresh:
        """Schemas added and messages queued since the last call."""
        with self._lock:
            fresh = [(i, self._schemas[i]) for i in self._new]
            self._new.clear()
            pending = list(self._pending)
            self._pending.clear()
            return Fresh(fresh, self._current, pending)
