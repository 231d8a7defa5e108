"""The ``[[diagnostics]]`` config section, validated like every other section (agent.config).

Kept apart from agent.config so that diagnostics stay one folder; agent.config includes it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.diag.obd import parse_pid_key

Interval = Annotated[float, Field(gt=0, strict=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class UdsEcu(_Model):
    name: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")
    tx: int = Field(ge=0, le=0x1FFFFFFF)
    rx: int = Field(ge=0, le=0x1FFFFFFF)


class DiagnosticsConfig(_Model):
    bus: str = Field(min_length=1)
    # Mode 01 PIDs (two hex digits) -> seconds between reads.
    obd_pids: dict[str, Interval] = Field(default_factory=dict)
    # Optional wire names for PIDs (e.g. a VSS name), instead of OBD.<J1979 name>.
    obd_names: dict[str, str] = Field(default_factory=dict)
    # Seconds between DTC reads (OBD modes 03, 07, 0A and UDS 0x19 0x02); 0: only on command.
    dtc_interval: float = Field(default=60.0, ge=0, strict=False)
    # Which OBD DTC lists are read.
    obd_dtcs: bool = True
    uds_ecus: list[UdsEcu] = Field(default_factory=list, max_length=16)
    # UDS DTC status mask: a DTC is reported when its status has one of these bits (default:
    # pending or confirmed).
    uds_status_mask: int = Field(default=0x0C, ge=1, le=0xFF)
    addressing: Literal["11bit", "29bit"] = "11bit"
    # ISO-TP in the kernel (can_isotp sockets, SocketCAN only) or in user space (can-isotp over
    # python-can, any interface); auto: the kernel's where it opens (agent.diag.transport).
    isotp: Literal["auto", "kernel", "user"] = "auto"
    # Seconds to wait for an answer (P2); after "response pending" (0x78) up to pending_timeout.
    timeout: Interval = 1.0
    pending_timeout: Interval = 5.0
    # Upper bound of the bus load the requests and answers may add, as a fraction of bitrate.
    max_bus_load: float = Field(default=0.01, gt=0, le=0.1, strict=False)
    # The bus bitrate the load is computed against when the [[bus]] names none.
    bitrate: int = Field(default=500_000, gt=0)
    # Readings waiting for the pipeline; beyond, the oldest are dropped (counted).
    queue: int = Field(default=1024, ge=16, le=65536)

    @field_validator("obd_pids", "obd_names")
    @classmethod
    def _pid_keys(cls, v: dict[str, object]) -> dict[str, object]:
        for key in v:
            parse_pid_key(key)
        return {k.upper(): x for k, x in v.items()}

    @model_validator(mode="after")
    def _cross(self) -> DiagnosticsConfig:
        extra = sorted(set(self.obd_names) - set(self.obd_pids))
        if extra:
            raise ValueError(f"obd_names names PIDs not in obd_pids: {', '.join(extra)}")
        names = [e.name for e in self.uds_ecus]
        if len(set(names)) != len(names):
            raise ValueError("uds_ecus names must be unique")
        limit = 0x1FFFFFFF if self.addressing == "29bit" else 0x7FF
        for e in self.uds_ecus:
            if e.tx > limit or e.rx > limit:
                raise ValueError(f"uds_ecus {e.name}: tx/rx beyond {self.addressing} ids")
        return self

    def pids(self) -> dict[int, float]:
        return {int(k, 16): v for k, v in self.obd_pids.items()}
