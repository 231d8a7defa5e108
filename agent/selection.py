"""What the running agent selects and is allowed to send: config, catalog, consent, plans.

One object holds the state that changes together: the config in force (the file's, with the
remote consent change and a collection plan laid over it), its catalog, the recent schemas, the
plan's expiry timer, what the last purge took back, and the lock every change is made under.
Every path that changes the selection ends in ``_switch``: a reload (SIGHUP), a remote consent
or privacy zone change, a plan applied or expired. A change of consent or privacy zones also
purges the updates waiting in the outbox (agent.purge).

It does not build the parts it drives (agent.daemon wires the pipeline, outbox, schema store,
uplink and diagnostics and hands itself over as ``parts``), decide what a plan or a consent
change may do (agent.control.plans, agent.control.remote) nor choose the signals
(agent.catalog).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.catalog import Catalog
from agent.config import Config
from agent.control.plans import Planner
from agent.downlink import control_dir
from agent.privacyrecord import granted_of
from agent.privacyrecord import revoked as revoked_between
from agent.spime import Schema

log = logging.getLogger(__name__)

# The config sections a reload may not change: the running parts were built from them.
RESTART_ONLY: tuple[str, ...] = ("vehicle", "bus", "mqtt", "outbox", "modem", "modems", "status")
RESTART_ONLY += ("remote", "gnss", "diagnostics")


class Parts(Protocol):
    """The running parts a selection change reaches (None until opened, or when not used)."""

    @property
    def pipeline(self) -> Any: ...
    @property
    def diag(self) -> Any: ...
    @property
    def outbox(self) -> Any: ...
    @property
    def schemas(self) -> Any: ...
    @property
    def uplink(self) -> Any: ...
    @property
    def privacy(self) -> Any: ...


def effective_config(cfg: Config) -> Config:
    """The config as loaded, with what was changed remotely and kept on the box laid over it
    (consent revoked or granted through the backend)."""
    folder = control_dir(cfg)
    if folder is None:
        return cfg
    from agent.control.consent import ConsentStore

    return ConsentStore(folder / "consent.json").apply(cfg)


def now_ms() -> int:
    """Wall time in Unix milliseconds: plans expire at a wall-clock time."""
    return int(time.time() * 1000)


class Selection:
    """The selection in force and every way it changes at run time. ``prepare`` checks a config
    and builds its catalog (agent.daemon.prepare); ``plan_path`` keeps the plan in force (None:
    no plans, as in a dry run)."""

    def __init__(
        self,
        cfg: Config,
        catalog: Catalog,
        *,
        base_cfg: Config | None,
        plan_path: Any,
        prepare: Callable[[Config], Catalog],
    ) -> None:
        self.prepare = prepare
        # Collection plans replace sections of the config file's own selection; a stored plan
        # applies from the start.
        self.planner = Planner(plan_path, cfg, prepare)
        if plan_path is not None:
            cfg, catalog = self.planner.start(catalog, now_ms())
        self.cfg = cfg
        # The config as its file says, before remote changes (see effective_config).
        self.base_cfg = base_cfg or cfg
        self.catalog = catalog
        # The schemas of the selections in force lately, by id: the update the pipeline closes
        # after a switch was encoded with the old one (dry-run JSON decodes it with its own).
        self._recent_schemas = {catalog.schema.id: catalog.schema}
        self._plan_timer: threading.Timer | None = None
        self._lock = threading.Lock()
        # What the last purge of stored updates took back (consent revoked, zone added).
        self.last_purge: dict[str, Any] | None = None
        self.parts: Parts | None = None

    def attach(self, parts: Parts) -> None:
        """The running parts to drive; arms the expiry of a plan in force."""
        self.parts = parts
        self._arm_plan_expiry()

    def schema(self, schema_id: str) -> Schema:
        """The schema an update names, from the last few in force (else the current one)."""
        return self._recent_schemas.get(schema_id, self.catalog.schema)

    # -- reload (SIGHUP) ---------------------------------------------------------------------

    def reload(self) -> bool:
        """Apply a changed signal selection, update settings or consent without a restart.

        Changes to buses, broker, outbox, vehicle, modems or [remote] need a restart and are
        refused (the running config stays in force). Samples of categories whose consent was
        revoked are purged from the outbox before they are sent.
        """
        from agent.config import load_config
        from agent.errors import AgentError

        with self._lock:
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
        Call with the lock held."""
        from agent.errors import AgentError

        assert self.parts is not None
        try:
            catalog = self.prepare(cfg)
            cfg, catalog = self.planner.rebase(cfg, catalog, now_ms())
        except AgentError as err:
            return list(err.problems)
        changed = [k for k in RESTART_ONLY if getattr(cfg, k) != getattr(self.cfg, k)]
        if changed:
            return [
                f"changes to {', '.join(changed)} need a restart (systemctl restart spime-agent)"
            ]
        revoked = _revoked(self.cfg, cfg)
        if self.parts.diag is not None:
            self.parts.diag.consent_decided(cfg)  # a revocation stops diagnostic requests now
        added = _zones_added(self.cfg, cfg)
        self.base_cfg = base
        if self.parts.privacy is not None:
            self.parts.privacy.loosen(cfg)  # before an update is stored under it
        self._switch(
            cfg,
            catalog,
            why,
            f"; consent revoked for {', '.join(sorted(revoked))}" if revoked else "",
        )
        self._arm_plan_expiry()
        if (revoked or added) and self.parts.outbox is not None:
            self.purge(revoked, added)
        return []

    # -- consent and privacy zones (remote) ----------------------------------------------------

    def consent_granted(self) -> list[str] | None:
        return None if self.cfg.consent is None else list(self.cfg.consent.granted)

    def privacy_zones(self) -> list[Any]:
        return list(self.cfg.privacy.zones)

    def change_consent(self, granted: frozenset[str], zones: list[Any] | None = None) -> list[str]:
        """Remote consent (and privacy zone) change: stored on the box first, then the same
        path as a reload."""
        from agent.control.consent import ConsentStore

        folder = control_dir(self.cfg)
        if folder is None or self.cfg.consent is None:
            return ["no outbox folder to keep the consent change in"]
        with self._lock:
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
        sequence, the new schema stored and published. Called with the lock held."""
        assert self.parts is not None
        self.parts.pipeline.request_reload(cfg, catalog)
        old = self.catalog
        self.cfg, self.catalog = cfg, catalog
        # A new dict (the pipeline thread reads it), of the last few schemas: updates still
        # open or being closed were encoded with one of them.
        recent = {**self._recent_schemas, catalog.schema.id: catalog.schema}
        self._recent_schemas = dict(list(recent.items())[-4:])
        if self.parts.schemas is not None:
            self.parts.schemas.save(catalog.schema)
        if self.parts.uplink is not None:
            uplink = self.parts.uplink
            uplink.add_schema(catalog.schema.id, catalog.schema.dumps().encode(), current=True)
            uplink.publish_status()
        log.info("%s: schema %s -> %s%s", why, old.schema.id, catalog.schema.id, note)

    # -- collection plans --------------------------------------------------------------------

    def apply_plan(self, doc: Any) -> list[str]:
        """Apply a collection plan (its JSON object or text): the problems that reject it, one
        line each (nothing changes then), or [] once it is in force (or already was)."""
        assert self.parts is not None
        with self._lock:
            problems, switch = self.planner.apply(doc, self.cfg.consent, now_ms())
            if switch is not None:
                book = self.planner.book
                assert book.plan is not None
                self._switch(*switch, f"plan {book.plan.id} version {book.plan.version} applied")
                self._arm_plan_expiry()
            elif self.parts.uplink is not None:
                self.parts.uplink.publish_status()
        return problems

    def apply_retained_plan(self, data: bytes, key: Any) -> list[str]:
        """The signed plan retained on ``<prefix>/<vin>/plan`` (the desired state, delivered at
        every connect): opened with the fleet's command key, then applied as ``apply_plan``."""
        from agent.control.plans import open_retained
        from agent.errors import ConfigError

        try:
            doc = open_retained(data, key, vin=self.cfg.vehicle.vin, now_ms=now_ms())
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
        plan = self.planner.book.in_force(now_ms())
        if plan is None or plan.expires is None:
            return
        delay = max(0.0, (plan.expires - now_ms()) / 1000)
        self._plan_timer = threading.Timer(delay, self._expire_plan, args=(plan,))
        self._plan_timer.daemon = True
        self._plan_timer.start()

    def _expire_plan(self, plan: Any) -> None:
        from agent.errors import AgentError

        with self._lock:
            try:
                switch = self.planner.expire(plan, self.cfg.consent)
            except AgentError as err:
                self.planner.book.expired(plan)
                log.error("plan expired, but the config's own selection fails: %s", err)
                return
            if switch is not None:
                self._switch(*switch, f"plan {plan.id} version {plan.version} expired")
                self.planner.book.expired(plan)

    # -- purge of stored updates ---------------------------------------------------------------

    def purge(
        self, revoked: set[str], zones_added: bool, progress: Callable[[], None] | None = None
    ) -> None:
        """Take back from every update not yet sent the samples of revoked categories and the
        positions inside the zones in force (when one was added): agent.purge. Also called at
        start, for what privacy tightened while the agent was stopped (agent.daemon)."""
        from agent.purge import tighten
        from agent.sources import zones as zones_of

        parts = self.parts
        assert parts is not None and parts.outbox is not None and parts.schemas is not None
        # The update the old config was filling is closed by the pipeline thread: wait until
        # it reached the outbox (later fixes pass the new zones in the receiver already).
        if not parts.pipeline.wait_reloaded(10.0):
            log.warning("purge: the pipeline did not switch within 10 s; purging what is stored")
        zones = zones_of(self.cfg.privacy)
        consent = self.cfg.consent
        result, positions = tighten(
            parts.outbox,
            parts.schemas,
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
        if parts.privacy is not None:
            # A purge left to a failing disk is owed again at the next start.
            parts.privacy.settle(self.cfg, purged=parts.outbox.stats().write_error is None)
        log.warning(
            "%s: %d stored updates deleted, %d rewritten without those samples%s",
            "; ".join(why),
            result.deleted,
            result.rewritten,
            f" ({positions} location samples taken back)" if zones_added else "",
        )


def _zones_added(old: Config, new: Config) -> bool:
    """A privacy zone is new, or changed (it may have grown): stored positions are checked."""
    return any(z not in old.privacy.zones for z in new.privacy.zones)


def _revoked(old: Config, new: Config) -> set[str]:
    """Categories granted before and not now (no [consent] section means everything)."""
    return revoked_between(granted_of(old), granted_of(new))
