"""Wiring: config -> catalog -> pipeline -> outbox -> uplink, with start-up and shutdown.

Builds everything the agent runs from one config, in the order that lets it refuse bad input
before touching anything stored: config checks, DBC loading and signal selection first, then
the outbox, then the sources and the uplink. Decides the exit: a finite replay ends once every
update was acknowledged (or the drain timeout passed: exit 3, the rest kept in the outbox);
a stop request (SIGTERM) stops input, commits the open batch, publishes what the in-flight
window allows within a few seconds and disconnects. Also keeps systemd informed (READY once
the DBCs and the outbox are open, watchdog pings while the pipeline loop turns, STATUS lines).
The only module that knows every part; it holds no data-path logic of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent import __version__
from agent.can_source import validate_sources
from agent.catalog import Catalog, build_catalog
from agent.config import Config
from agent.pipeline import Pipeline
from agent.sdnotify import Notifier
from agent.spime import decode_update
from agent.updates import Update

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INPUT, EXIT_DRAIN_TIMEOUT = 0, 2, 3
# After SIGTERM: how long the uplink may keep publishing before it disconnects.
SHUTDOWN_PUBLISH_SECONDS = 3.0


def prepare(cfg: Config) -> Catalog:
    """Every check that needs no bus or broker; raises ConfigError/DbcError with all problems."""
    validate_sources(cfg)
    return build_catalog(cfg)


@dataclass
class RunResult:
    exit_code: int
    problems: tuple[str, ...] = ()


class Agent:
    """One run of the agent. With ``dry_run``, ``on_json`` receives every update decoded, as the
    backend would read it; otherwise updates go to the outbox and the broker."""

    def __init__(
        self,
        cfg: Config,
        catalog: Catalog,
        *,
        dry_run: bool,
        on_json: Callable[[dict[str, Any]], None] | None = None,
        drain_timeout: float | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.dry_run = dry_run
        self.on_json = on_json
        self.drain_timeout = drain_timeout
        self.notifier = notifier or Notifier()
        self.boot = os.urandom(8)
        self.started = time.time()
        self.pipeline = Pipeline(cfg, catalog, boot=self.boot, sink=self._sink)
        self.pipeline.on_loop = self._on_loop
        self.outbox: Any = None
        self.uplink: Any = None
        self._stop = threading.Event()
        self._next_ping = 0.0

    @property
    def boot_id(self) -> str:
        return self.boot.hex()

    def _sink(self, update: Update) -> None:
        if self.outbox is not None:
            self.outbox.put(
                update.payload, "event" if update.event else "telemetry", created=update.created
            )
        if self.on_json is not None:
            # Decoding what was encoded shows exactly what a backend will read.
            self.on_json(decode_update(update.payload, self.catalog.schema))

    def request_stop(self) -> None:
        """Thread- and signal-safe: stop input, finish the open batch, return from run()."""
        self._stop.set()
        self.pipeline.stop()

    def _on_loop(self) -> None:
        # Called by the pipeline loop itself: a stuck pipeline stops the pings and systemd
        # restarts the service.
        interval = self.notifier.watchdog_interval
        if interval is not None:
            now = time.monotonic()
            if now >= self._next_ping:
                self._next_ping = now + interval
                self.notifier.watchdog()

    def status(self) -> dict[str, Any]:
        """The agent's state for the retained MQTT status and the status file."""
        p = self.pipeline
        doc: dict[str, Any] = {
            "vin": self.cfg.vehicle.vin,
            "boot": self.boot_id,
            "version": __version__,
            "started": round(self.started, 3),
            "schema": self.catalog.schema.id,
            "buses": p.source_states(),
            "pipeline": {
                **{k: v for k, v in asdict(p.stats).items() if k != "source_errors"},
                "dropped_frames": sum(s.status.dropped_frames for s in p.sources),
                "updates": p.builder.seq,
                "samples": p.builder.samples_out,
                "bytes": p.builder.bytes_out,
            },
        }
        if self.outbox is not None:
            o = self.outbox.stats()
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
        if self.uplink is not None:
            u = self.uplink.stats()
            doc["uplink"] = {
                "state": u.state,
                "last_error": u.last_error,
                "published": u.published,
                "acked": u.acked,
                "refused": u.refused,
                "in_flight": u.in_flight,
            }
        return doc

    def run(self) -> RunResult:
        log.info(
            "spime-agent %s starting: vin %s, boot %s, %d signals (schema %s), %s",
            __version__,
            self.cfg.vehicle.vin,
            self.boot_id,
            len(self.catalog.selected),
            self.catalog.schema.id,
            "dry run" if self.dry_run else "publishing",
        )
        if self.dry_run:
            self.notifier.ready("dry run")
            self.pipeline.run()
            return self._finish_pipeline()
        return self._run_publishing()

    def _finish_pipeline(self) -> RunResult:
        stats = self.pipeline.stats
        log.info(
            "input finished: %d frames, %d decoded, %d unchanged, %d unselected, "
            "%d decode errors, %d updates",
            stats.frames,
            stats.decoded,
            stats.unchanged,
            stats.unselected,
            stats.decode_errors,
            self.pipeline.builder.seq,
        )
        if stats.source_errors:
            return RunResult(EXIT_INPUT, tuple(stats.source_errors))
        return RunResult(EXIT_OK)

    def _run_publishing(self) -> RunResult:
        from agent.outbox import Outbox
        from agent.uplink import Uplink

        assert self.cfg.outbox is not None and self.cfg.mqtt is not None
        self.outbox = Outbox(self.cfg.outbox)
        self.outbox.open()
        try:
            self.uplink = Uplink(
                self.cfg.mqtt,
                vin=self.cfg.vehicle.vin,
                boot=self.boot_id,
                outbox=self.outbox,
                schema_id=self.catalog.schema.id,
                schema_json=self.catalog.schema.dumps().encode(),
                status=self.status,
            )
            self.uplink.start()
            self.notifier.ready(f"publishing to {self.cfg.mqtt.host}:{self.cfg.mqtt.port}")
            self.pipeline.run()
            result = self._finish_pipeline()
            self.outbox.flush()
            if self._stop.is_set() or not self.cfg.all_replay:
                self.notifier.stopping()
                drained = self.uplink.stop(SHUTDOWN_PUBLISH_SECONDS)
                log.info(
                    "stopped; %s", "outbox empty" if drained else "the rest stays in the outbox"
                )
                return result
            drained = self._drain()
            self.notifier.stopping()
            self.uplink.stop(0 if not drained else 1.0)
            if not drained:
                rows = self.outbox.stats().rows
                return RunResult(
                    EXIT_DRAIN_TIMEOUT,
                    (
                        f"drain timeout: {rows} updates not yet acknowledged by the broker "
                        "are kept in the outbox for the next run",
                    ),
                )
            log.info("every update was acknowledged by the broker")
            return result
        finally:
            self.outbox.close()

    def _drain(self) -> bool:
        """Wait until the broker acknowledged everything, the drain timeout passed, or a stop
        was requested."""
        deadline = None if self.drain_timeout is None else time.monotonic() + self.drain_timeout
        self.notifier.status("replay finished; waiting for the broker to acknowledge")
        while not self._stop.is_set():
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return False
            self._on_loop()
            if self.uplink.wait_drained(left) and self.outbox.stats().memory_rows == 0:
                return True
        return False
