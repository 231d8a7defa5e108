"""Privacy zones for positions decoded from CAN: which signals form the position, and the values
withheld while the car is inside a zone, before anything reaches the sampler.

Which signals: a ``[[signal]]`` entry with ``location = "latitude"`` or ``"longitude"``, or one
whose wire ``name`` is the VSS ``Vehicle.CurrentLocation.Latitude`` / ``.Longitude``; one pair
per config (the two may sit in different messages or on different buses), each of category
``location``. ``roles`` checks this against the candidates of the catalog and names every
problem by its ``signal[i]`` field. Under a collection plan the base config's roles stay with
their signals (``Config.base_positions``).

In the data path (``CanPositions``, in the pipeline's thread, before sampling and before the
trigger engine records anything): every frame that carries a coordinate places the car
(agent.policy.canposition). A value of a ``location`` (or ``coarse_location``) CAN signal,
position or not (heading, altitude, speed over ground of the same receiver), exact or to be
snapped to the coarse grid, passes only when the position in force at its frame and the first
position at least as new as it both lie outside every zone: it waits here for the latter
(bounded; the pipeline samples what is ``released``). On entering, the current values of
those signals are forgotten (no heartbeat nor snapshot repeats them); on leaving, every
location value is offered again. The twin sees ``Vehicle.CurrentLocation.State``
(``in privacy zone``, ``fix``): the GNSS receiver's signal when ``[gnss]`` is configured, else
one of its own with the same value table. A change of zones (reload, remote consent) drops the
held values and the triggers' recorded history of those signals: they were judged under the
old zones. With ``trip_end_radius`` above 0 the values that pass the zones then wait for the
trip's end to be judged (agent.cantrip: the trip's start and end withheld); the pipeline samples
what comes out of it.

It does not decode frames (agent.pipeline) nor purge stored updates (agent.purge).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.cantrip import TripHold
from agent.catalog import Catalog, Policy
from agent.config import POSITION_NAMES, Config, SignalConfig
from agent.locationschema import CAN_STATE_SOURCE, STATE_CHOICES, STATE_SIGNAL, STATES
from agent.policy.canposition import PositionGuard
from agent.policy.privacy import Zone
from agent.sampling import Group, Sampler, SignalState
from agent.spime import SignalDef

log = logging.getLogger(__name__)

CATEGORY = "location"
PRIVATE_CATEGORIES = frozenset({"location", "coarse_location"})
_FIX, _IN_ZONE = STATES.index("fix"), STATES.index("in privacy zone")

# (bus name, message name, signal name)
Key = tuple[str, str, str]


@dataclass(frozen=True)
class PositionPlan:
    """The selected CAN position: the state signal's id and the ids of every CAN signal of a
    location category (sampled or captured)."""

    state_sid: int
    private: frozenset[int]


def roles(
    cfg: Config,
    candidates: Iterable[tuple[Any, Any, Any, SignalConfig | None]],
    category: Callable[[str, SignalConfig], str | None],
    problems: list[str],
) -> dict[Key, str]:
    """``latitude``/``longitude`` of the candidate signals (bus config, message, cantools
    signal, the ``[[signal]]`` entry that matched) that form the position; problems appended."""
    src = str(cfg.source or "config")
    index = {id(e): i for i, e in enumerate(cfg.signal)}
    found: dict[str, list[tuple[str, Key]]] = {"latitude": [], "longitude": []}
    for bus, msg, sig, entry in candidates:
        if entry is None:
            continue
        vss = POSITION_NAMES.get(entry.name or "")
        where = f"signal[{index[id(entry)]}]"
        qualified = f"{msg.name}.{sig.name}"
        if entry.location is not None and vss is not None and entry.location != vss:
            problems.append(
                f"{src}: {where}.location: {entry.location!r}, but its name {entry.name!r} is "
                f"the {vss}: fix one of them"
            )
            continue
        role: str
        if entry.location is not None:
            role, field = entry.location, f"{where}.location"
        elif vss is not None:
            role, field = vss, f"{where}.name"
        else:
            # Under a collection plan: the role the base config gives this signal.
            base = next((e for e in cfg.base_positions if e.matches(bus.name, qualified)), None)
            if base is None:
                continue
            role = base.location or POSITION_NAMES[base.name or ""]
            field = f"{where}.match ({qualified}, a {role} in the base config)"
        cat = category(qualified, entry)
        if cat != CATEGORY and (cat is not None or cfg.consent is not None):
            problems.append(
                f"{src}: {field}: {qualified} is a {role} but of category {cat or 'none'}: a "
                'position signal needs consent = "location"'
            )
        found[role].append((field, (bus.name, msg.name, sig.name)))
    for role, other in (("latitude", "longitude"), ("longitude", "latitude")):
        hits = found[role]
        if len(hits) > 1:
            listed = ", ".join(f"{f} ({k[0]}: {k[1]}.{k[2]})" for f, k in hits)
            problems.append(
                f"{src}: two signals are the {role}: {listed}; one position pair per config "
                "(give `bus` where the match is on several buses)"
            )
        if hits and not found[other]:
            problems.append(
                f"{src}: {hits[0][0]}: a {role} without a {other}: mark the {other} signal "
                f'with location = "{other}"'
            )
    return {k: role for role, hits in found.items() for _, k in hits}


def describe(cfg: Config, catalog: Catalog) -> str | None:
    """One line on the CAN position and the zones it is held to (check, activate), or None."""
    plan = catalog.position
    if plan is None:
        return None
    coords = {s.position: f"{s.bus}:{s.message}.{s.signal}" for s in catalog.selected}
    coarse = any(s.coarse for s in catalog.selected if s.position)
    grid = f" (coarse, {cfg.consent.coarse_grid:g}-degree grid)" if coarse and cfg.consent else ""
    zones = ", ".join(f"{z.name} {z.radius:g} m" for z in cfg.privacy.zones) or "none"
    radius = cfg.privacy.trip_end_radius
    trips = f"; trip ends withheld within {radius:g} m" if radius > 0 else ""
    return (
        f"can position {coords['latitude']} / {coords['longitude']}{grid}: "
        f"{len(plan.private)} location signals withheld inside privacy zones: {zones}{trips}"
    )


def state_definition(sid: int) -> SignalDef:
    """``Vehicle.CurrentLocation.State`` of the CAN position when no receiver provides it."""
    return SignalDef(
        id=sid,
        name=STATE_SIGNAL,
        choices=STATE_CHOICES,
        priority="event",
        source=CAN_STATE_SOURCE,
        category=CATEGORY,
    )


class PlanLike(Protocol):
    """What ``CanPositions`` touches of the pipeline's per-message state."""

    last: bytes | None
    values: dict[str, Any]
    # (signal, is latitude, scale, offset) of the coordinates the message carries.
    position: tuple[tuple[str, bool, float, float], ...]
    # Names of the message's signals of a location category.
    private: frozenset[str]


# A frame's location values waiting for a position at least as new as they are.
Waiting = tuple[PlanLike, list[tuple[str, Any]], int]
MAX_WAITING = 4096


class CanPositions:
    """The CAN position against the zones in force, across reloads (see the module
    docstring). Lives in the pipeline's thread."""

    def __init__(self) -> None:
        self.guard = PositionGuard()
        self.trip = TripHold()
        self.withheld = 0  # frames whose location values were dropped for a zone
        self.overflow = 0  # frames whose location values waited beyond MAX_WAITING
        self.plan: PositionPlan | None = None
        # Location values judged to pass after they waited, for the pipeline to sample.
        self.released: list[Waiting] = []
        self._waiting: deque[Waiting] = deque()
        self._plans: list[PlanLike] = []
        self._states: list[SignalState] = []  # the CAN location signals' sampler states
        self._state: SignalState | None = None  # our own state signal (no [gnss])
        self._all: list[SignalState] = []

    def load(
        self,
        plan: PositionPlan | None,
        zones: tuple[Zone, ...],
        plans: Sequence[PlanLike],
        states: list[SignalState],
        own_state: bool,
        trip_end_radius: float = 0.0,
        trip_gap: float | None = None,
    ) -> None:
        """A new selection: its messages with location signals, its sampler states (``states``:
        every state of the pipeline; the state signal's is added when ``own_state``), the trip
        ends' radius and the silence of the pair that ends a trip (None: the lifecycle's park
        does). Values still waiting belong to the old selection: dropped."""
        self.plan = plan
        self._plans = [p for p in plans if p.private]
        self._all = states
        self._states = []
        self._state = None
        self._waiting.clear()
        self.released = []
        self.trip.configure(zones, trip_end_radius, trip_gap)
        if plan is None:
            # Its frames are no longer decoded: where the car was is no longer known.
            self.guard.forget()
            self.trip.end("no CAN position selected")
            self.trip.take()
            return
        self._states = [s for s in states if s.sid in plan.private]
        if own_state:
            self._state = SignalState(plan.state_sid, Policy(event=True), 1, Group())
            states.append(self._state)
        self.guard.set_zones(zones)

    def zones_change(self, zones: tuple[Zone, ...]) -> bool:
        """Whether ``zones`` differ from those in force (the caller then drops what was held
        under the old ones: ``drop_held``)."""
        return self.plan is not None and zones != self.guard.zones

    def drop_held(self) -> None:
        for st in self._states:
            st.pending = None
            st.cur = None

    def filter(
        self,
        plan: PlanLike,
        values: dict[str, Any],
        changed: Any,
        t_ms: int,
        now: float,
        sampler: Sampler,
    ) -> Any:
        """The changed values of one frame that may be sampled now (``changed`` itself when
        it has no location value); values that wait for the next position are kept here, and
        those an arriving position lets pass are put in ``released``."""
        guard = self.guard
        private = plan.private
        trip = self.trip if self.trip.active else None
        if plan.position:
            if trip is not None:
                trip.heard(now)
            lat = lon = None
            for name, is_lat, scale, offset in plan.position:
                raw = values.get(name)
                if raw is not None:
                    if is_lat:
                        lat = raw * scale + offset
                    else:
                        lon = raw * scale + offset
            if guard.place(lat, lon, t_ms):
                self._crossed(t_ms, now, sampler)
                if guard.outside:
                    # This message's location values, all of them again.
                    changed = [
                        *(item for item in values.items() if item[0] in private),
                        *(item for item in changed if item[0] not in private),
                    ]
            if trip is not None:
                if guard.lat is not None and guard.lon is not None:
                    trip.move(guard.lat, guard.lon, t_ms)
                if trip.released:
                    self.released.extend(trip.take())
            if self._waiting:
                self._release()
        mine = [item for item in changed if item[0] in private]
        if not mine:
            return changed
        rest = [item for item in changed if item[0] not in private]
        if guard.inside:
            self.withheld += 1
            return rest
        if guard.ready(t_ms):
            if guard.outside:
                if trip is None:
                    return changed
                trip.add((plan, mine, t_ms))
                return rest
            self.withheld += 1
            return rest
        if len(self._waiting) >= MAX_WAITING:
            self._waiting.popleft()
            self.overflow += 1
        self._waiting.append((plan, mine, t_ms))
        return rest

    def confirm(self, plan: PlanLike, t_ms: int, now: float) -> None:
        """A frame of a position message at ``t_ms`` whose payload repeated the previous one:
        the coordinates still hold then (a car standing still); what waited for them may go."""
        if self.trip.active:
            self.trip.heard(now)
            if self.trip.released:
                self.released.extend(self.trip.take())
        lat = lon = False
        for name, is_lat, _, _ in plan.position:
            if name in plan.values:
                lat, lon = lat or is_lat, lon or not is_lat
        self.guard.confirm(lat, lon, t_ms)
        if self._waiting:
            self._release()

    def _release(self) -> None:
        """Judge the waiting values the position now in force is new enough for."""
        guard = self.guard
        keep: deque[Waiting] = deque()
        for waiting in self._waiting:
            if not guard.ready(waiting[2]):
                keep.append(waiting)
            elif not guard.outside:
                self.withheld += 1
            elif self.trip.active:
                self.trip.add(waiting)
            else:
                self.released.append(waiting)
        self._waiting = keep

    def end_trip(self, why: str) -> None:
        """The trip ended (park, wake, end of input): values held near its end are dropped;
        those its last position lets out are ``released``."""
        self.trip.end(why)
        self.released.extend(self.trip.take())

    def tick(self, now: float) -> None:
        """Without ``[power]``: the pair silent for ``trip_gap`` ends the trip."""
        if self.trip.active:
            self.trip.tick(now)
            if self.trip.released:
                self.released.extend(self.trip.take())

    def _crossed(self, t_ms: int, now: float, sampler: Sampler) -> None:
        if self.guard.inside:
            log.info("CAN position: in privacy zone: location values withheld")
            # Nothing of a place the car left for a zone is repeated (heartbeat, snapshot).
            for st in self._states:
                st.cur = None
        else:
            log.info("CAN position: outside the privacy zones: location values sent")
            for p in self._plans:
                # Their next frame offers every location value again, changed or not.
                p.last = None
                p.values = {}
        self.report(t_ms, now, sampler)

    def report(self, t_ms: int, now: float, sampler: Sampler) -> None:
        """The state at ``t_ms`` as an event sample (nothing while the position is unknown)."""
        if self.plan is None or self.guard.inside is None:
            return
        code = _IN_ZONE if self.guard.inside else _FIX
        st = self._state
        if st is None:
            # The receiver's state signal: its sampler state is the location input's.
            st = next((s for s in self._all if s.sid == self.plan.state_sid), None)
        if st is None:
            sampler.out.append((t_ms, self.plan.state_sid, code))
            sampler.event = True
            return
        st.group.last_t = max(st.group.last_t, t_ms)
        sampler.offer(st, code, t_ms, now)

    def status(self) -> dict[str, Any] | None:
        if self.plan is None:
            return None
        state = {None: "unknown", True: "in privacy zone", False: "fix"}[self.guard.inside]
        return {
            "state": state,
            "withheld_frames": self.withheld,
            "waiting": len(self._waiting),
            "overflow": self.overflow,
            "trip": self.trip.status(),
        }
