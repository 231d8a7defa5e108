"""The agent's status report: the document, its one-line summary, and the thread that keeps it.

``build`` gathers the state of every running part into the document the retained MQTT status,
the status file, a ping's answer and `spime-agent status` read; ``Reporter`` rewrites the status
file and systemd's STATUS= line at the configured interval (at the lifecycle's heartbeat while
parked) and at once when asked. It does not publish to MQTT (agent.uplink asks for the document
itself), format the file (agent.statusfile) nor decide any state of its own.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agent import __version__

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger(__name__)


def build(agent: Agent) -> dict[str, Any]:
    """The agent's state for the retained MQTT status and the status file."""
    p = agent.pipeline
    doc: dict[str, Any] = {
        "vin": agent.cfg.vehicle.vin,
        "boot": agent.boot_id,
        "version": __version__,
        "started": round(agent.started, 3),
        "schema": agent.catalog.schema.id,
        "buses": p.source_states(),
        "pipeline": {
            **{k: v for k, v in asdict(p.stats).items() if k != "source_errors"},
            **p.source_counters(),
            "updates": p.builder.seq,
            "samples": p.builder.samples_out,
            "bytes": p.builder.bytes_out,
        },
    }
    doc["triggers"] = p.trigger_status()
    if agent.power is not None:
        doc["power"] = agent.power.status()
    if agent.location is not None:
        doc["gnss"] = agent.location.status()
    can_position = p.positions.status()
    if can_position is not None:
        doc["can_position"] = can_position
    if agent.diag is not None:
        doc["diagnostics"] = agent.diag.status()
    plan = agent.selection.planner.book.status_doc()
    if plan is not None:
        doc["plan"] = plan
    if agent.cfg.consent is not None:
        doc["consent"] = {
            "granted": list(agent.cfg.consent.granted),
            "left_out": dict(agent.catalog.excluded),
        }
    if agent.modems is not None:
        doc["modems"] = agent.modems.status()
    if agent.outbox is not None:
        o = agent.outbox.stats()
        doc["outbox"] = {
            "rows": o.rows,
            "bytes": o.bytes,
            "oldest_age": None if o.oldest_age is None else round(o.oldest_age, 1),
            "evicted_telemetry": o.evicted_telemetry,
            "evicted_event": o.evicted_event,
            "expired": o.expired,
            "disk_full": o.disk_full,
            "memory_rows": o.memory_rows,
            "memory_dropped": o.memory_dropped,
            "corrupt_moved": list(o.corrupt_moved),
        }
        if agent.selection.last_purge is not None:
            doc["outbox"]["last_purge"] = agent.selection.last_purge
    if agent.commands is not None:
        doc["remote"] = agent.commands.status()
    elif not agent.dry_run:
        doc["remote"] = {"commands": "disabled"}
    if agent.uplink is not None:
        u = agent.uplink.stats()
        doc["uplink"] = {
            "state": u.state,
            "last_error": u.last_error,
            # A flapping broker shows as connects rising with retries > 0.
            "connects": u.connects,
            "attempts": u.attempts,
            "retries": u.retries,
            "retry_delay": u.retry_delay,
            "published": u.published,
            "acked": u.acked,
            "refused": u.refused,
            "in_flight": u.in_flight,
            "paused": u.paused,
        }
    return doc


def one_line(doc: dict[str, Any]) -> str:
    """The status in one line, for `systemctl status`."""
    parts = [" ".join(f"{k}:{v}" for k, v in doc.get("buses", {}).items())]
    if "uplink" in doc:
        parts.append(f"mqtt {doc['uplink']['state']}")
    if "outbox" in doc:
        parts.append(f"outbox {doc['outbox']['rows']} rows")
    if isinstance(doc.get("modems"), dict):
        parts.append(f"modem {doc['modems'].get('active')}")
    parts.append(f"{doc.get('pipeline', {}).get('updates', 0)} updates")
    return "; ".join(parts)


class Reporter:
    """Keeps the status file and systemd's STATUS= line current until the agent stops."""

    def __init__(self, agent: Agent, stop: threading.Event) -> None:
        self.agent = agent
        self._stop = stop  # the agent's stop request
        self._now = threading.Event()  # the status report is due now (or stopping)

    def start(self) -> None:
        threading.Thread(target=self._loop, name="status", daemon=True).start()

    def now(self) -> None:
        """Report at once (a state change), or look at the stop request."""
        self._now.set()

    def _loop(self) -> None:
        from agent.statusfile import write_status

        agent = self.agent
        interval = agent.cfg.status.interval
        while True:
            self._now.wait(interval)
            self._now.clear()
            if self._stop.is_set():
                return
            # Parked, the report is one more timer: it waits for the lifecycle's heartbeat
            # (and says so in the file, so a reader does not take it for stale).
            interval = agent.cfg.status.interval
            if agent.power is not None and agent.power.machine.state != "driving":
                interval = max(interval, agent.power.cfg.heartbeat)
            try:
                doc = agent.status()
                if agent.cfg.status.path is not None:
                    write_status(agent.cfg.status.path, doc, interval=interval)
                agent.notifier.status(one_line(doc))
            except Exception as err:  # reporting must never take the agent down
                log.warning("status report failed: %s", err)
            if agent.pipeline.stop_event.is_set():
                return
