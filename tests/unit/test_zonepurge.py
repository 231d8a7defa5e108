"""Which stored location samples a privacy zone added later takes back (agent.policy.zonepurge)."""

from __future__ import annotations

import pytest

from agent.locationschema import STATES, add_location
from agent.policy.privacy import Zone
from agent.policy.zonepurge import OutsideZones
from agent.spime import Header, Sample, Schema, SignalDef

M_LAT = 111_195.0
LAT0, LON0 = 48.0, 11.0
HOME = Zone("home", LAT0, LON0, 300.0)
IN_ZONE, FIX = STATES.index("in privacy zone"), STATES.index("fix")


def schema(consent: str = "exact") -> Schema:
    defs = [
        SignalDef(id=0, name="Speed.Value", category="driving"),
        SignalDef(id=1, name="CanGps.Lat", scale=1e-7, category="location"),
    ]
    add_location(defs, consent, 0.01, "test")
    return Schema.build(defs)


S = schema()
SID = {s.source or s.name: s.id for s in S.signals}
LAT, LON, ALT, STATE = SID["gnss:lat"], SID["gnss:lon"], SID["gnss:altitude"], SID["gnss:state"]
SPEED, CAN_LAT = SID["Speed.Value"], SID["CanGps.Lat"]


def head(seq: int, schema_id: str = S.id) -> Header:
    return Header(1, False, False, schema_id, "0123456789abcdef", seq, "VIN")


def north(metres: float) -> int:
    """The raw latitude (1e-7 degree) ``metres`` north of the zone's centre."""
    return round((LAT0 + metres / M_LAT) / 1e-7)


LON_RAW = round(LON0 / 1e-7)


def fix(t: int, metres: float, *, lon: bool = True) -> list[Sample]:
    out: list[Sample] = [(t, LAT, north(metres))]
    if lon:
        out.append((t, LON, LON_RAW))
    return [*out, (t, ALT, 5200)]


def test_a_fix_inside_goes_with_all_its_fields_and_the_twin_sees_the_zone() -> None:
    keep = OutsideZones((HOME,), 0.01)
    samples = [*fix(1000, -800), (1500, SPEED, 50), *fix(2000, 100), *fix(3000, 800)]
    assert keep(S, head(1), samples) == [
        *fix(1000, -800),
        (1500, SPEED, 50),
        (2000, STATE, IN_ZONE),
        (3000, STATE, FIX),
        *fix(3000, 800),
    ]
    assert keep.dropped == 3


def test_a_coordinate_not_sent_again_is_the_one_sent_before_in_the_update() -> None:
    keep = OutsideZones((HOME,), 0.01)
    # Driving due north: the longitude did not change, so only the first fix carries it.
    samples = [*fix(1000, -800), *fix(2000, 0, lon=False), *fix(3000, 900, lon=False)]
    out = keep(S, head(1), samples)
    assert [s for s in out if s[0] == 2000] == [(2000, STATE, IN_ZONE)]
    assert [s for s in out if s[0] == 3000] == [(3000, STATE, FIX), *fix(3000, 900, lon=False)]


def test_a_fix_whose_position_is_not_known_is_dropped_without_a_state() -> None:
    keep = OutsideZones((HOME,), 0.01)
    # Parked far away: only the altitude changed, the position was sent in an update that is
    # no longer stored (seq 4 is not seen).
    samples: list[Sample] = [(1000, ALT, 5210), (1000, SPEED, 0), *fix(2000, 5000)]
    assert keep(S, head(5), samples) == [(1000, SPEED, 0), *fix(2000, 5000)]


@pytest.mark.parametrize(("metres", "kept"), [(5000, True), (0, False)])
def test_an_update_starts_where_the_one_before_it_ended(metres: float, kept: bool) -> None:
    keep = OutsideZones((HOME,), 0.01)
    # The update closed between the latitude and the longitude of one fix.
    whole = fix(1000, metres)
    keep(S, head(1), whole[:1])
    out = keep(S, head(2), whole[1:])
    assert (out == whole[1:]) is kept


def test_can_positions_stay_only_beside_a_gnss_position_outside_every_zone() -> None:
    keep = OutsideZones((HOME,), 0.01)
    samples = [
        (500, CAN_LAT, north(5000)),  # no GNSS position at this time stamp: dropped
        *fix(1000, 5000),
        (1000, CAN_LAT, north(5000)),
        *fix(2000, 0),
        (2000, CAN_LAT, north(0)),
    ]
    out = keep(S, head(1), samples)
    assert [s for s in out if s[1] == CAN_LAT] == [(1000, CAN_LAT, north(5000))]


def test_the_receivers_own_state_supersedes_the_one_added() -> None:
    keep = OutsideZones((HOME,), 0.01)
    first = keep(S, head(1), fix(1000, 0))
    assert first == [(1000, STATE, IN_ZONE)]
    # The next update: the owed "fix" comes with the first position kept...
    assert keep(S, head(2), fix(2000, 900)) == [(2000, STATE, FIX), *fix(2000, 900)]
    # ...unless the receiver said something itself in between.
    keep(S, head(3), fix(3000, 0))
    down = (3500, STATE, STATES.index("gnss down"))
    assert keep(S, head(4), [down, *fix(4000, 900)]) == [down, *fix(4000, 900)]


@pytest.mark.parametrize(("metres", "dropped"), [(0, True), (900, True), (1100, False)])
def test_a_coarse_point_goes_when_its_grid_cell_could_touch_a_zone(
    metres: float, dropped: bool
) -> None:
    coarse = schema("coarse")
    sid = {s.source: s.id for s in coarse.signals}
    keep = OutsideZones((HOME,), 0.01)
    # 900 m north lies outside the 300 m zone, but the corners of a 0.01-degree cell around it
    # lie 669 m away (556 m north, 372 m east at 48 degrees): the exact fix may have been inside.
    lat, lon = sid["gnss:lat"], sid["gnss:lon"]
    samples: list[Sample] = [(1000, lat, north(metres)), (1000, lon, LON_RAW)]
    out = keep(coarse, head(1, coarse.id), samples)
    assert (out == samples) is not dropped


def test_updates_without_location_signals_are_left_alone() -> None:
    plain = Schema.build([SignalDef(id=0, name="Speed.Value", category="driving")])
    samples: list[Sample] = [(1, 0, 3), (2, 0, 4)]
    assert OutsideZones((HOME,), 0.01)(plain, head(1, plain.id), samples) is samples
