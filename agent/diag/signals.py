"""The schema signals diagnostics write: their names, definitions and consent categories.

PIDs are ordinary telemetry signals named ``OBD.<SAE J1979 name>`` (or the configured
``obd_names`` entry, e.g. a VSS name), in category ``vehicle_health``, sent as the raw integer
with J1979's scale, offset and unit. DTCs are event signals in category ``diagnostics``: per
list ``OBD.DTC.Stored``, ``.Pending``, ``.Permanent`` and ``UDS.DTC``, each with ``.Set`` and
``.Cleared``; a sample's value is the code (``P0301``) and names the ECU (agent.spime.dtc).
With more than one ``[[diagnostics]]`` section the names start with ``<bus>/``. Pure.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.diag.obd import DTC_MODES, PIDS
from agent.diag.settings import DiagnosticsConfig
from agent.spime import SignalDef
from agent.spime.dtc import DTC_FORMAT

PID_CATEGORY = "vehicle_health"
DTC_CATEGORY = "diagnostics"
DTC_LISTS = (*DTC_MODES.values(), "UDS")
SET, CLEARED = "Set", "Cleared"


def _prefix(cfg: DiagnosticsConfig, every: list[DiagnosticsConfig]) -> str:
    return f"{cfg.bus}/" if len(every) > 1 else ""


def pid_name(cfg: DiagnosticsConfig, pid: int, prefix: str = "") -> str:
    return prefix + (cfg.obd_names.get(f"{pid:02X}") or f"OBD.{PIDS[pid].name}")


def dtc_name(listname: str, state: str, prefix: str = "") -> str:
    head = "UDS.DTC" if listname == "UDS" else f"OBD.DTC.{listname}"
    return f"{prefix}{head}.{state}"


def names_of(cfg: DiagnosticsConfig, every: list[DiagnosticsConfig]) -> dict[str, str]:
    """Wire name -> category of every signal one section writes."""
    prefix = _prefix(cfg, every)
    out = {pid_name(cfg, pid, prefix): PID_CATEGORY for pid in cfg.pids()}
    lists = [*DTC_MODES.values()] if cfg.obd_dtcs else []
    if cfg.uds_ecus:
        lists.append("UDS")
    for listname in lists:
        for state in (SET, CLEARED):
            out[dtc_name(listname, state, prefix)] = DTC_CATEGORY
    return out


def definitions(
    every: list[DiagnosticsConfig], first_id: int, allowed: Callable[[str], bool]
) -> tuple[list[SignalDef], dict[str, int], dict[str, int]]:
    """The schema entries of every section whose category is consented (``allowed``), from
    id ``first_id``; wire name -> id; and what was left out for lack of consent, by reason."""
    defs: list[SignalDef] = []
    ids: dict[str, int] = {}
    excluded: dict[str, int] = {}
    for cfg in every:
        prefix = _prefix(cfg, every)
        ecus = {e.rx: e.name for e in cfg.uds_ecus}
        for pid in cfg.pids():
            name = pid_name(cfg, pid, prefix)
            if not allowed(PID_CATEGORY):
                excluded[f"no consent for {PID_CATEGORY}"] = (
                    excluded.get(f"no consent for {PID_CATEGORY}", 0) + 1
                )
                continue
            p = PIDS[pid]
            ids[name] = first_id + len(defs)
            defs.append(
                SignalDef(
                    id=ids[name],
                    name=name,
                    scale=p.scale,
                    offset=p.offset,
                    unit=p.unit,
                    source=f"{cfg.bus}:obd:01{pid:02X}",
                    category=PID_CATEGORY,
                )
            )
        for name, category in names_of(cfg, every).items():
            if category != DTC_CATEGORY:
                continue
            if not allowed(DTC_CATEGORY):
                key = f"no consent for {DTC_CATEGORY}"
                excluded[key] = excluded.get(key, 0) + 1
                continue
            ids[name] = first_id + len(defs)
            defs.append(
                SignalDef(
                    id=ids[name],
                    name=name,
                    choices=ecus,
                    priority="event",
                    source=f"{cfg.bus}:diag",
                    category=DTC_CATEGORY,
                    format=DTC_FORMAT,
                )
            )
    return defs, ids, excluded
