"""The GNSS receiver as an input of the pipeline: fixes and states -> samples, in its thread.

``Location`` is polled by the pipeline at every turn of its loop (agent.pipeline ``inputs``):
it takes the fixes the receiver released (zones, sampling and trip ends were applied on the
receiver's own thread, before anything here: what is taken may be stored; the receiver's feed,
agent.feed, wakes the pipeline, so a quiet bus does not hold a fix back) and offers their
values to the pipeline's sampler as the schema's location signals, through the same
``coarse_location`` grid as CAN positions. The receiver's state becomes an event sample of
``Vehicle.CurrentLocation.State`` when it changes, so a dead receiver or a privacy zone is
reported, never hidden behind the last position.

Follows the lifecycle (``[power]``, agent.lifecycle): ``pause`` when the car parks or the
battery is cut off, ``resume`` at the wake. Paused, the receiver is not read (agent.sources:
its port or connection closed, a modem's engine off, its thread blocked without a timeout), its
trip ends (the fixes held near where the car stopped are dropped) and the state is ``paused``;
what it released before goes into the update the lifecycle commits next. With ``[power]`` the
receiver starts paused (reason ``started``) until the lifecycle's first decision; without it
nothing pauses it.

Follows the config in force: on a reload (consent, ``[privacy]`` zones) it opens the receiver
when location consent appears, closes it when consent goes, and hands new zones and trip-end
radius to the receiver's privacy filter. Changing ``[gnss]`` itself needs a restart. It does
not parse NMEA (agent.sources) nor decide which fixes are kept (agent.policy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.catalog import Catalog, Policy
from agent.config import Config
from agent.errors import ConfigError
from agent.locationschema import STATES, LocationPlan, raw_values
from agent.sampling import Group, SignalState, grid_snapper
from agent.sources import GnssSource, open_gnss, zones

if TYPE_CHECKING:
    from agent.pipeline import Pipeline

log = logging.getLogger(__name__)

_STATE_CODE = {name: code for code, name in enumerate(STATES)}


def check(cfg: Config) -> None:
    """ConfigError if the configured receiver cannot be built. An "at" receiver needs the
    modem manager, which exists only in a run: its modem was checked by the config model."""
    if cfg.gnss is not None and cfg.gnss.source != "at":
        try:
            open_gnss(cfg.gnss, cfg.privacy)
        except ConfigError as err:
            src = cfg.source or "config"
            raise ConfigError(*(f"{src}: {p}" for p in err.problems)) from None


def describe(cfg: Config, catalog: Catalog) -> str | None:
    """One line on the receiver and the privacy in force (check, activate), or None."""
    g = cfg.gnss
    if g is None:
        return None
    where = {"nmea": f"{g.port} ({g.baudrate} baud)", "gpsd": f"{g.host}:{g.gpsd_port}"}
    line = f"gnss {g.source} {where.get(g.source, f'modem {g.modem}')}: "
    plan = catalog.location
    if plan is None:
        return line + "not opened: no consent for location"
    how = f"curve logging {g.tolerance:g} m" if g.mode == "curve" else "tracker rules"
    grid = f", coarse ({plan.grid:g}-degree grid)" if plan.coarse else ""
    p = cfg.privacy
    zones = ", ".join(f"{z.name} {z.radius:g} m" for z in p.zones) or "none"
    return (
        f"{line}{len(plan.fields) + 1} location signals{grid}, {how}; privacy zones: {zones}; "
        f"trip ends withheld within {p.trip_end_radius:g} m"
    )


class Location:
    """The receiver of ``[gnss]`` wired into one pipeline (see the module docstring); the
    receiver is opened at the pipeline's first turn."""

    def __init__(self, pipeline: Pipeline, modems: Callable[[], Any] = lambda: None) -> None:
        self.pipeline = pipeline
        self._modems = modems  # the modem manager once it runs (an "at" receiver needs it)
        self.source: GnssSource | None = None
        self.fixes = 0  # fixes taken and offered to the sampler
        self._catalog: Catalog | None = None
        self._cfg: Config | None = None
        self._plan: LocationPlan | None = None
        self._states: dict[int, SignalState] = {}
        self._fix_group = Group()
        self._reported: str | None = None
        self._report_from = 0.0  # monotonic: the receiver's first state is reported from then
        self._closed = False
        self._paused: str | None = None  # why the lifecycle paused the receiver
        # The lifecycle's pause and resume (its thread) and the opening of the receiver (the
        # pipeline's) each see the other whole: a wake while the receiver opens is not lost.
        self._pause_lock = threading.Lock()

    # -- called by the pipeline, in its thread -------------------------------------------------

    def poll(self) -> None:
        p = self.pipeline
        if p.catalog is not self._catalog and not self._closed:
            self._follow()
        src, plan = self.source, self._plan
        if src is None or plan is None:
            return
        fixes = src.take()
        now = p.now
        offer = p.sampler.offer
        for fix in fixes:
            self._fix_group.last_t = fix.t
            for _, sid, raw in raw_values(plan, fix):
                offer(self._states[sid], raw, fix.t, now)
        self.fixes += len(fixes)
        # "paused" at once, also within down_after of the start: the lifecycle commits next.
        self._report_state(src.state, force=src.state == "paused")

    def pause(self, reason: str) -> None:
        """From the lifecycle's thread: the car parked (``reason``); returns once the receiver
        is no longer read. The pipeline's next turn takes its last fixes and reports
        ``paused``, before any commit handed to the pipeline after this call."""
        with self._pause_lock:
            self._paused = reason
            src = self.source
        if src is not None and not src.pause(reason):
            log.warning("gnss: the receiver did not stop within 5 s; it stops when it can")

    def resume(self) -> None:
        """From the lifecycle's thread: the wake; the receiver is read again at once."""
        with self._pause_lock:
            self._paused = None
            if self.source is not None:
                self.source.resume()

    @property
    def reported(self) -> str | None:
        """The receiver's state last written into the data (None before the first)."""
        return self._reported

    def close(self) -> None:
        """End of input: the receiver stops (its trip ends: trailing fixes are dropped); what
        it released before goes into the open update, then the state ``gnss down`` (unless it
        was paused: that state stays, the receiver was not read anyway)."""
        self._closed = True
        src = self.source
        if src is None:
            return
        src.stop()
        self.poll()
        if self._paused is None:
            # The receiver is no longer read: the twin must not keep showing its last "fix".
            self._report_state("gnss down", force=True)
        self.source = None
        log.info(
            "gnss: stopped; %d fixes sent of those the receiver gave (%s; privacy %s)",
            self.fixes,
            ", ".join(f"{k} {v}" for k, v in src.track.counters.items()),
            ", ".join(f"{k} {v}" for k, v in src.privacy.counters.items()),
        )

    def status(self) -> dict[str, Any]:
        src = self.source
        if src is None:
            return {"state": "off" if self._plan is None else "stopped", "fixes_sent": self.fixes}
        doc: dict[str, Any] = {
            "state": src.state,
            "fixes_sent": self.fixes,
            "dropped": src.fixes.dropped,
            "track": dict(src.track.counters),
            "privacy": dict(src.privacy.counters),
        }
        if self._paused is not None:
            doc["paused"] = self._paused
        return doc

    # -- following the config in force ---------------------------------------------------------

    def _follow(self) -> None:
        p = self.pipeline
        cfg, catalog = p.cfg, p.catalog
        self._catalog = catalog
        plan = catalog.location if cfg.gnss is not None else None
        if plan is None:
            if self.source is not None:
                log.warning("gnss: no consent for location any more: receiver closed")
                self.source.stop()
                self.source = None
            self._plan, self._states = None, {}
            self._cfg = cfg
            return
        self._plan = plan
        self._build_states(plan)
        if self.source is None:
            assert cfg.gnss is not None
            try:
                source = open_gnss(cfg.gnss, cfg.privacy, self._modems())
            except ConfigError as err:
                # Only an "at" receiver without the modem manager (a dry run) gets here.
                log.error("gnss: receiver not opened: %s", "; ".join(err.problems))
                self._plan, self._states, self._cfg = None, {}, cfg
                return
            source.fixes.wake = p.wake
            with self._pause_lock:
                self.source = source
                if self._paused is not None:
                    source.pause(self._paused)  # opened while parked: starts paused
            source.start()
            self._reported = None
            self._report_from = time.monotonic() + cfg.gnss.down_after
            log.info("gnss: receiver %s opened", cfg.gnss.source)
        elif self._cfg is not None and cfg.privacy != self._cfg.privacy:
            # Before this turn takes any fix: those the receiver released under the old zones
            # and not yet taken are checked against the new ones too.
            withheld = self.source.set_zones(zones(cfg.privacy))
            self.source.privacy.trip_end_radius = cfg.privacy.trip_end_radius
            log.info(
                "gnss: privacy zones now %s (%d waiting fixes inside them dropped)",
                [z.name for z in cfg.privacy.zones],
                withheld,
            )
        self._cfg = cfg

    def _build_states(self, plan: LocationPlan) -> None:
        """Sampler states for the location signals under the schema in force; part of the
        pipeline's states so snapshots carry them (stamped with the fix's own time)."""
        p = self.pipeline
        old = {id(s) for s in self._states.values()}
        p.states[:] = [s for s in p.states if id(s) not in old]
        self._states = {}
        for f, sid in plan.fields:
            snap = None
            if plan.coarse and f.coarse:
                snap = grid_snapper(f.scale, 0, plan.grid, True)
            self._states[sid] = SignalState(sid, Policy(), f.scale, self._fix_group, snap)
        self._states[plan.state_sid] = SignalState(plan.state_sid, Policy(event=True), 1, Group())
        p.states.extend(self._states.values())
        p.states.sort(key=lambda s: s.sid)
        self._reported = None

    def _report_state(self, state: str, *, force: bool = False) -> None:
        # Only the first state waits for down_after (a receiver just opened has not spoken
        # yet); after a "paused", the receiver's own warm-up keeps that state meanwhile.
        early = self._reported is None and time.monotonic() < self._report_from
        if state == self._reported or (early and not force):
            return
        assert self._plan is not None
        log.info("gnss: %s", state)
        self._reported = state
        st = self._states[self._plan.state_sid]
        t_ms = int(time.time() * 1000)
        st.group.last_t = t_ms
        self.pipeline.sampler.offer(st, _STATE_CODE[state], t_ms, self.pipeline.now)
