"""A privacy zone added while updates wait to be sent takes back the positions inside it.

The agent runs as `run` wires it, with an NMEA receiver on a pseudo-terminal and a real
mosquitto that refuses its updates (an ACL: they wait in the SQLite outbox, while commands
still arrive). A drive is stored; then one zone comes with a reloaded config (SIGHUP's path),
another with the signed remote `consent` command. Once the broker takes updates, every
published update and every row left in the outbox is decoded and scanned: no GNSS sample of a
fix inside a zone; every other sample stored before is there, in the update of the same boot
and seq; the twin got `in privacy zone` where the positions went.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import can

from agent.daemon import Agent
from tests.support.agentrun import VIN, zones_toml
from tests.support.broker import Mosquitto, Subscriber
from tests.support.e2e import PREFIX, Key, decode_updates, outbox_payloads
from tests.support.nmea import epoch, position
from tests.support.privacy import (
    FIXES,
    STATE,
    T0,
    drive_zone,
    inside,
    is_gnss,
    lat_seconds,
)
from tests.support.remotecar import NO_DATA_ACL, Car
from tests.support.wait import wait_for

WAIT = 60.0


# One zone comes with a reloaded config, the other with a remote command (in that order: a
# local edit of the config's zones drops earlier remote zone changes).
LOCAL = drive_zone("depot", 145, 200.0)
REMOTE = drive_zone("home", 190, 150.0)


def _states(docs: dict[Key, dict[str, Any]]) -> list[str]:
    return [s["value"] for k in sorted(docs) for s in docs[k]["samples"] if s["signal"] == STATE]


def _stored(agent: Agent, schemas: Path) -> dict[Key, dict[str, Any]]:
    """Every update the pipeline closed so far (committed first), decoded."""
    agent.outbox.flush()
    return decode_updates([row.payload for row in agent.outbox.iter_rows()], schemas)


def test_zones_added_while_updates_wait_take_back_the_positions_inside_them(
    tmp_path: Path, pty: tuple[int, str]
) -> None:
    master, port = pty
    broker = Mosquitto(tmp_path / "broker", acl=NO_DATA_ACL)
    broker.start()
    car = Car(tmp_path, broker)
    own, gnss = car.add_receiver(port, down_after=60)  # the state changes only at the end
    schemas = tmp_path / "outbox.db.schemas"
    sub = Subscriber(broker, f"{PREFIX}/{VIN}/data", client_id="sub-data")
    agent = car.start()
    try:
        assert agent.location is not None
        location = agent.location
        wait_for(
            lambda: getattr(location.source, "opens", 0) == 1, WAIT, "the receiver's port open"
        )
        bus = can.Bus(interface="virtual", channel=car.channel, ignore_config=True)

        taken = 0  # fixes the pipeline takes: the receiver drops those in the zones in force

        def drive(seconds: range, snapshots: tuple[int, ...], live: list[dict[str, Any]]) -> None:
            nonlocal taken
            for second in seconds:
                os.write(master, epoch("GN", second, *position(second)))
                taken += not inside(live, T0 + second)
                if second % 10 == 9 or second in snapshots:
                    # Vehicle health beside the positions: never touched.
                    bus.send(can.Message(arbitration_id=0x100, data=bytes([second % 100])))
                    wait_for(lambda n=taken: location.fixes == n, WAIT, "fixes taken")
                if second in snapshots:
                    # Closes the open update and stores every current value, positions too.
                    assert agent.request_snapshot(WAIT) is not None

        drive(range(150), (34, 69, 104, 139), [])
        first = _stored(agent, schemas)
        # Fixes 140 to 149 are in the open update; the zone covers fixes stored and open.
        assert lat_seconds(first) == set(range(140))
        old = _payloads(agent)
        car.config.write_text(
            own + gnss.replace("[privacy]\n", f"[privacy]\nzones = [{zones_toml([LOCAL])}]\n")
        )
        assert agent.reload() is True
        _assert_gone_from_files(tmp_path, old - _payloads(agent))
        purge = agent.status()["outbox"]["last_purge"]
        assert purge["rewritten"] >= 2 and purge["location_samples"] >= 20, purge

        drive(range(150, FIXES), (189,), [LOCAL])
        second = _stored(agent, schemas)
        assert lat_seconds(second) == {i for i in range(190) if not inside([LOCAL], T0 + i)}
        old = _payloads(agent)
        z = REMOTE
        rc, ans, err = car.command("consent", "--add-zone", f"home={z['lat']},{z['lon']},150")
        assert rc == 0 and ans is not None, err
        assert ans["result"]["zones"] == ["depot", "home"]
        assert ans["result"]["purged"]["rewritten"] >= 2, ans
        assert ans["result"]["purged"]["location_samples"] >= 20, ans
        _assert_gone_from_files(tmp_path, old - _payloads(agent))
        assert sub.messages == []  # the broker refused every update so far

        # The broker takes updates from now on.
        broker.acl = NO_DATA_ACL + f"topic readwrite {PREFIX}/{VIN}/data\n"
        broker.reload()

        def published() -> dict[Key, dict[str, Any]]:
            return decode_updates([m.payload for m in sub.messages], schemas)

        wait_for(lambda: second.keys() <= published().keys(), WAIT, "the stored updates sent")
    finally:
        bus.shutdown()
        car.stop()
        sub.close()
        broker.stop()
    zones = [LOCAL, REMOTE]
    # What was sent, and what the stop left in the outbox (every row of the file).
    final = {**decode_updates(outbox_payloads(tmp_path / "outbox.db"), schemas), **published()}
    for doc in final.values():
        private = [s for s in doc["samples"] if is_gnss(s) and inside(zones, s["t"])]
        assert not private, (doc["seq"], private)
    # Nothing else is lost: each update stored before a zone came is sent with the same boot
    # and seq, and with every sample it had but those of fixes inside the zones.
    for before in (first, second):
        for key, doc in before.items():
            wanted = [s for s in doc["samples"] if not (is_gnss(s) and inside(zones, s["t"]))]
            # (An update left with nothing but private fixes is deleted.)
            sent = final[key]["samples"] if key in final else []
            got = [s for s in sent if s["signal"] != STATE or s in doc["samples"]]
            assert got == wanted, key
    # Every position outside the zones arrived, from stored and open updates alike.
    assert lat_seconds(final) == {i for i in range(FIXES) if not inside(zones, T0 + i)}
    assert len({d["boot"] for d in final.values()}) == 1
    # The twin learns why positions stopped, and that they came back.
    states = _states(final)
    assert states.count("in privacy zone") >= 2 and states.count("fix") >= 2, states


def _payloads(agent: Agent) -> set[bytes]:
    agent.outbox.flush()
    return {row.payload for row in agent.outbox.iter_rows()}


def _assert_gone_from_files(folder: Path, gone: set[bytes]) -> None:
    """The rewritten updates' old bytes are nowhere in the outbox's files (the database, its
    write-ahead log, the shared memory index)."""
    assert gone
    files = sorted(folder.glob("outbox.db*"))
    assert any(f.name == "outbox.db" for f in files)
    for f in files:
        if f.is_file():
            data = f.read_bytes()
            assert not [p for p in gone if p in data], f.name
