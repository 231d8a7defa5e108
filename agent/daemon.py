"""Wiring: config -> catalog -> pipeline -> outbox -> uplink, with start-up and shutdown.

Builds everything the agent runs from one config, in the order that lets it refuse bad input
before touching anything stored: config checks, DBC loading and signal selection first, then
the outbox, then the sources and the uplink. Decides the exit: a finite replay ends once every
update was acknowledged (or the drain timeout passed: exit 3, the rest kept in the outbox);
a stop request (SIGTERM) stops input, commits the open batch, publishes what the in-flight
window allows within a few seconds and disconnects. Also keeps systemd informed (READY once
the DBCs and the outbox are open, watchdog pings while the pipeline loop turns).
The only module that knows every part; it holds no data-path logic of its own. What is selected
and consented, and every change to it at run time (reload, consent, plans, purge), is
agent.selection's; the status report agent.statusreport's; the lifecycle's and the link's
callbacks agent.partactions'; the inputs beside the buses (lifecycle, GNSS, diagnostics)
agent.inputwiring's; the outbox, modems, uplink and command worker of a publishing run, opened
and closed in order, agent.publishing's. ``Agent`` keeps their public entry points as
delegations.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__, gnss_wiring, statusreport
from agent.can_source import validate_sources
from agent.catalog import Catalog, build_catalog
from agent.config import Config
from agent.inputwiring import Inputs
from agent.lifecycle import PowerController
from agent.partactions import PartActions
from agent.pipeline import Pipeline
from agent.privacyrecord import PrivacyRecord
from agent.publishing import Publishing
from agent.schemastore import SchemaStore
from agent.sdnotify import Notifier
from agent.selection import Selection
from agent.selection import effective_config as effective_config
from agent.spime import decode_update, peek_schema_id
from agent.updates import Update

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INPUT, EXIT_DRAIN_TIMEOUT = 0, 2, 3
# After SIGTERM: how long the uplink may keep publishing before it disconnects.
SHUTDOWN_PUBLISH_SECONDS = 3.0


def prepare(cfg: Config) -> Catalog:
    """Every check that needs no bus or broker; raises ConfigError/DbcError with all problems."""
    validate_sources(cfg)
    gnss_wiring.check(cfg)
    if cfg.remote is not None:
        from agent.control.envelope import load_public_key

        load_public_key(cfg.remote.command_key, "[remote] command_key")
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
        base_cfg: Config | None = None,
    ) -> None:
        self.dry_run = dry_run
        # What is selected and consented, and every change to it (reload, consent, plans); a
        # stored plan applies from the start (not in a dry run, which shows the config alone).
        plan_path = None if dry_run or cfg.outbox is None else Path(f"{cfg.outbox.path}.plan")
        self.selection = Selection(
            cfg, catalog, base_cfg=base_cfg, plan_path=plan_path, prepare=prepare
        )
        cfg, catalog = self.selection.cfg, self.selection.catalog
        self.on_json = on_json
        self.drain_timeout = drain_timeout
        self.notifier = notifier or Notifier()
        self.boot = os.urandom(8)
        self.started = time.time()
        self.pipeline = Pipeline(cfg, catalog, boot=self.boot, sink=self._sink)
        self.pipeline.on_loop = self._on_loop
        self.pipeline.watchdog_every = self.notifier.watchdog_interval
        # The lifecycle's and the link's callbacks, carried out on the parts (agent.partactions).
        self.actions = PartActions(self)
        # [power], [gnss] and [[diagnostics]], handed to the pipeline (agent.inputwiring).
        self.inputs = Inputs(cfg, catalog, self.pipeline, self.actions, lambda: self.modems)
        self._stop = threading.Event()
        # The outbox, modems, uplink and the rest a publishing run opens (agent.publishing).
        self.publishing = Publishing(self, self._stop)
        self.reporter = statusreport.Reporter(self, self._stop)
        self._next_ping = 0.0
        self.selection.attach(self)

    @property
    def boot_id(self) -> str:
        return self.boot.hex()

    @property
    def cfg(self) -> Config:
        """The config in force (agent.selection: reloads, consent changes and plans)."""
        return self.selection.cfg

    @property
    def catalog(self) -> Catalog:
        """The catalog of the selection in force."""
        return self.selection.catalog

    # The parts, read by the status report, the callbacks, the selection and the commands.
    @property
    def power(self) -> PowerController | None:
        return self.inputs.power

    @property
    def location(self) -> Any:
        return self.inputs.location

    @property
    def diag(self) -> Any:
        return self.inputs.diag

    # The publishing run's parts, read by the status report, the callbacks and the selection.
    @property
    def outbox(self) -> Any:
        return self.publishing.outbox

    @property
    def uplink(self) -> Any:
        return self.publishing.uplink

    @property
    def modems(self) -> Any:
        return self.publishing.modems

    @property
    def schemas(self) -> SchemaStore | None:
        return self.publishing.schemas

    @property
    def privacy(self) -> PrivacyRecord | None:
        return self.publishing.privacy

    @property
    def commands(self) -> Any:
        return self.publishing.commands

    def _sink(self, update: Update) -> None:
        if self.outbox is not None:
            self.outbox.put(
                update.payload, "event" if update.event else "telemetry", created=update.created
            )
        if self.on_json is not None:
            # Decoding what was encoded shows exactly what a backend will read, with the schema
            # the update names (an update closed just after a switch has the old one).
            schema = self.selection.schema(peek_schema_id(update.payload))
            self.on_json(decode_update(update.payload, schema))

    def request_stop(self) -> None:
        """Thread- and signal-safe: stop input, finish the open batch, return from run()."""
        self._stop.set()
        self.reporter.now()
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
        return statusreport.build(self)

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
        self.reporter.start()
        self.inputs.start()
        try:
            if self.dry_run:
                self.notifier.ready("dry run")
                self.pipeline.run()
                self.inputs.end_power(self._stop.is_set(), self.uplink)
                self.notifier.stopping()
                return self._finish_pipeline()
            return self._run_publishing()
        finally:
            self.inputs.stop()

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
        assert self.cfg.mqtt is not None
        parts = self.publishing
        parts.open_outbox()
        try:
            parts.start()
            self.notifier.ready(f"publishing to {self.cfg.mqtt.host}:{self.cfg.mqtt.port}")
            self.pipeline.run()
            self.inputs.end_power(self._stop.is_set(), self.uplink)
            result = self._finish_pipeline()
            parts.outbox.flush()
            if self._stop.is_set() or not self.cfg.all_replay:
                self.notifier.stopping()
                drained = parts.uplink.stop(SHUTDOWN_PUBLISH_SECONDS)
                log.info(
                    "stopped; %s", "outbox empty" if drained else "the rest stays in the outbox"
                )
                return result
            drained = parts.drain(self.drain_timeout, self._on_loop)
            self.notifier.stopping()
            parts.uplink.stop(0 if not drained else 1.0)
            if not drained:
                rows = parts.outbox.stats().rows
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
            parts.close()

    # -- reload (SIGHUP) and remote changes: agent.selection ---------------------------------

    def request_reload(self) -> None:
        """Signal-safe: re-read the config file in the background and apply what changed."""
        threading.Thread(target=self.reload, name="reload", daemon=True).start()

    def reload(self) -> bool:
        return self.selection.reload()

    def change_consent(self, granted: frozenset[str], zones: list[Any] | None = None) -> list[str]:
        return self.selection.change_consent(granted, zones)

    def apply_plan(self, doc: Any) -> list[str]:
        return self.selection.apply_plan(doc)

    def apply_retained_plan(self, data: bytes, key: Any) -> list[str]:
        return self.selection.apply_retained_plan(data, key)

    def consent_granted(self) -> list[str] | None:
        return self.selection.consent_granted()

    def privacy_zones(self) -> list[Any]:
        return self.selection.privacy_zones()

    def purged(self) -> dict[str, Any] | None:
        return self.selection.last_purge

    # -- remote commands (agent.control) --------------------------------------------------------

    def request_snapshot(self, timeout: float) -> int | None:
        if self.pipeline.stop_event.is_set():
            return None
        return self.pipeline.request_snapshot(timeout)

    def read_dtcs(self, timeout: float) -> dict[str, Any] | None:
        return None if self.diag is None else self.diag.read_dtcs(timeout)

    def resend(self) -> None:
        if self.uplink is not None:
            schema = self.catalog.schema
            self.uplink.add_schema(schema.id, schema.dumps().encode(), current=True)
            self.uplink.publish_status()
