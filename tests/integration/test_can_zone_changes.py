"""Privacy zones for a CAN position, as `run` wires the agent: frames on python-can's `virtual`
bus, a real mosquitto, the SQLite outbox. A small DBC puts latitude and longitude in one
message and heading and altitude in another (both `location`). The drive crosses a zone of the
config with a trigger firing inside it, heartbeats, a value held by `min_interval` and
snapshots; then zones come while the car stands inside them, by a reloaded config (SIGHUP's
path) and by the signed remote `consent` command. Every published payload and every byte of the
outbox's files (database, write-ahead log, index) is scanned for each position inside a zone
in every encoding it could take (the frame's 32-bit integers, the update's zigzag varint, the
decimal raw and degree texts, also inside compressed bodies), and every update is decoded: no
location sample of a frame inside a zone, and the twin saw `in privacy zone` and `fix`."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import can

from agent.daemon import Agent
from agent.policy.geo import distance_m
from tests.support.agentrun import VIN, zones_toml
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import PREFIX, decode_updates, outbox_payloads
from tests.support.power import DBC as POWER_DBC
from tests.support.power import (
    IGNITION,
    OFF,
    RUN,
    car_bus,
    frame,
    new_channel,
    power_config,
    running,
    state,
)
from tests.support.remotecar import NO_DATA_ACL, Car
from tests.support.wait import wait_for

POS = """BO_ 257 Pos: 8 ECU
 SG_ Lat : 0|32@1- (1E-007,0) [-90|90] "deg" Vector__XXX
 SG_ Lon : 32|32@1- (1E-007,0) [-180|180] "deg" Vector__XXX
"""
DBC = f"""VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Health: 8 ECU
 SG_ Coolant : 0|8@1+ (1,-40) [-40|215] "degC" Vector__XXX
{POS}BO_ 258 Nav: 4 ECU
 SG_ Heading : 0|16@1+ (0.01,0) [0|655.35] "deg" Vector__XXX
 SG_ Altitude : 16|16@1+ (0.1,0) [0|6553.5] "m" Vector__XXX
"""
LAT0, LON0 = 52.5, 13.4
DLAT, DLON = 0.0003, 0.0002  # per frame: about 36 m north-north-east
STEP_MS = 100  # data time between frames
WAIT = 60.0
STATE = "Vehicle.CurrentLocation.State"
LOCATION = {"Pos.Lat", "Vehicle.CurrentLocation.Longitude", "Nav.Heading", "Nav.Altitude"}
Key = tuple[str, int]

SIGNALS = """
[[signal]]
match = "Health.Coolant"

[[signal]]
match = "Pos.Lat"
location = "latitude"

[[signal]]
match = "Pos.Lon"
name = "Vehicle.CurrentLocation.Longitude"
min_interval = 2

[[signal]]
match = "Nav.*"
consent = "location"
max_interval = 0.3

[[trigger]]
name = "hot"
when = "Health.Coolant > 100"
before = 1
after = 30
capture = ["Pos.*", "Nav.*", "Health.*"]
"""


def pos_frame(i: int) -> tuple[int, bytes]:
    """The id and payload of frame ``i``'s position."""
    lat, lon = raw(i)
    return 0x101, lat.to_bytes(4, "little", signed=True) + lon.to_bytes(4, "little", signed=True)


def raw(i: int) -> tuple[int, int]:
    """Latitude and longitude of frame ``i`` as the DBC's raw integers (1e-7 degree)."""
    return round((LAT0 + i * DLAT) * 1e7), round((LON0 + i * DLON) * 1e7)


def degrees(i: int) -> tuple[float, float]:
    lat, lon = raw(i)
    return lat * 1e-7, lon * 1e-7


def zone(name: str, centre: int, radius: float) -> dict[str, Any]:
    lat, lon = degrees(centre)
    return {"name": name, "lat": round(lat, 7), "lon": round(lon, 7), "radius": radius}


def inside(zones: Iterable[dict[str, Any]], i: int) -> bool:
    lat, lon = degrees(i)
    return any(distance_m(z["lat"], z["lon"], lat, lon) <= z["radius"] for z in zones)


class Drive:
    """Sends the drive's frames with their own data times (one position, then heading and
    altitude, then the coolant per step) and waits until the pipeline took them."""

    def __init__(self, car: Car, agent: Agent, hot: tuple[int, ...]) -> None:
        self.bus = can.Bus(
            interface="virtual", channel=car.channel, ignore_config=True, preserve_timestamps=True
        )
        self.agent = agent
        self.hot = hot
        self.base_ms = (int(time.time()) - 3600) * 1000
        self.sent = 0

    def frame_of(self, t: float) -> int:
        """The drive's step of a sample's time (seconds)."""
        return (round(t * 1000) - self.base_ms) // STEP_MS

    def go(self, steps: range) -> None:
        for i in steps:
            t = (self.base_ms + i * STEP_MS) / 1000
            nav = (1000 + i).to_bytes(2, "little") + (2000 + 3 * i).to_bytes(2, "little")
            coolant = 150 if i in self.hot else 130
            for k, (fid, data) in enumerate(
                (
                    pos_frame(i),
                    (0x102, nav),
                    (0x100, bytes([coolant])),
                )
            ):
                self.bus.send(
                    can.Message(
                        arbitration_id=fid, data=data, is_extended_id=False, timestamp=t + k / 1000
                    )
                )
            self.sent += 3
        stats = self.agent.pipeline.stats
        wait_for(lambda: stats.frames >= self.sent, WAIT, "the frames processed")

    def close(self) -> None:
        self.bus.shutdown()


def encodings(i: int) -> list[bytes]:
    """Every form a position of frame ``i`` could take in a stored or published byte string."""
    out = []
    for value, deg in zip(raw(i), degrees(i), strict=True):
        out += [
            value.to_bytes(4, "little", signed=True),
            value.to_bytes(4, "big", signed=True),
            svarint(value),
            str(value).encode(),
            f"{deg:.7f}".rstrip("0").encode(),
        ]
    return out


def svarint(n: int) -> bytes:
    z = (n << 1) if n >= 0 else ((-n) << 1) - 1
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def plain(payload: bytes) -> bytes:
    """The payload with its body inflated when it is compressed (flag bit 1): the header's
    fields as the wire format gives them (README, Update)."""
    if not payload[1] & 0x02:
        return payload
    pos = 18

    def uvarint() -> int:
        nonlocal pos
        n = shift = 0
        while True:
            b = payload[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    uvarint()  # seq
    vin = uvarint()
    pos += vin
    if payload[1] & 0x08:
        name = uvarint()
        pos += name
        uvarint()  # firing time
    return payload[:pos] + zlib.decompress(payload[pos:], -15)


def scan(blobs: Iterable[tuple[str, bytes]], forbidden: list[int]) -> None:
    needles = {n: i for i in forbidden for n in encodings(i)}
    for where, blob in blobs:
        found = [(needles[n], n) for n in needles if n in blob]
        assert not found, (where, found[:5])


def check(
    tmp_path: Path, published: list[bytes], drive: Drive, zones: list[dict[str, Any]], n: int
) -> dict[Key, dict[str, Any]]:
    """Scans and decodes everything published and stored; the decoded updates."""
    db = tmp_path / "outbox.db"
    stored = outbox_payloads(db)
    forbidden = [i for i in range(n) if inside(zones, i)]
    assert forbidden
    files = [(f.name, f.read_bytes()) for f in sorted(tmp_path.glob("outbox.db*")) if f.is_file()]
    assert any(name == "outbox.db-wal" for name, _ in files) or stored == []
    rows = [(f"row {k}", plain(p)) for k, p in enumerate(stored)]
    sent = [(f"published {k}", plain(p)) for k, p in enumerate(published)]
    scan([*files, *rows, *sent], forbidden)
    # The scan would see them: positions outside the zones are found in what was sent.
    allowed = [i for i in range(n) if not inside(zones, i)]
    seen = b"".join(p for _, p in sent)
    assert any(svarint(raw(i)[0]) in seen for i in allowed)
    final = {
        **decode_updates(stored, tmp_path / "outbox.db.schemas"),
        **decode_updates(published, tmp_path / "outbox.db.schemas"),
    }
    for doc in final.values():
        for s in doc["samples"]:
            if s["signal"] in LOCATION:
                i = drive.frame_of(s["t"])
                assert 0 <= i < n and not inside(zones, i), (doc.get("trigger"), s, i)
    return final


def states(final: dict[Key, dict[str, Any]]) -> list[str]:
    """The states the twin saw, in order (snapshots repeat them: left out)."""
    return [
        s["value"]
        for k in sorted(final)
        if not final[k]["snapshot"]
        for s in final[k]["samples"]
        if s["signal"] == STATE
    ]


def _car(
    tmp_path: Path, broker: Mosquitto, zones: list[dict[str, Any]], trip_end_radius: float = 0.0
) -> Car:
    """The car with ``zones``; trip ends withheld within ``trip_end_radius`` (0: not)."""
    car = Car(tmp_path, broker)
    (tmp_path / "car.dbc").write_text(DBC)
    own = car.config.read_text().replace("max_age = 0.05\n", "max_age = 0.3\n")
    privacy = f"\n[privacy]\nzones = [{zones_toml(zones)}]\ntrip_end_radius = {trip_end_radius}\n"
    car.config.write_text(own + privacy + SIGNALS)
    return car


def test_a_drive_through_a_zone_sends_no_position_inside_it(
    tmp_path: Path, broker: Mosquitto
) -> None:
    depot = zone("depot", 20, 200.0)
    car = _car(tmp_path, broker, [depot])
    sub = Subscriber(broker, f"{PREFIX}/{VIN}/data", client_id="sub-data")
    agent = car.start()
    drive = Drive(car, agent, hot=(12, 22))
    try:
        entered = min(i for i in range(60) if inside([depot], i))
        drive.go(range(entered + 3))
        # Inside the zone: heartbeats are due, a snapshot is asked for.
        wait_for(lambda: agent.request_snapshot(WAIT) is not None, WAIT, "a snapshot")
        drive.go(range(entered + 3, 60))
        schemas = tmp_path / "outbox.db.schemas"

        def arrived() -> set[int]:
            got = decode_updates([m.payload for m in sub.messages], schemas)
            return {drive.frame_of(s["t"]) for d in got.values() for s in d["samples"]}

        wait_for(lambda: 59 in arrived(), WAIT, "the last frame's values sent")
        assert agent.status()["can_position"]["state"] == "fix"
        assert agent.status()["can_position"]["withheld_frames"] >= 10
    finally:
        drive.close()
        car.stop()
        sub.close()
    final = check(tmp_path, [m.payload for m in sub.messages], drive, [depot], 60)
    seen = states(final)
    assert seen.count("in privacy zone") == 1 and seen.count("fix") == 2, seen
    captures = [d for d in final.values() if "trigger" in d]
    assert len(captures) == 1  # the second firing falls inside the first one's window
    # It began outside the zone and went on through it: what it holds lies outside.
    names = {s["signal"] for s in captures[0]["samples"]}
    assert {"Pos.Lat", "Nav.Heading", "Health.Coolant"} <= names


def test_a_trip_sends_nothing_near_where_it_starts_and_ends(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """No [power]: the trip ends when the agent stops (the end of its input). What lies
    within 500 m of the first and of the last position is found nowhere; the positions
    between them arrive while the car drives."""
    car = _car(tmp_path, broker, [], trip_end_radius=500.0)
    sub = Subscriber(broker, f"{PREFIX}/{VIN}/data", client_id="sub-data")
    agent = car.start()
    drive = Drive(car, agent, hot=())
    ends = [zone("start", 0, 500.0), zone("end", 59, 500.0)]
    # A position is let out once a later one lies beyond the radius: those near the last
    # but one position wait for the last, judged when the trip ends.
    middle = {i for i in range(60) if not inside([*ends, zone("last", 58, 500.0)], i)}
    try:
        drive.go(range(60))
        schemas = tmp_path / "outbox.db.schemas"

        def arrived() -> set[int]:
            got = decode_updates([m.payload for m in sub.messages], schemas)
            lats = (s for d in got.values() for s in d["samples"] if s["signal"] == "Pos.Lat")
            return {drive.frame_of(s["t"]) for s in lats}

        wait_for(lambda: middle <= arrived(), WAIT, "the positions between the ends")
        trip = agent.status()["can_position"]["trip"]
        assert trip["trip_start"] >= 10 and trip["held"] >= 10, trip
        assert agent.request_snapshot(WAIT) is not None
    finally:
        drive.close()
        car.stop()
        sub.close()
    final = check(tmp_path, [m.payload for m in sub.messages], drive, ends, 60)
    assert len(middle) >= 20
    lats = {
        drive.frame_of(s["t"])
        for d in final.values()
        for s in d["samples"]
        if s["signal"] == "Pos.Lat"
    }
    assert lats == {i for i in range(60) if not inside(ends, i)}


def test_zones_that_come_while_the_car_is_inside_them(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", acl=NO_DATA_ACL)
    broker.start()
    shop, home = zone("shop", 57, 150.0), zone("home", 97, 120.0)
    car = _car(tmp_path, broker, [])
    sub = Subscriber(broker, f"{PREFIX}/{VIN}/data", client_id="sub-data")
    agent = car.start()
    drive = Drive(car, agent, hot=(56,))
    try:
        drive.go(range(60))  # the capture of frame 56 is open, the longitude held
        assert inside([shop], 59)
        base = car.config.read_text()
        car.config.write_text(base.replace("zones = []", f"zones = [{zones_toml([shop])}]"))
        assert agent.reload() is True
        assert agent.status()["can_position"]["state"] == "in privacy zone"
        drive.go(range(60, 98))
        assert inside([home], 97)
        rc, ans, err = car.command("consent", "--add-zone", f"home={home['lat']},{home['lon']},120")
        assert rc == 0 and ans is not None, err
        assert agent.status()["can_position"]["state"] == "in privacy zone"
        assert agent.request_snapshot(WAIT) is not None
        drive.go(range(98, 140))
        agent.outbox.flush()
        stored = {row.payload for row in agent.outbox.iter_rows()}
        broker.acl = NO_DATA_ACL + f"topic readwrite {PREFIX}/{VIN}/data\n"
        broker.reload()
        wait_for(
            lambda: stored <= {m.payload for m in sub.messages}, WAIT, "the stored updates sent"
        )
    finally:
        drive.close()
        car.stop()
        sub.close()
        broker.stop()
    final = check(tmp_path, [m.payload for m in sub.messages], drive, [shop, home], 140)
    seen = states(final)
    assert seen.count("in privacy zone") >= 2 and seen.count("fix") >= 2, seen
    # Positions flow again after the last zone.
    lats = {
        drive.frame_of(s["t"])
        for d in final.values()
        for s in d["samples"]
        if s["signal"] == "Pos.Lat"
    }
    assert {i for i in range(100, 140) if not inside([shop, home], i)} <= lats


def test_the_park_ends_the_trip_of_a_can_position(tmp_path: Path) -> None:
    """With [power] the lifecycle's park ends the trip: what waited near where the car
    stopped is dropped; what the last position let out is sent."""
    channel = new_channel()
    signals = '[[signal]]\nmatch = "Pos.Lat"\nlocation = "latitude"\n'
    signals += '[[signal]]\nmatch = "Pos.Lon"\nlocation = "longitude"\n'
    privacy = "[privacy]\ntrip_end_radius = 500\n"
    cfg = power_config(tmp_path, channel, privacy + IGNITION + signals)
    (tmp_path / "car.dbc").write_text(POWER_DBC + POS)
    ends = [zone("start", 0, 500.0), zone("end", 39, 500.0)]
    with ExitStack() as stack:
        agent, seen = stack.enter_context(running(cfg, dry_run=True))
        car = stack.enter_context(car_bus(channel))
        frame(car, 0x200, RUN)
        wait_for(lambda: state(agent) == "driving", WAIT, "driving")

        def trip() -> dict[str, int]:
            return agent.status()["can_position"]["trip"]  # type: ignore[no-any-return]

        for i in range(40):
            fid, data = pos_frame(i)
            car.send(can.Message(arbitration_id=fid, data=data, is_extended_id=False))
        wait_for(lambda: trip()["held"] >= 10, WAIT, "the trip's end held")
        assert trip()["trips"] == 0
        frame(car, 0x200, OFF)
        wait_for(lambda: trip()["trips"] == 1, WAIT, "the trip ended at the park")
        assert trip()["held"] == 0 and trip()["trip_end"] >= 10
    lats = {round(s["value"] * 1e7) for u in seen for s in u["samples"] if s["signal"] == "Pos.Lat"}
    assert lats == {raw(i)[0] for i in range(40) if not inside(ends, i)}
