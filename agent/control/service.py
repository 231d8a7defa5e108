"""The command worker: takes raw command messages from the uplink's thread, decides about them
on a thread of its own, executes what is allowed and hands the answers back.

``submit`` is what the uplink calls for each message on ``<prefix>/<vin>/cmd`` (and, marked
``plan``, on the retained ``<prefix>/<vin>/plan``, handed to ``on_plan`` on the same thread):
it never blocks and never parses; it puts the bytes in a bounded queue (dropped and counted
when full). The worker takes them at a bounded rate (a flood waits in the queue, then is
dropped: it costs the CAN pipeline nothing but the queue appends), asks ``Authorizer.decide``,
saves the replay memory atomically *before* executing (at most once, also across restarts: an
id that cannot be saved is not executed), runs the command through ``execute`` and passes the
answer to ``answer``. Every refusal is counted by reason and logged once per reason per
interval.

What a command does is the daemon's (``execute``); publishing an answer is the uplink's
(``answer``); the decisions are agent.control.remote's.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.atomicfile import write_atomic
from agent.control.envelope import Command
from agent.control.remote import EXPIRED, FAILED, OK, Authorizer, Response, SeenIds
from agent.ratelimit import Interval, RateLimitedLog

log = logging.getLogger(__name__)

QUEUE_SIZE = 32
# Commands decided per second (with a burst of as many): far above any real backend's needs,
# far below what would cost the pipeline a noticeable share of the interpreter.
RATE = 20.0


@dataclass(frozen=True)
class Request:
    """One received command message and where its answer goes."""

    payload: bytes
    response_topic: str | None = None  # MQTT 5 Response Topic
    correlation: bytes | None = None  # MQTT 5 Correlation Data
    plan: bool = False  # the retained plan (desired state), not a command: never answered


class SeenStore:
    """The replay memory on disk: one JSON file, replaced atomically (fsync, rename, fsync of
    the folder), so a power cut leaves the old or the new list, never a torn one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> SeenIds:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return SeenIds()
        except (OSError, ValueError) as err:
            # Unreadable: start empty, loudly. Commands already executed could run again only
            # if they are replayed before they expire.
            log.error("command replay memory %s unreadable (%s): starting empty", self.path, err)
            return SeenIds()
        return SeenIds.from_doc(doc.get("seen") if isinstance(doc, dict) else None)

    def save(self, seen: SeenIds) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"seen": seen.to_doc()}, separators=(",", ":")).encode()
        write_atomic(self.path, data, mode=0o600)


class CommandService:
    def __init__(
        self,
        authorizer: Authorizer,
        store: SeenStore,
        *,
        execute: Callable[[Command], Response],
        answer: Callable[[Request, Response], None],
        on_plan: Callable[[bytes], object] | None = None,
        queue_size: int = QUEUE_SIZE,
        rate: float = RATE,
    ) -> None:
        self.authorizer = authorizer
        self.store = store
        self._execute = execute
        self._answer = answer
        self._on_plan = on_plan
        self._queue: deque[Request] = deque()
        self._queue_size = queue_size
        # At most one decision per 1/rate seconds.
        self._gap = 1.0 / rate
        self._gate = Interval(self._gap, time.monotonic)
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._ratelog = RateLimitedLog(log, interval=600.0)
        # Counters, guarded by _cond.
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()

    # -- called from other threads ------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """From the uplink's thread: queue a message, or drop and count it. Never blocks."""
        with self._cond:
            if len(self._queue) >= self._queue_size:
                self._counts["dropped"] += 1
                dropped = True
            else:
                self._queue.append(request)
                self._cond.notify()
                dropped = False
        if dropped:
            self._ratelog.warning(
                "dropped", "remote: command queue full (%d): message dropped", self._queue_size
            )

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "commands": "enabled",
                "kid": self.authorizer.kid,
                "accepted": self._counts["ok"],
                "failed": self._counts["failed"],
                "expired": self._counts["expired"],
                "dropped": self._counts["dropped"],
                "rejected": dict(sorted(self._rejected.items())),
            }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------

    def _next(self) -> Request | None:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            return None if self._stop else self._queue.popleft()

    def _run(self) -> None:
        while True:
            request = self._next()
            if request is None:
                return
            while not self._gate.allow():
                with self._cond:
                    if self._cond.wait_for(lambda: self._stop, self._gap):
                        return
            if request.plan:
                self._retained_plan(request.payload)
                continue
            try:
                response = self.handle(request.payload)
            except Exception as err:  # the worker must outlive any single command
                log.exception("remote: command handling failed")
                response = Response(None, FAILED, f"internal error: {err!r}")
            self._count(response)
            try:
                self._answer(request, response)
            except Exception as err:
                self._ratelog.warning("answer", "remote: cannot send an answer: %r", err)

    def _retained_plan(self, payload: bytes) -> None:
        # Signature, VIN and expiry are checked by on_plan (the same envelope as commands);
        # an empty retained message is the backend clearing the desired state: nothing to do.
        if not payload or self._on_plan is None:
            return
        try:
            self._on_plan(payload)
        except Exception:
            log.exception("remote: applying the retained plan failed")

    def handle(self, payload: bytes) -> Response:
        """Decide, remember, execute: one message, on the worker thread."""
        decision = self.authorizer.decide(payload)
        if decision.command is None:
            assert decision.response is not None
            return decision.response
        cmd = decision.command
        try:
            self.store.save(self.authorizer.seen)
        except OSError as err:
            # Executing without a durable record could execute it twice after a restart.
            self.authorizer.seen.discard(cmd.id)
            return Response(cmd.id, FAILED, f"cannot record the command id: {err}", None)
        log.info("remote: executing %s (id %s)", cmd.command, cmd.id)
        return self._execute(cmd)

    def _count(self, response: Response) -> None:
        with self._cond:
            if response.status in (OK, FAILED, EXPIRED):
                self._counts[response.status] += 1
            else:
                self._rejected[response.reason or "rejected"] += 1
        if response.status == OK:
            return
        key = response.reason or response.status
        self._ratelog.warning(
            ("refused", key),
            "remote: command %s %s: %s",
            response.id or "(no verified id)",
            response.status,
            response.detail,
        )
