"""Modem management: AT transport, response parsing, probing, selection policy, manager thread.

Pure parts (``parser``, ``fields``, ``policy``) import no I/O library; ``transport`` is the only
module importing ``serial``; ``simulator`` is a test and demo fixture on real pseudo-terminals.
"""

from agent.modem.command import ModemsReport, modems_report, render_json, render_table
from agent.modem.manager import ModemManager
from agent.modem.policy import SelectionPolicy
from agent.modem.report import AtTimeout, ModemError, ModemReport, PortGone, Reason, Switch

__all__ = [
    "AtTimeout",
    "ModemError",
    "ModemManager",
    "ModemReport",
    "ModemsReport",
    "PortGone",
    "Reason",
    "SelectionPolicy",
    "Switch",
    "modems_report",
    "render_json",
    "render_table",
]
