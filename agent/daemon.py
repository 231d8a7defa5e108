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
callbacks agent.partactions'. ``Agent`` keeps their public entry points as delegations.
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
from agent.downlink import Downlink
from agent.lifecycle import PowerController
from agent.partactions import PartActions
from agent.pipeline import Pipeline
from agent.privacyrecord import PrivacyRecord
from agent.ratelimit import Interval
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
START_EXTEND_SECONDS = 60.0  # systemd's start timeout, from now, while a purge at start reads
# Beyond park_upload, how long the end of a replay waits for the lifecycle's last transitions
# (a commit, the link's pause and the modems' power each take at most 10-15 s).
POWER_SETTLE_SECONDS = 40.0


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
        self.power: PowerController | None = None
        if cfg.power is not None:
            self.power = PowerController(
                cfg.power,
                self.pipeline,
                [b.config.name for b in catalog.buses],
                upload=self.actions.upload,
                modem_power=self.actions.modem_power,
                pause_link=self.actions.pause_link,
                pause_gnss=self.actions.pause_gnss,
                on_change=self.actions.on_power_change,
            )
            self.pipeline.on_power = self.power.on_value
            self.pipeline.on_activity = self.power.on_activity
        # [gnss]: the receiver, polled by the pipeline (agent.gnss_wiring).
        self.location = (
            gnss_wiring.Location(self.pipeline, lambda: self.modems) if cfg.gnss else None
        )
        if self.location is not None:
            self.pipeline.inputs.append(self.location)
            if self.power is not None:
                # Like the rest of the lifecycle's actions, the receiver waits for the inputs
                # to decide: a box restarted in a parked car does not switch it on.
                self.location.pause("started")
        self.outbox: Any = None
        self.uplink: Any = None
        self.modems: Any = None
        self.schemas: SchemaStore | None = None
        self.privacy: PrivacyRecord | None = None  # what the stored updates respect
        self.commands: Any = None
        self.diag: Any = None
        if cfg.diagnostics:
            from agent.diag.wiring import Diagnostics

            self.diag = Diagnostics(cfg, self.pipeline, self.power)
            self.pipeline.inputs.append(self.diag)  # it follows the consent in force
        self._stop = threading.Event()
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
        if self.power is not None:
            self.power.start()
        if self.diag is not None:
            self.diag.start()
        try:
            if self.dry_run:
                self.notifier.ready("dry run")
                self.pipeline.run()
                self._end_power()
                self.notifier.stopping()
                return self._finish_pipeline()
            return self._run_publishing()
        finally:
            if self.diag is not None:
                self.diag.stop()
            if self.power is not None:
                self.power.stop()

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
        self.outbox = Outbox(self.cfg.outbox, tag_of=peek_schema_id)
        self.outbox.open()
        try:
            self.schemas = SchemaStore(Path(f"{self.cfg.outbox.path}.schemas"))
            self.schemas.save(self.catalog.schema)
            self._purge_owed()  # before the uplink may read a stored update
            if self.cfg.modem:
                from agent.modem.manager import ModemManager

                on_switch = self.actions.on_modem_switch
                self.modems = ModemManager.from_config(self.cfg, on_switch=on_switch)
                self.modems.start()
            self.uplink = Uplink(
                self.cfg.mqtt,
                vin=self.cfg.vehicle.vin,
                boot=self.boot_id,
                outbox=self.outbox,
                schema_id=self.catalog.schema.id,
                schema_json=self.catalog.schema.dumps().encode(),
                status=self.status,
                on_link=self.actions.on_link,
                **self._downlink_hook(),
            )
            self._publish_stored_schemas()
            self.uplink.start()
            self.notifier.ready(f"publishing to {self.cfg.mqtt.host}:{self.cfg.mqtt.port}")
            self.pipeline.run()
            self._end_power()
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
            if self.commands is not None:
                self.commands.stop(5.0)
            if self.modems is not None:
                self.modems.stop(5.0)
            self.outbox.close()

    def _purge_owed(self) -> None:
        """A zone added or consent revoked while the agent was stopped: purge what the last
        run left in the outbox (agent.privacyrecord)."""
        assert self.cfg.outbox is not None
        self.privacy = PrivacyRecord(Path(f"{self.cfg.outbox.path}.privacy"))
        revoked, added = self.privacy.owed(self.cfg)
        if (revoked or added) and self.outbox.stats().rows:  # an empty outbox owes nothing
            # Each rewritten row is one commit (fsync): on slow flash a big outbox can take
            # longer than systemd's start timeout, so more time is asked for while rows are read.
            self.notifier.status("purging stored updates: privacy tightened while stopped")
            if not self.privacy.known:
                log.warning(
                    "%s: no record of the privacy the stored updates were kept under: they are "
                    "checked against every zone and consent category in force",
                    self.privacy.path,
                )
            every = Interval(START_EXTEND_SECONDS / 3)

            def progress() -> None:
                if every.allow():
                    self.notifier.extend_start(START_EXTEND_SECONDS)

            self.selection.purge(revoked, added, progress)
        else:
            self.privacy.settle(self.cfg, purged=True)

    def _end_power(self) -> None:
        """The input ended: the lifecycle first acts on every value it was handed (the last
        transitions of a replay, with their events), then stops; a recording that ended
        parked paused the link, which the final drain must not wait on."""
        if self.power is None:
            return
        if self._stop.is_set():  # a stop while parked keeps the radio quiet
            self.power.stop()
            return
        timeout = self.power.cfg.park_upload + POWER_SETTLE_SECONDS
        if not self.power.settle(timeout):
            log.warning("power: the lifecycle did not finish within %g s", timeout)
        self.power.stop()
        if self.uplink is not None:
            self.uplink.resume()

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

    def _publish_stored_schemas(self) -> None:
        """Rows of an earlier config may wait in the outbox: publish their schemas too."""
        assert self.outbox is not None and self.schemas is not None
        # From the outbox's index of schema ids in use: no stored row is read.
        ids = self.outbox.tags()
        ids.discard(self.catalog.schema.id)
        for sid in sorted(ids):
            schema = self.schemas.load(sid)
            if schema is None:
                log.error(
                    "outbox rows use schema %s, which is not stored: a backend cannot decode them",
                    sid,
                )
            else:
                self.uplink.add_schema(sid, schema.dumps().encode())

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

    def _downlink_hook(self) -> dict[str, Any]:
        """With [remote]: start the command worker; the uplink's subscriptions and handler."""
        if self.cfg.remote is None or self.cfg.mqtt is None:
            return {}
        downlink = Downlink(self, self.cfg)
        self.commands = downlink.start()
        return downlink.uplink_hook()

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
