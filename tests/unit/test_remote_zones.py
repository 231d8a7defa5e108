"""Remote privacy zone changes: arguments checked like the config, stricter always allowed."""

from __future__ import annotations

from typing import Any

import pytest

from agent.config import ZoneConfig
from agent.control.zones import check_zone_args, zone_change

HOME = ZoneConfig(name="home", lat=48.1, lon=11.5, radius=300.0)
DEPOT = {"name": "depot", "lat": 52.5, "lon": 13.4, "radius": 250.0}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"add_zones": []}, "non-empty list"),
        ({"add_zones": {"name": "a"}}, "non-empty list"),
        ({"add_zones": ["x"]}, 'args.add_zones[0]: must be a table, not "x"'),
        ({"add_zones": [{**DEPOT, "lat": 90.5}]}, "args.add_zones[0].lat"),
        ({"add_zones": [{**DEPOT, "lat": True}]}, "must be a number, not true"),
        ({"add_zones": [{**DEPOT, "radius": "5"}]}, "args.add_zones[0].radius"),
        ({"add_zones": [{**DEPOT, "extra": 1}]}, "args.add_zones[0].extra: unknown key"),
        ({"add_zones": [DEPOT] * 257}, "too many"),
        ({"remove_zones": []}, "non-empty list of zone names"),
        ({"remove_zones": [1]}, "non-empty list of zone names"),
    ],
)
def test_bad_zone_arguments_are_named(args: dict[str, Any], words: str) -> None:
    assert words in str(check_zone_args(args))


def test_adding_is_allowed_without_permission_removing_and_shrinking_are_not() -> None:
    added = zone_change([HOME], {"add_zones": [DEPOT]}, allow_loosen=False)
    assert isinstance(added, list) and [z.name for z in added] == ["home", "depot"]
    # The same zone again changes nothing and needs no permission.
    again = zone_change([HOME], {"add_zones": [HOME.model_dump()]}, allow_loosen=False)
    assert again == [HOME]
    shrunk = {**HOME.model_dump(), "radius": 10.0}
    for args in ({"remove_zones": ["home"]}, {"add_zones": [shrunk]}):
        refused = zone_change([HOME], args, allow_loosen=False)
        assert isinstance(refused, str) and refused.startswith("not_allowed")
    assert zone_change([HOME], {"remove_zones": ["home"]}, allow_loosen=True) == []
    assert zone_change([HOME], {"remove_zones": ["work"]}, allow_loosen=True) == (
        "no privacy zone named work"
    )
