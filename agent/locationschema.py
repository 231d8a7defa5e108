"""GNSS fixes as schema signals: names, scales, consent, and a fix's raw values.

A fix becomes ordinary samples of the spime schema (source ``gnss``, consent category
``location``): integer signals with scales chosen so the values a receiver gives survive exactly
(latitude and longitude in 1e-7 degree, about 1 cm) and the wire format's per-update deltas keep
them small. ``Vehicle.CurrentLocation.State`` is an event signal with a value table: ``fix``,
``no fix``, ``gnss down``, ``in privacy zone``, ``paused`` (not read while the car is parked,
``[power]``), so the twin learns why positions stopped.

Consent: ``location`` puts every signal in the schema; ``coarse_location`` only latitude,
longitude (snapped to the ``coarse_grid`` by the sampler) and the state; neither, none of them
(and the receiver is not opened). Pure: no I/O. It does not read receivers (agent.sources) nor
sample (agent.gnss_wiring).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError
from agent.policy.geo import Fix
from agent.spime import SignalDef

CATEGORY = "location"
SOURCE = "gnss"
STATE_SIGNAL = "Vehicle.CurrentLocation.State"
# The source of STATE_SIGNAL when a CAN position has it without a receiver (agent.canposition).
CAN_STATE_SOURCE = "can:state"
# Codes are wire values: new states are appended.
STATES = ("fix", "no fix", "gnss down", "in privacy zone", "paused")
STATE_CHOICES = dict(enumerate(STATES))
QUALITY_CHOICES = {
    0: "invalid",
    1: "gps",
    2: "dgps",
    3: "pps",
    4: "rtk fixed",
    5: "rtk float",
    6: "estimated",
    7: "manual",
    8: "simulation",
}


@dataclass(frozen=True)
class Field:
    """One value of a fix as a schema signal: raw = round(value / scale)."""

    key: str  # attribute of agent.policy.geo.Fix
    name: str
    scale: float
    unit: str
    coarse: bool  # sent (snapped) with coarse_location only
    wrap: int = 0  # raw values modulo this (heading: 360.0 degrees is 0)


FIELDS = (
    Field("lat", "Vehicle.CurrentLocation.Latitude", 1e-7, "deg", True),
    Field("lon", "Vehicle.CurrentLocation.Longitude", 1e-7, "deg", True),
    Field("altitude", "Vehicle.CurrentLocation.Altitude", 0.1, "m", False),
    Field("heading", "Vehicle.CurrentLocation.Heading", 0.1, "deg", False, wrap=3600),
    Field("accuracy", "Vehicle.CurrentLocation.HorizontalAccuracy", 0.1, "m", False),
    Field("speed", "Vehicle.CurrentLocation.Speed", 0.1, "km/h", False),
    Field("quality", "Vehicle.CurrentLocation.GNSSReceiver.FixQuality", 1, "", False),
)


@dataclass(frozen=True)
class LocationPlan:
    """The location signals in a schema: (field, schema id) of each value sent, the state's id,
    and whether positions are snapped to ``grid`` degrees (coarse_location only)."""

    fields: tuple[tuple[Field, int], ...]
    state_sid: int
    coarse: bool
    grid: float


def raw_values(plan: LocationPlan, fix: Fix) -> list[tuple[Field, int, int]]:
    """(field, schema id, raw value) of the values a fix has, in schema order."""
    out = []
    for f, sid in plan.fields:
        value = getattr(fix, f.key)
        if value is None:
            continue
        raw = round(value / f.scale)
        if f.wrap:
            raw %= f.wrap
        out.append((f, sid, raw))
    return out


def add_location(
    defs: list[SignalDef],
    consent: str | None,
    grid: float,
    src: str,
) -> LocationPlan | None:
    """Appends the location signals to ``defs`` (ids follow on) for ``consent`` ("exact",
    "coarse" or None: nothing); raises ConfigError when a name is taken by another signal."""
    if consent is None:
        return None
    coarse = consent == "coarse"
    taken = {d.name for d in defs}
    chosen = [f for f in FIELDS if f.coarse or not coarse]
    clash = [n for n in (*(f.name for f in chosen), STATE_SIGNAL) if n in taken]
    if clash:
        raise ConfigError(
            f"{src}: {', '.join(clash)}: the name of a GNSS signal is given to another signal "
            "([[signal]] name): choose another name"
        )
    pairs = []
    for f in chosen:
        sid = len(defs)
        scale: int | float = 1 if f.scale == 1 else f.scale
        choices = QUALITY_CHOICES if f.key == "quality" else {}
        defs.append(
            SignalDef(
                id=sid,
                name=f.name,
                scale=scale,
                unit=f.unit,
                choices=choices,
                source=f"{SOURCE}:{f.key}",
                category=CATEGORY,
            )
        )
        pairs.append((f, sid))
    state_sid = len(defs)
    defs.append(
        SignalDef(
            id=state_sid,
            name=STATE_SIGNAL,
            choices=STATE_CHOICES,
            priority="event",
            source=f"{SOURCE}:state",
            category=CATEGORY,
        )
    )
    return LocationPlan(tuple(pairs), state_sid, coarse, grid)
