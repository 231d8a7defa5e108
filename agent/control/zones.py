"""Privacy zones changed by the remote ``consent`` command: ``add_zones`` and ``remove_zones``.

Adding a zone makes the car more private and is always allowed; removing one (or replacing a
zone of the same name, which may shrink it) makes it less private and needs the activation's
``allow_remote_consent``, exactly like granting a consent category. Zones are validated by the
config's own model (agent.config.ZoneConfig), so a remote zone is held to the same ranges as
one the owner gave at activation. Pure: it does not store (agent.control.consent) nor apply the
change (agent.daemon).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from agent.config import PrivacyConfig, ZoneConfig, error_message, field_path

ZONE_ARGS = ("add_zones", "remove_zones")
NOT_ALLOWED = "not_allowed"
MAX_ZONES = 256  # [privacy] zones holds at most this many


def check_zone_args(args: Mapping[str, Any]) -> str | None:
    """A problem with the zone arguments of a consent command, or None."""
    if "add_zones" in args:
        value = args["add_zones"]
        if not isinstance(value, list) or not value:
            return "args.add_zones must be a non-empty list of {name, lat, lon, radius} objects"
        if len(value) > MAX_ZONES:
            return "args.add_zones: too many zones"
        for i, z in enumerate(value):
            try:
                ZoneConfig.model_validate(z)
            except ValidationError as err:
                e = err.errors()[0]
                where = f"args.add_zones[{i}]" + (f".{field_path(e['loc'])}" if e["loc"] else "")
                return f"{where}: {error_message(e)}"[:300]
    if "remove_zones" in args:
        value = args["remove_zones"]
        if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
            return "args.remove_zones must be a non-empty list of zone names"
        if len(value) > MAX_ZONES:
            return "args.remove_zones: too many names"
    return None


def zone_change(
    zones: list[ZoneConfig], args: Mapping[str, Any], *, allow_loosen: bool
) -> list[ZoneConfig] | str:
    """The zones after the command (arguments already checked), or why it is refused."""
    by_name = {z.name: z for z in zones}
    remove = [str(n) for n in args.get("remove_zones", ())]
    add = [ZoneConfig.model_validate(z) for z in args.get("add_zones", ())]
    unknown = [n for n in remove if n not in by_name]
    if unknown:
        return f"no privacy zone named {', '.join(unknown)[:100]}"
    replaced = [z.name for z in add if z.name in by_name and by_name[z.name] != z]
    if (remove or replaced) and not allow_loosen:
        what = ", ".join(remove + replaced)[:100]
        return (
            f"{NOT_ALLOWED}: removing or changing privacy zones ({what}) remotely is not "
            "allowed on this car (activate with --allow-remote-consent); adding zones is"
        )
    for n in remove:
        by_name.pop(n)
    for z in add:
        by_name[z.name] = z
    after = list(by_name.values())
    try:
        PrivacyConfig.model_validate({"zones": [z.model_dump() for z in after]})
    except ValidationError as err:
        return f"privacy zones: {error_message(err.errors()[0])}"
    return after
