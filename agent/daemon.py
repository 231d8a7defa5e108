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
from pathlib import Path
from typing import Any

from agent import __version__, gnss_wiring
from agent.can_source import validate_sources
from agent.catalog import Catalog, build_catalog
from agent.config import Config
from agent.control.plans import Planner
from agent.downlink import Downlink, control_dir
from agent.lifecycle import PowerController
from agent.pipeline import Pipeline
from agent.privacyrecord import PrivacyRecord, granted_of
from agent.privacyrecord import revoked as revoked_between
from agent.ratelimit import Interval
from agent.schemastore import SchemaStore
from agent.sdnotify import Notifier
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


def effective_config(cfg: Config) -> Config:
    """The config as loaded, with what was changed remotely and kept on the box laid over it
    (consent revoked or granted through the backend)."""
    folder = control_dir(cfg)
    if folder is None:
        return cfg
    from agent.control.consent import ConsentStore

    return ConsentStore(folder / "consent.json").apply(cfg)


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
        # Collection plans replace sections of the config file's own selection; a stored plan
        # applies from the start (not in a dry run, which shows the config alone).
        plan_path = None if dry_run or cfg.outbox is None else Path(f"{cfg.outbox.path}.plan")
        self.planner = Planner(plan_path, cfg, prepare)
        if plan_path is not None:
            cfg, catalog = self.planner.start(catalog, _now_ms())
        self.cfg = cfg
        # The config as its file says, before remote changes (see effective_config).
        self.base_cfg = base_cfg or cfg
        self.catalog = catalog
        # The schemas of the selections in force lately, by id: the update the pipeline closes
        # after a switch was encoded with the old one (dry-run JSON decodes it with its own).
        self._recent_schemas = {catalog.schema.id: catalog.schema}
        self._plan_timer: threading.Timer | None = None
        self.on_json = on_json
        self.drain_timeout = drain_timeout
        self.notifier = notifier or Notifier()
        self.boot = os.urandom(8)
        self.started = time.time()
        self.pipeline = Pipeline(cfg, catalog, boot=self.boot, sink=self._sink)
        self.pipeline.on_loop = self._on_loop
        self.pipeline.watchdog_every = self.notifier.watchdog_interval
        self.power: PowerController | None = None
        if cfg.power is not None:
            self.power = PowerController(
                cfg.power,
                self.pipeline,
                [b.config.name for b in catalog.buses],
                upload=self._upload,
                modem_power=self._modem_power,
                pause_link=self._pause_link,
                pause_gnss=self._pause_gnss,
                on_change=self._on_power_change,
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
        self._report_now = threading.Event()  # the status report is due now (or stopping)
        self._reload_lock = threading.Lock()
        self._next_ping = 0.0
        # What the last purge of stored updates took back (consent revoked, zone added).
        self.last_purge: dict[str, Any] | None = None
        self._arm_plan_expiry()

    @property
    def boot_id(self) -> str:
        return self.boot.hex()

    def _sink(self, update: Update) -> None:
        if self.outbox is not None:
            self.outbox.put(
                update.payload, "event" if update.event else "telemetry", created=update.created
            )
        if self.on_json is not None:
            # Decoding what was encoded shows exactly what a backend will read, with the schema
            # the update names (an update closed just after a switch has the old one).
            schema = self._recent_schemas.get(peek_schema_id(update.payload), self.catalog.schema)
            self.on_json(decode_update(update.payload, schema))

    def request_stop(self) -> None:
        """Thread- and signal-safe: stop input, finish the open batch, return from run()."""
        self._stop.set()
        self._report_now.set()
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
                **p.source_counters(),
                "updates": p.builder.seq,
                "samples": p.builder.samples_out,
                "bytes": p.builder.bytes_out,
            },
        }
        doc["triggers"] = p.trigger_status()
        if self.power is not None:
            doc["power"] = self.power.status()
        if self.location is not None:
            doc["gnss"] = self.location.status()
        if self.diag is not None:
            doc["diagnostics"] = self.diag.status()
        plan = self.planner.book.status_doc()
        if plan is not None:
            doc["plan"] = plan
        if self.cfg.consent is not None:
            doc["consent"] = {
                "granted": list(self.cfg.consent.granted),
                "left_out": dict(self.catalog.excluded),
            }
        if self.modems is not None:
            doc["modems"] = self.modems.status()
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
            if self.last_purge is not None:
                doc["outbox"]["last_purge"] = self.last_purge
        if self.commands is not None:
            doc["remote"] = self.commands.status()
        elif not self.dry_run:
            doc["remote"] = {"commands": "disabled"}
        if self.uplink is not None:
            u = self.uplink.stats()
            doc["uplink"] = {
                "state": u.state,
                "last_error": u.last_error,
                "published": u.published,
                "acked": u.acked,
                "refused": u.refused,
                "in_flight": u.in_flight,
                "paused": u.paused,
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
        reporter = threading.Thread(target=self._report_loop, name="status", daemon=True)
        reporter.start()
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

                self.modems = ModemManager.from_config(self.cfg, on_switch=self._on_modem_switch)
                self.modems.start()
            self.uplink = Uplink(
                self.cfg.mqtt,
                vin=self.cfg.vehicle.vin,
                boot=self.boot_id,
                outbox=self.outbox,
                schema_id=self.catalog.schema.id,
                schema_json=self.catalog.schema.dumps().encode(),
                status=self.status,
                on_link=self._on_link,
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
            every = Interval(START_EXTEND_SECONDS / 3)

            def progress() -> None:
                if every.allow():
                    self.notifier.extend_start(START_EXTEND_SECONDS)

            self._purge(revoked, added, progress)
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

    def _report_loop(self) -> None:
        """Keep the status file and systemd's STATUS= line current until the agent stops."""
        from agent.statusfile import write_status

        interval = self.cfg.status.interval
        while True:
            self._report_now.wait(interval)
            self._report_now.clear()
            if self._stop.is_set():
                return
            # Parked, the report is one more timer: it waits for the lifecycle's heartbeat
            # (and says so in the file, so a reader does not take it for stale).
            interval = self.cfg.status.interval
            if self.power is not None and self.power.machine.state != "driving":
                interval = max(interval, self.power.cfg.heartbeat)
            try:
                doc = self.status()
                if self.cfg.status.path is not None:
                    write_status(self.cfg.status.path, doc, interval=interval)
                self.notifier.status(_one_line(doc))
            except Exception as err:  # reporting must never take the agent down
                log.warning("status report failed: %s", err)
            if self.pipeline.stop_event.is_set():
                return

    def _on_link(self, up: bool, reason: str) -> None:
        # The modem manager counts data-path failures to decide whether the SIM is the problem.
        if self.modems is not None:
            if up:
                self.modems.report_data_ok()
            else:
                self.modems.report_data_failure(reason)

    # -- the lifecycle's actions (agent.lifecycle decides when) --------------------------------

    def _upload(self, timeout: float) -> bool:
        """Publish the committed backlog for at most ``timeout`` seconds (events go first)."""
        if self.outbox is None or self.uplink is None:
            return True
        self.outbox.flush()
        return bool(self.uplink.wait_drained(timeout))

    def _modem_power(self, command: str, low: bool) -> bool:
        if self.modems is None:
            return True
        return bool(self.modems.set_power(command, low=low, timeout=15.0))

    def _pause_link(self, reason: str | None) -> None:
        """Radio traffic stops (``reason``) or resumes (None; the uplink connects at once)."""
        if self.uplink is None:
            return
        if reason is None:
            self.uplink.resume()
        elif not self.uplink.pause(reason, timeout=10.0):
            log.warning("power: the MQTT link did not close within 10 s")

    def _pause_gnss(self, reason: str | None) -> None:
        """The receiver paused (``reason``: parked, low voltage) or read again (None)."""
        if self.location is None:
            return
        if reason is None:
            self.location.resume()
        else:
            self.location.pause(reason)

    def _on_power_change(self, _t: Any) -> None:
        self._report_now.set()
        if self.uplink is not None:
            self.uplink.publish_status()

    def _on_modem_switch(self, active: str, reason: str) -> None:
        if self.uplink is None:
            return
        if reason == "initial":
            # The first choice: a connection that already works keeps working.
            log.info("data through modem %s", active)
        else:
            log.warning("data now through modem %s (%s): reconnecting MQTT", active, reason)
            self.uplink.reconnect(f"modem switched to {active}")
        self.uplink.publish_status()

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

    # -- reload (SIGHUP) ---------------------------------------------------------------------

    def request_reload(self) -> None:
        """Signal-safe: re-read the config file in the background and apply what changed."""
        threading.Thread(target=self.reload, name="reload", daemon=True).start()

    def reload(self) -> bool:
        """Apply a changed signal selection, update settings or consent without a restart.

        Changes to buses, broker, outbox, vehicle, modems or [remote] need a restart and are
        refused (the running config stays in force). Samples of categories whose consent was
        revoked are purged from the outbox before they are sent.
        """
        from agent.config import load_config
        from agent.errors import AgentError

        with self._reload_lock:
            if self.cfg.source is None:
                log.error("reload: the running config has no file to re-read")
                return False
            try:
                base = load_config(self.cfg.source)
            except AgentError as err:
                for line in err.problems:
                    log.error("reload refused: %s", line)
                return False
            problems = self._apply_config(base, effective_config(base), "reload accepted")
            for line in problems:
                log.error("reload refused: %s", line)
            return not problems

    def _apply_config(self, base: Config, cfg: Config, why: str) -> list[str]:
        """Switch to ``cfg`` (``base`` laid over by remote changes; a plan in force is laid
        over it here) through the reload path; problems, one line each (then nothing changed).
        Call with _reload_lock held."""
        from agent.errors import AgentError

        try:
            catalog = prepare(cfg)
            cfg, catalog = self.planner.rebase(cfg, catalog, _now_ms())
        except AgentError as err:
            return list(err.problems)
        fixed: tuple[str, ...] = ("vehicle", "bus", "mqtt", "outbox", "modem", "modems", "status")
        fixed += ("remote", "gnss", "diagnostics")
        changed = [k for k in fixed if getattr(cfg, k) != getattr(self.cfg, k)]
        if changed:
            return [
                f"changes to {', '.join(changed)} need a restart (systemctl restart spime-agent)"
            ]
        revoked = _revoked(self.cfg, cfg)
        if self.diag is not None:
            self.diag.consent_decided(cfg)  # a revocation stops diagnostic requests now
        added = _zones_added(self.cfg, cfg)
        self.base_cfg = base
        if self.privacy is not None:
            self.privacy.loosen(cfg)  # before an update is stored under it
        self._switch(
            cfg,
            catalog,
            why,
            f"; consent revoked for {', '.join(sorted(revoked))}" if revoked else "",
        )
        self._arm_plan_expiry()
        if (revoked or added) and self.outbox is not None:
            self._purge(revoked, added)
        return []

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

    def consent_granted(self) -> list[str] | None:
        return None if self.cfg.consent is None else list(self.cfg.consent.granted)

    def privacy_zones(self) -> list[Any]:
        return list(self.cfg.privacy.zones)

    def purged(self) -> dict[str, Any] | None:
        return self.last_purge

    def change_consent(self, granted: frozenset[str], zones: list[Any] | None = None) -> list[str]:
        """Remote consent (and privacy zone) change: stored on the box first, then the same
        path as a reload."""
        from agent.control.consent import ConsentStore

        folder = control_dir(self.cfg)
        if folder is None or self.cfg.consent is None:
            return ["no outbox folder to keep the consent change in"]
        with self._reload_lock:
            # From the config file's own sections (a plan in force is laid over again).
            consent = self.cfg.consent.model_copy(update={"granted": sorted(granted)})
            privacy = self.cfg.privacy.model_copy(
                update={"zones": list(self.cfg.privacy.zones if zones is None else zones)}
            )
            cfg = self.base_cfg.model_copy(update={"consent": consent, "privacy": privacy})
            try:
                ConsentStore(folder / "consent.json").save(
                    self.base_cfg,
                    granted,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    zones=privacy.zones,
                )
            except OSError as err:
                return [f"cannot store the consent change: {err}"]
            return self._apply_config(self.base_cfg, cfg, "remote consent change accepted")

    def _switch(self, cfg: Config, catalog: Catalog, why: str, note: str = "") -> None:
        """The hot path of every selection change (reload, plan, expiry): same boot and
        sequence, the new schema stored and published. Called with the reload lock held."""
        self.pipeline.request_reload(cfg, catalog)
        old = self.catalog
        self.cfg, self.catalog = cfg, catalog
        # A new dict (the pipeline thread reads it), of the last few schemas: updates still
        # open or being closed were encoded with one of them.
        recent = {**self._recent_schemas, catalog.schema.id: catalog.schema}
        self._recent_schemas = dict(list(recent.items())[-4:])
        if self.schemas is not None:
            self.schemas.save(catalog.schema)
        if self.uplink is not None:
            self.uplink.add_schema(catalog.schema.id, catalog.schema.dumps().encode(), current=True)
            self.uplink.publish_status()
        log.info("%s: schema %s -> %s%s", why, old.schema.id, catalog.schema.id, note)

    # -- collection plans --------------------------------------------------------------------

    def apply_plan(self, doc: Any) -> list[str]:
        """Apply a collection plan (its JSON object or text): the problems that reject it, one
        line each (nothing changes then), or [] once it is in force (or already was)."""
        with self._reload_lock:
            problems, switch = self.planner.apply(doc, self.cfg.consent, _now_ms())
            if switch is not None:
                book = self.planner.book
                assert book.plan is not None
                self._switch(*switch, f"plan {book.plan.id} version {book.plan.version} applied")
                self._arm_plan_expiry()
            elif self.uplink is not None:
                self.uplink.publish_status()
        return problems

    def apply_retained_plan(self, data: bytes, key: Any) -> list[str]:
        """The signed plan retained on ``<prefix>/<vin>/plan`` (the desired state, delivered at
        every connect): opened with the fleet's command key, then applied as ``apply_plan``."""
        from agent.control.plans import open_retained
        from agent.errors import ConfigError

        try:
            doc = open_retained(data, key, vin=self.cfg.vehicle.vin, now_ms=_now_ms())
        except ConfigError as err:
            for line in err.problems:
                log.warning("%s", line)
            return list(err.problems)
        return self.apply_plan(doc)

    def _arm_plan_expiry(self) -> None:
        """A plan falls back to the config's own selection at its expiry time."""
        if self._plan_timer is not None:
            self._plan_timer.cancel()
            self._plan_timer = None
        plan = self.planner.book.in_force(_now_ms())
        if plan is None or plan.expires is None:
            return
        delay = max(0.0, (plan.expires - _now_ms()) / 1000)
        self._plan_timer = threading.Timer(delay, self._expire_plan, args=(plan,))
        self._plan_timer.daemon = True
        self._plan_timer.start()

    def _expire_plan(self, plan: Any) -> None:
        from agent.errors import AgentError

        with self._reload_lock:
            try:
                switch = self.planner.expire(plan, self.cfg.consent)
            except AgentError as err:
                self.planner.book.expired(plan)
                log.error("plan expired, but the config's own selection fails: %s", err)
                return
            if switch is not None:
                self._switch(*switch, f"plan {plan.id} version {plan.version} expired")
                self.planner.book.expired(plan)

    def _purge(
        self, revoked: set[str], zones_added: bool, progress: Callable[[], None] | None = None
    ) -> None:
        """Take back from every update not yet sent the samples of revoked categories and the
        positions inside the zones in force (when one was added): agent.purge."""
        from agent.purge import tighten
        from agent.sources import zones as zones_of

        assert self.outbox is not None and self.schemas is not None
        # The update the old config was filling is closed by the pipeline thread: wait until
        # it reached the outbox (later fixes pass the new zones in the receiver already).
        if not self.pipeline.wait_reloaded(10.0):
            log.warning("purge: the pipeline did not switch within 10 s; purging what is stored")
        zones = zones_of(self.cfg.privacy)
        consent = self.cfg.consent
        result, positions = tighten(
            self.outbox,
            self.schemas,
            revoked=revoked,
            zones=zones if zones_added else (),
            coarse_grid=consent.coarse_grid if consent is not None else 0.0,
            progress=progress,
        )
        why = [f"consent revoked for {', '.join(sorted(revoked))}"] * bool(revoked)
        why += [f"privacy zones now {', '.join(z.name for z in zones)}"] * zones_added
        self.last_purge = {
            "at": round(time.time(), 3),
            "why": "; ".join(why),
            **result.as_dict(),
            "location_samples": positions,
        }
        if self.privacy is not None:
            # A purge left to a failing disk is owed again at the next start.
            self.privacy.settle(self.cfg, purged=self.outbox.stats().write_error is None)
        log.warning(
            "%s: %d stored updates deleted, %d rewritten without those samples%s",
            "; ".join(why),
            result.deleted,
            result.rewritten,
            f" ({positions} location samples taken back)" if zones_added else "",
        )


def _now_ms() -> int:
    """Wall time in Unix milliseconds: plans expire at a wall-clock time."""
    return int(time.time() * 1000)


def _one_line(doc: dict[str, Any]) -> str:
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


def _zones_added(old: Config, new: Config) -> bool:
    """A privacy zone is new, or changed (it may have grown): stored positions are checked."""
    return any(z not in old.privacy.zones for z in new.privacy.zones)


def _revoked(old: Config, new: Config) -> set[str]:
    """Categories granted before and not now (no [consent] section means everything)."""
    return revoked_between(granted_of(old), granted_of(new))
