"""Privacy zones changed by the signed remote `consent` command: adding one (stricter) is always
allowed, removing one needs allow_remote_consent; the change is kept on the box across restarts
and dropped when the config's own zones change."""

from __future__ import annotations

from pathlib import Path

from agent.daemon import Agent
from tests.support.broker import Mosquitto
from tests.support.remotecar import Car


def _zones(agent: Agent) -> list[tuple[str, float, float, float]]:
    return [(z.name, z.lat, z.lon, z.radius) for z in agent.cfg.privacy.zones]


def test_adding_a_zone_is_allowed_and_kept_removing_is_not(
    tmp_path: Path, broker: Mosquitto
) -> None:
    car = Car(tmp_path, broker)
    agent = car.start()
    try:
        rc, ans, err = car.command("consent", "--add-zone", "depot=52.52,13.405,250")
        assert rc == 0 and ans is not None, err
        assert ans["result"]["zones"] == ["depot"]
        assert _zones(agent) == [("depot", 52.52, 13.405, 250.0)]
        # Granted categories are untouched by a zone change.
        assert agent.cfg.consent is not None
        assert sorted(agent.cfg.consent.granted) == ["location", "vehicle_health"]
        rc, ans, err = car.command("consent", "--remove-zone", "depot")
        assert rc == 1 and ans is not None and ans["status"] == "rejected", err
        assert "not_allowed" in ans["detail"] and "adding zones is" in ans["detail"]
        # Replacing a zone by one of the same name may shrink it: not allowed either.
        rc, ans, _ = car.command("consent", "--add-zone", "depot=52.52,13.405,10")
        assert rc == 1 and ans is not None and "not_allowed" in ans["detail"]
        rc, ans, _ = car.command("consent", "--add-zone", "far=91,13.4,250")
        assert rc == 1 and ans is not None
        assert "args.add_zones[0].lat" in ans["detail"], ans
        assert _zones(agent) == [("depot", 52.52, 13.405, 250.0)]
    finally:
        car.stop()
    agent = car.start()  # kept on the box
    try:
        assert _zones(agent) == [("depot", 52.52, 13.405, 250.0)]
    finally:
        car.stop()
    # A local edit of the config's zones is the newer decision: the remote change is dropped.
    car.config.write_text(
        car.config.read_text()
        + '\n[privacy]\nzones = [{ name = "home", lat = 1.0, lon = 2.0, radius = 300.0 }]\n'
    )
    agent = car.start()
    try:
        assert _zones(agent) == [("home", 1.0, 2.0, 300.0)]
    finally:
        car.stop()


def test_removing_a_zone_where_activation_allowed_it(tmp_path: Path, broker: Mosquitto) -> None:
    car = Car(tmp_path, broker, allow_grant=True)
    car.config.write_text(
        car.config.read_text()
        + '\n[privacy]\nzones = [{ name = "home", lat = 1.0, lon = 2.0, radius = 300.0 }]\n'
    )
    agent = car.start()
    try:
        rc, ans, err = car.command("consent", "--remove-zone", "home")
        assert rc == 0 and ans is not None, err
        assert ans["result"]["zones"] == [] and _zones(agent) == []
        rc, ans, _ = car.command("consent", "--remove-zone", "home")
        assert rc == 1 and ans is not None and "no privacy zone named home" in ans["detail"]
    finally:
        car.stop()
