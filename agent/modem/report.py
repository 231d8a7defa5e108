"""Values shared by the modem probe, the selection policy and the status: frozen dataclasses.

``ModemReport`` is what one probe learnt about one modem; ``Switch`` is one change of the active
modem with its reason. Both are plain values, safe to pass between threads and to render as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agent.errors import AgentError


class ModemError(AgentError):
    """A modem port cannot be used: it is gone, cannot be opened, or stopped answering."""


class PortGone(ModemError):
    """The port cannot be opened or failed under us (unplugged, re-enumerated)."""


class ModemBusy(ModemError):
    """The port stayed in use (a probe) for longer than a caller was willing to wait."""


class AtTimeout(ModemError):
    """A command got no final result within its timeout."""

    def __init__(self, message: str, command: str = "", timeout: float = 0.0) -> None:
        super().__init__(message)
        self.command = command
        self.timeout = timeout


@dataclass(frozen=True)
class ModemReport:
    name: str
    port: str
    responding: bool
    sim: str = "unknown"
    iccid: str | None = None
    imsi: str | None = None
    operator: str | None = None  # numeric MCCMNC of the network registered on
    registration: str = "unknown"  # packet service (CEREG/CGREG): what data needs
    roaming: bool | None = None  # against the SIM's own home network (see probe)
    signal_dbm: float | None = None
    signal_source: str | None = None  # "rsrp" (LTE, AT+CESQ) or "csq" (RSSI, AT+CSQ)
    attached: bool | None = None  # packet domain attach (AT+CGATT?)
    error: str | None = None
    cs_registration: str | None = None  # circuit service (CREG): voice and SMS only
    home_network: str | None = None  # the SIM's home MCCMNC, when known

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reason:
    """Why the policy did something: a short stable code and a sentence for humans."""

    code: str
    text: str


@dataclass(frozen=True)
class Switch:
    """One change of the active modem. ``at`` is on the policy's (monotonic) clock."""

    at: float
    from_name: str | None
    to_name: str | None
    code: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.from_name, "to": self.to_name, "code": self.code, "text": self.text}
