"""One-shot modem report for the CLI: probe every configured modem once and say which one the
policy would choose and why.

Probes run in parallel threads, each bounded by the command timeouts; no PIN is ever entered
here (observe only). Rendering as a text table or JSON is included; printing is the CLI's job.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agent.config import Config, ModemConfig, ModemPolicyConfig
from agent.modem.handle import expand
from agent.modem.policy import SelectionPolicy
from agent.modem.probe import probe
from agent.modem.report import ModemError, ModemReport, Reason
from agent.modem.transport import AtTransport


@dataclass(frozen=True)
class ModemsReport:
    reports: tuple[ModemReport, ...]
    chosen: str | None
    why: Reason
    problems: dict[str, Reason | None]  # per modem: why it is not usable (None: usable)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "why": {"code": self.why.code, "text": self.why.text},
            "modems": [
                {
                    **r.to_dict(),
                    "problem": (
                        {"code": p.code, "text": p.text}
                        if (p := self.problems.get(r.name))
                        else None
                    ),
                }
                for r in self.reports
            ],
        }


def probe_once(m: ModemConfig, policy: ModemPolicyConfig) -> ModemReport:
    # A glob port (e.g. /dev/serial/by-id/*Quectel*-if02*) means its first match.
    paths = expand([m.port])
    if not paths:
        return ModemReport(m.name, m.port, responding=False, error=f"{m.port}: no such port")
    t = AtTransport(paths[0], baudrate=m.baudrate, timeout=policy.command_timeout)
    try:
        with t:
            return probe(t, m, home_networks=policy.home_networks)
    except ModemError as err:
        return ModemReport(m.name, m.port, responding=False, error=str(err))


def modems_report(cfg: Config) -> ModemsReport:
    """Probe all configured modems once, in parallel, and apply the policy."""
    modems = list(cfg.modem)
    if not modems:
        return ModemsReport((), None, Reason("no_modems", "no [[modem]] configured"), {})
    with ThreadPoolExecutor(max_workers=len(modems), thread_name_prefix="modem-probe") as pool:
        reports = list(pool.map(lambda m: probe_once(m, cfg.modems), modems))
    policy = SelectionPolicy([m.name for m in modems], cfg.modems, time.monotonic)
    policy.update({r.name: r for r in reports})
    return ModemsReport(tuple(reports), policy.active, policy.reason, policy.verdicts)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _signal(m: ModemReport) -> str | None:
    """RSRP and RSSI are different quantities: the table says which one a figure is."""
    if m.signal_dbm is None:
        return None
    return f"{m.signal_dbm:g} {'RSRP' if m.signal_source == 'rsrp' else 'RSSI'}"


COLUMNS = (
    "name",
    "port",
    "ICCID",
    "operator",
    "registration",
    "roaming",
    "signal dBm",
    "SIM state",
    "chosen/why",
)


def render_table(r: ModemsReport) -> str:
    rows: list[tuple[str, ...]] = []
    for m in r.reports:
        if m.name == r.chosen:
            why = f"chosen: {r.why.text}"
        elif (p := r.problems.get(m.name)) is not None:
            why = p.text
        else:
            why = "standby"
        sim = m.sim if m.responding else "no answer"
        rows.append(
            tuple(
                _cell(v)
                for v in (
                    m.name,
                    m.port,
                    m.iccid,
                    m.operator,
                    m.registration if m.responding else None,
                    m.roaming,
                    _signal(m),
                    sim,
                    why,
                )
            )
        )
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(COLUMNS)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if r.chosen is None:
        lines.append(f"no modem chosen: {r.why.text}")
    return "\n".join(lines) + "\n"


def render_json(r: ModemsReport) -> str:
    return json.dumps(r.to_dict(), indent=2, sort_keys=True) + "\n"
