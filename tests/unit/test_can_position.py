"""The CAN position: which signals form it (config errors named by field), where it lies against
the zones, and what is dropped when zones change (held values, the triggers' history)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.canposition import CanPositions, PositionPlan
from agent.cantrip import TripHold
from agent.catalog import Policy, build_catalog
from agent.config import PlanModel, merge_plan
from agent.errors import ConfigError
from agent.locationschema import CAN_STATE_SOURCE, STATE_SIGNAL
from agent.policy.canposition import PositionGuard
from agent.policy.expr import parse
from agent.policy.privacy import Zone
from agent.policy.trigger import TriggerEngine, TriggerSpec
from agent.sampling import Group, Sampler, SignalState
from tests.support.agentrun import cli, load_text
from tests.support.data import HEALTH_POS_DBC

# The reload tests' vehicle, its position message given a longitude, and a navigation message.
DBC = (
    HEALTH_POS_DBC
    + """ SG_ Lon : 32|32@1- (1E-007,0) [-180|180] "deg" Vector__XXX
BO_ 258 Nav: 4 ECU
 SG_ Heading : 0|16@1+ (0.01,0) [0|655.35] "deg" Vector__XXX
 SG_ Lat2 : 16|16@1- (0.01,0) [-90|90] "deg" Vector__XXX
"""
)

BASE = """
[vehicle]
vin = "WVWZZZ1JZXW000001"

[[bus]]
name = "car"
interface = "virtual"
channel = "x"
dbc = ["car.dbc"]

[consent]
granted = ["location", "vehicle_health"]
rules = [{ match = "Pos.*", category = "location" }, { match = "Nav.*", category = "location" }]
default_category = "vehicle_health"
"""

PAIR = """
[[signal]]
match = "Pos.Lat"
location = "latitude"

[[signal]]
match = "Pos.Lon"
location = "longitude"

[[signal]]
match = "*"
"""


def _catalog(tmp_path: Path, text: str, base: str = BASE) -> object:
    (tmp_path / "car.dbc").write_text(DBC)
    return build_catalog(load_text(tmp_path, base + text))


def _problems(tmp_path: Path, text: str, base: str = BASE) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        _catalog(tmp_path, text, base)
    return list(exc.value.problems)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '[[signal]]\nmatch = "Pos.Lat"\nlocation = "latitude"\n',
            "signal[0].location: a latitude without a longitude: mark the longitude signal with "
            'location = "longitude"',
        ),
        (
            PAIR.replace(
                '[[signal]]\nmatch = "*"', '[[signal]]\nmatch = "Nav.Lat2"\nlocation = "latitude"'
            ),
            "agent.toml: two signals are the latitude: signal[0].location (car: Pos.Lat), "
            "signal[2].location (car: Nav.Lat2)",
        ),
        (
            PAIR.replace('location = "longitude"', 'location = "longitude"\nconsent = "driving"'),
            "signal[1].location: Pos.Lon is a longitude but of category driving: a position "
            'signal needs consent = "location"',
        ),
        (
            PAIR.replace(
                'location = "latitude"',
                'name = "Vehicle.CurrentLocation.Longitude"\nlocation = "latitude"',
            ),
            "signal[0].location: 'latitude', but its name 'Vehicle.CurrentLocation.Longitude' "
            "is the longitude",
        ),
    ],
)
def test_a_position_that_does_not_add_up_is_refused_by_field(
    tmp_path: Path, text: str, words: str
) -> None:
    problems = _problems(tmp_path, text)
    assert any(words in p for p in problems), problems


def test_location_is_for_one_signal(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signal\[0\].*location is given to a match that names"):
        _catalog(tmp_path, '[[signal]]\nmatch = "Pos.*"\nlocation = "latitude"\n')


def test_the_vss_names_make_a_pair_with_a_state_signal_of_its_own(tmp_path: Path) -> None:
    text = PAIR.replace('location = "latitude"', 'name = "Vehicle.CurrentLocation.Latitude"')
    text = text.replace('location = "longitude"', 'name = "Vehicle.CurrentLocation.Longitude"')
    catalog = _catalog(tmp_path, text)
    pos = catalog.position  # type: ignore[attr-defined]
    schema = catalog.schema  # type: ignore[attr-defined]
    assert isinstance(pos, PositionPlan)
    state = schema.by_id[pos.state_sid]
    assert (state.name, state.source, state.category) == (
        STATE_SIGNAL,
        CAN_STATE_SOURCE,
        "location",
    )
    assert state.choices[3] == "in privacy zone"
    roles = {s.wire: s.position for s in catalog.selected}  # type: ignore[attr-defined]
    assert roles["Vehicle.CurrentLocation.Latitude"] == "latitude"
    assert roles["Vehicle.CurrentLocation.Longitude"] == "longitude"
    private = {schema.by_id[sid].name for sid in pos.private}
    assert private == {
        "Vehicle.CurrentLocation.Latitude",
        "Vehicle.CurrentLocation.Longitude",
        "Nav.Heading",
        "Nav.Lat2",
    }


def test_with_a_receiver_the_pair_shares_its_state_signal(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, PAIR + '\n[gnss]\nport = "/dev/ttyUSB1"\n')
    assert catalog.position.state_sid == catalog.location.state_sid  # type: ignore[attr-defined]


def test_without_location_consent_there_is_no_pair(tmp_path: Path) -> None:
    base = BASE.replace('granted = ["location", "vehicle_health"]', 'granted = ["vehicle_health"]')
    catalog = _catalog(tmp_path, PAIR, base)
    assert catalog.position is None  # type: ignore[attr-defined]
    assert STATE_SIGNAL not in {s.name for s in catalog.schema.signals}  # type: ignore[attr-defined]


def test_check_names_the_field_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    p = tmp_path / "agent.toml"
    p.write_text(BASE + '[[signal]]\nmatch = "Pos.Lon"\nlocation = "longitude"\n')
    r = cli("check", "--config", str(p))
    assert r.returncode == 2, r.stdout
    assert "signal[0].location: a longitude without a latitude" in r.stderr


HOME = Zone("home", 52.5, 13.4, 300.0)
LAT_NAME = "Vehicle.CurrentLocation.Latitude"


@pytest.mark.parametrize(
    ("steps", "inside"),
    [
        ([(52.5, None)], None),  # one coordinate: not placed yet
        ([(52.5, 13.4)], True),
        ([(52.5, 13.5)], False),
        ([(52.5, 13.5), (None, 13.4)], True),  # the other coordinate from an earlier frame
        ([(52.5, 13.4), (float("nan"), None)], None),  # no number: the position is unknown
        ([(52.5026, 13.4)], True),  # 289 m north
        ([(52.5027, 13.4)], False),  # 300.2 m north
    ],
)
def test_the_guard_places_the_latest_pair(
    steps: list[tuple[float | None, float | None]], inside: bool | None
) -> None:
    guard = PositionGuard(zones=(HOME,))
    for t, (lat, lon) in enumerate(steps):
        guard.place(lat, lon, t)
    assert guard.inside is inside
    assert guard.outside is (inside is False)


def test_a_zone_that_comes_moves_the_car_in_and_one_that_goes_out() -> None:
    guard = PositionGuard()
    assert guard.place(52.5, 13.4, 0) is True and guard.outside
    assert guard.set_zones((HOME,)) is True and guard.inside
    assert guard.set_zones((HOME,)) is False
    assert guard.set_zones(()) is True and guard.outside


def test_a_value_is_judged_when_the_position_is_as_new_as_it() -> None:
    guard = PositionGuard(zones=(HOME,))
    guard.place(52.5, 13.5, 100)
    assert guard.outside and guard.ready(100) and not guard.ready(101)
    guard.place(52.5, None, 200)  # a latitude alone: its longitude is older
    assert not guard.ready(200)
    assert guard.place(None, 13.4, 201) is True  # the pair now lies in the zone
    assert guard.ready(200) and guard.inside


def test_values_held_under_old_zones_are_dropped() -> None:
    sampler = Sampler()
    group = Group()
    held = SignalState(7, Policy(min_interval=10.0), 1e-7, group)
    positions = CanPositions()
    plan = PositionPlan(state_sid=9, private=frozenset({7}))
    positions.load(plan, (), [], [held], own_state=True)
    sampler.offer(held, 525000000, 1000, 0.0)
    sampler.offer(held, 525000300, 1100, 1.0)  # held: within min_interval
    assert held.pending == 525000300
    assert positions.zones_change((HOME,))
    positions.drop_held()
    sampler.flush_held(2.0)
    sampler.tick(20.0)
    samples, _ = sampler.take()
    assert samples == [(1000, 7, 525000000)]  # the first, sent before; nothing held comes out
    assert Sampler.snapshot([held]) == []


def test_a_trigger_forgets_what_it_recorded_of_the_signals_named() -> None:
    spec = TriggerSpec("t", parse("x > 1"), before=10.0, after=10.0, capture=(1, 2))
    engine = TriggerEngine([spec], ["x"])
    engine.record(1, 1000, 525000000)
    engine.record(2, 1000, 42)
    engine.set_value(0, 5)
    engine.evaluate(1000, 0.0)
    engine.record(1, 1100, 525000300)
    engine.forget(frozenset({1}))
    engine.record(2, 1200, 43)
    (capture,) = engine.close_all()
    assert [s[1] for s in capture.samples] == [2, 2]
    engine.set_value(0, 0)
    engine.evaluate(2000, 30.0)
    engine.set_value(0, 5)
    engine.evaluate(2100, 31.0)
    (capture,) = engine.close_all()
    assert {s[1] for s in capture.samples} == {2}  # the ring of signal 1 is empty too


def test_check_describes_the_pair_and_the_zones(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    p = tmp_path / "agent.toml"
    zones = '\n[privacy]\nzones = [{ name = "home", lat = 52.5, lon = 13.4, radius = 300.0 }]\n'
    p.write_text(BASE + zones + PAIR)
    r = cli("check", "--config", str(p))
    assert r.returncode == 0, r.stderr
    line = "can position car:Pos.Lat / car:Pos.Lon: 4 location signals withheld inside privacy"
    assert f"{line} zones: home 300 m" in r.stdout


def test_a_plan_keeps_the_roles_of_the_position_it_selects(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    base = load_text(tmp_path, BASE + PAIR.replace('location = "latitude"', f'name = "{LAT_NAME}"'))
    glob = PlanModel(id="a", version=1, signal=[{"match": "Pos.*", "min_interval": 5.0}])
    catalog = build_catalog(merge_plan(base, glob))
    assert {s.wire: s.position for s in catalog.selected} == {
        "Pos.Lat": "latitude",
        "Pos.Lon": "longitude",
    }
    assert catalog.position is not None
    assert all(s.policy.min_interval == 5.0 for s in catalog.selected)
    # A plan that names the signal itself keeps its own name; the role is the base's.
    own = PlanModel(
        id="b", version=1, signal=[{"match": "Pos.Lat", "name": "lat"}, {"match": "Pos.Lon"}]
    )
    roles = {s.wire: s.position for s in build_catalog(merge_plan(base, own)).selected}
    assert roles == {"lat": "latitude", "Pos.Lon": "longitude"}
    # Without the position, there is none; half of it is refused.
    other = PlanModel(id="c", version=1, signal=[{"match": "Health.*"}])
    assert build_catalog(merge_plan(base, other)).position is None
    half = PlanModel(id="d", version=1, signal=[{"match": "Pos.Lat"}])
    with pytest.raises(ConfigError, match=r"signal\[0\]\.match \(Pos\.Lat, a latitude in the base"):
        build_catalog(merge_plan(base, half))


def _line(i: int) -> tuple[float, float]:
    """Step ``i`` of a drive north: about 111 m per step."""
    return 52.0 + i * 0.001, 13.4


def test_a_trip_holds_its_start_and_its_end_and_lets_the_middle_go_with_its_times() -> None:
    trip = TripHold()
    trip.configure((), 500.0, None)
    for i in range(30):
        trip.move(*_line(i), 1000 * i)
        trip.add(("plan", [("lat", i)], 1000 * i + 1))
    out = trip.take()
    # Steps within 500 m of the start are dropped; those since wait for the car to be 500 m on
    # (a position is judged when the next one comes: step 29 is still in force).
    assert [f[2] for f in out] == [1000 * i + 1 for i in range(5, 24)]
    assert trip.status()["trip_start"] == 5
    trip.end("parked")
    assert [f[2] for f in trip.take()] == [24001] and trip.held == 0
    assert trip.status()["trip_end"] == 5 and trip.status()["trips"] == 1


def test_a_red_light_releases_what_waited_there_once_the_car_drives_on() -> None:
    trip = TripHold()
    trip.configure((), 500.0, None)
    for i in range(10):
        trip.move(*_line(i), 1000 * i)
    for k in range(50):  # the car stands at step 9: the same position, other values change
        trip.move(*_line(9), 10_000 + 1000 * k)
        trip.add(("plan", [("heading", k)], 10_000 + 1000 * k))
    assert trip.take() == [] and trip.held == 50
    for i in range(10, 16):
        trip.move(*_line(i), 60_000 + 1000 * i)
    assert [f[1] for f in trip.take()] == [[("heading", k)] for k in range(50)]
    assert trip.held == 0


def test_a_value_whose_position_before_was_the_trips_start_is_dropped() -> None:
    trip = TripHold()
    trip.configure((), 500.0, None)
    trip.move(*_line(0), 0)
    trip.move(*_line(4), 4000)  # 444 m: the start
    trip.move(*_line(6), 6000)
    trip.add(("plan", [("heading", 1)], 5000))  # came while step 4 was in force
    trip.add(("plan", [("heading", 2)], 6000))
    for i in range(7, 20):
        trip.move(*_line(i), 1000 * i)
    assert [f[2] for f in trip.take()] == [6000]
    assert trip.status()["trip_start"] == 1


def test_a_silent_pair_ends_the_trip_and_held_values_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("agent.cantrip.MAX_HELD", 16)
    trip = TripHold()
    trip.configure((HOME,), 500.0, 300.0)
    trip.heard(0.0)
    for i in range(20):
        trip.move(*_line(i), 1000 * i)
    for k in range(40):
        trip.add(("plan", [("heading", k)], 20_000 + k))
    assert trip.held <= 16 and trip.status()["overflow"] == 40 - trip.held
    trip.tick(299.0)
    assert trip.status()["trips"] == 0
    trip.tick(300.0)
    assert trip.status()["trips"] == 1 and trip.held == 0
    # A reload drops what waits, not the trip.
    trip.move(*_line(40), 100_000)
    trip.add(("plan", [("heading", 1)], 100_000))
    trip.configure((HOME,), 500.0, 300.0)
    assert trip.held == 0 and trip.status()["reload"] == 1
