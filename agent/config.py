"""Configuration: TOML file -> validated, frozen pydantic models.

Loads one TOML file, validates every key (unknown keys are errors), resolves relative paths
against the config file's folder, and reports every problem as one line naming the file and the
field (or the line, for TOML syntax errors). Types are strict: a boolean is `true` or `false`,
never `1` or `"yes"`; an integer is never `true`; only a float field takes an integer. The same
models validate what `spime-agent activate` writes, so `check` and `activate` accept the same
values. It does not open buses, DBCs, TLS files or brokers: checks that need those live where
those are opened (agent.catalog, agent.tlscheck).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent import vin
from agent.diag.settings import DiagnosticsConfig
from agent.errors import ConfigError
from agent.policy.expr import MAX_LENGTH as MAX_CONDITION
from agent.policy.expr import ExprError
from agent.policy.expr import parse as parse_condition

# Interfaces handled by python-can are passed through by name; "replay" is ours.
REPLAY = "replay"
Priority = Literal["telemetry", "event"]
PRIORITIES: tuple[Priority, ...] = ("telemetry", "event")
CONSENT_CATEGORIES = ("location", "driving", "vehicle_health", "diagnostics")
COARSE_LOCATION = "coarse_location"
# [[signal]] wire names that make a signal a coordinate of the CAN position (agent.canposition).
POSITION_NAMES = {
    "Vehicle.CurrentLocation.Latitude": "latitude",
    "Vehicle.CurrentLocation.Longitude": "longitude",
}
# What an owner (or, where allowed, the backend) may grant.
GRANTABLE = (*CONSENT_CATEGORIES, COARSE_LOCATION)


class _Model(BaseModel):
    # strict: TOML has real booleans and integers; `port = true` or `compress = "yes"` is a
    # mistake to name, not a value to coerce. Paths are the one exception (TOML has no path
    # type): they are declared with FilePath below.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    """Relative paths in the config are relative to the config file's folder."""
    if value is None:
        return None
    base = (info.context or {}).get("base")
    value = Path(value).expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


# A path is written as a string; strict mode alone would ask for a Path object.
FilePath = Annotated[Path, Field(strict=False)]
PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegSeconds = Annotated[float, Field(ge=0)]


def _port(v: int) -> int:
    if not 1 <= v <= 65535:
        raise ValueError(f"{v} is not a port number (1-65535)")
    return v


Port = Annotated[int, AfterValidator(_port)]


def _host(v: str) -> str:
    """A host name or an IP address: a URL or a "host:port" is the commonest mistake."""
    if "://" in v:
        raise ValueError(
            f"{v!r} is a URL: give the host name or address only (no scheme; the port is port)"
        )
    if not v or any(c.isspace() for c in v) or "/" in v:
        raise ValueError(f"{v!r} is not a host name or address (no spaces, no slashes)")
    if ":" in v:
        try:
            ipaddress.IPv6Address(v.strip("[]"))
        except ValueError:
            raise ValueError(f"{v!r}: give the host only; the port is port") from None
        return v.strip("[]")
    return v


Host = Annotated[str, AfterValidator(_host)]


class VehicleConfig(_Model):
    vin: str = Field(description="17-character vehicle identification number")

    @field_validator("vin")
    @classmethod
    def _vin_shape(cls, v: str) -> str:
        # One rule for the VIN everywhere (shape and, where its region uses one, check digit).
        v = vin.normalize(v)
        problems = vin.vin_problems(v)
        if problems:
            raise ValueError(problems[0])
        return v


class BusConfig(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    interface: str = Field(min_length=1)
    channel: str | None = None
    bitrate: int | None = Field(default=None, gt=0)
    fd: bool = False
    data_bitrate: int | None = Field(default=None, gt=0)
    dbc: list[FilePath] = Field(min_length=1)
    # Load the DBC with the documented lenient rules (see README): defects are warnings.
    lenient_dbc: bool = False
    # J1939: match frames by PGN (priority and source address masked out).
    j1939: bool = False
    frame_id_mask: int | None = Field(default=None, gt=0, le=0x1FFFFFFF)
    # Replay only.
    log: FilePath | None = None
    speed: float = Field(default=0.0, ge=0)
    # "log": stamp data with the log's own times; "now": shift the log so it starts now.
    time: Literal["log", "now"] = "log"
    # Where the log is read: a child process beside the pipeline (agent.logchild), the reading
    # thread, or "auto": the process for an unpaced replay of a large log.
    reader: Literal["auto", "process", "thread"] = "auto"
    # Live only: frames buffered between the bus reader and the pipeline.
    queue_frames: int = Field(default=65536, ge=64)
    # Live SocketCAN only: the kernel's receive buffer for the bus socket, in bytes, sized so a
    # burst outlasts a scheduling hiccup of the reader (the kernel default holds ~200 frames).
    receive_buffer: int = Field(default=4 * 1024 * 1024, ge=65536, le=256 * 1024 * 1024)
    # Live SocketCAN only: kernel-side change detection (CAN_BCM, agent.sources.bcm); "auto" is
    # on for socketcan buses without an id mask.
    change_detection: Literal["auto", "bcm", "off"] = "auto"
    # A live bus with no frame for this long is reported "silent" (never mistaken for healthy).
    silent_after: PositiveSeconds = 5.0
    reopen_min: PositiveSeconds = 0.5
    reopen_max: PositiveSeconds = 30.0
    # Extra keyword arguments for the python-can interface.
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dbc", mode="after")
    @classmethod
    def _dbc_paths(cls, v: list[Path], info: ValidationInfo) -> list[Path]:
        return [p for p in (_resolve(p, info) for p in v) if p is not None]

    @field_validator("log", mode="after")
    @classmethod
    def _log_path(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)

    @model_validator(mode="after")
    def _by_interface(self) -> BusConfig:
        if self.interface == REPLAY:
            if self.log is None:
                raise ValueError('interface "replay" needs log = "<file>"')
            if self.channel is not None:
                raise ValueError('interface "replay" takes log, not channel')
        else:
            if self.log is not None:
                raise ValueError(f'log is only for interface "replay", not "{self.interface}"')
            if self.channel is None:
                raise ValueError(f'interface "{self.interface}" needs channel = "<name>"')
        if self.j1939 and self.frame_id_mask is not None:
            raise ValueError("set either j1939 = true or frame_id_mask, not both")
        if self.change_detection == "bcm" and (
            self.interface != "socketcan" or self.id_mask is not None
        ):
            raise ValueError('change_detection = "bcm" needs interface "socketcan", no id mask')
        return self

    @property
    def is_replay(self) -> bool:
        return self.interface == REPLAY

    @property
    def id_mask(self) -> int | None:
        return 0x3FFFF00 if self.j1939 else self.frame_id_mask


class SignalConfig(_Model):
    """Selects signals by glob over ``Message.Signal`` and sets how they are sampled."""

    match: str = Field(min_length=1)
    bus: str | None = None
    name: str | None = Field(default=None, min_length=1)
    deadband: float = Field(default=0.0, ge=0)
    min_interval: NonNegSeconds = 0.0
    max_interval: NonNegSeconds = 0.0
    priority: Priority = "telemetry"
    consent: str | None = None
    # This signal is one coordinate of the car's position (degrees once decoded): it is
    # checked against the privacy zones before anything of it is sampled (agent.canposition).
    location: Literal["latitude", "longitude"] | None = None

    @model_validator(mode="after")
    def _intervals(self) -> SignalConfig:
        if self.max_interval and self.max_interval < self.min_interval:
            raise ValueError("max_interval must be 0 (off) or at least min_interval")
        if self.name is not None and any(c in self.match for c in "*?["):
            raise ValueError("name can only be given to a match that names one signal (no glob)")
        if self.location is not None and any(c in self.match for c in "*?["):
            raise ValueError("location is given to a match that names one signal (no glob)")
        return self

    def matches(self, bus: str, qualified: str) -> bool:
        if self.bus is not None and self.bus != bus:
            return False
        return fnmatch.fnmatchcase(qualified, self.match)


class TriggerConfig(_Model):
    """A condition-triggered capture: when ``when`` fires, every change of the ``capture``
    signals from ``before`` seconds before to ``after`` seconds after is sent, as events."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    when: str = Field(min_length=1, max_length=MAX_CONDITION)
    edge: Literal["rising", "level"] = "rising"
    min_interval: NonNegSeconds = 0.0
    before: float = Field(default=0.0, ge=0, le=600)
    after: float = Field(default=0.0, ge=0, le=600)
    capture: list[str] = Field(default_factory=list, max_length=256)

    @field_validator("when")
    @classmethod
    def _condition(cls, v: str) -> str:
        try:
            parse_condition(v)
        except ExprError as err:
            raise ValueError(str(err)) from None
        return v

    @model_validator(mode="after")
    def _level(self) -> TriggerConfig:
        if self.edge == "level" and not self.min_interval:
            raise ValueError('edge = "level" needs min_interval > 0 (else it fires on every frame)')
        return self


class CaptureConfig(_Model):
    """Memory bounds of triggered captures."""

    # Pre-trigger history kept per captured signal (changes): about 100 bytes each.
    ring_samples: int = Field(default=1024, ge=16, le=1_000_000)
    # Samples one capture window holds at most (changes beyond are counted and dropped).
    window_samples: int = Field(default=65536, ge=16, le=10_000_000)


class UpdatesConfig(_Model):
    """How samples are batched into spime updates."""

    max_age: PositiveSeconds = 1.0
    max_samples: int = Field(default=4096, ge=1, le=1_000_000)
    max_bytes: int = Field(default=32768, ge=256, le=256 * 1024 * 1024)
    snapshot_interval: NonNegSeconds = 300.0
    compress: bool = True


class TlsConfig(_Model):
    ca: FilePath | None = None
    cert: FilePath | None = None
    key: FilePath | None = None
    # Never disable in production: only for brokers with self-signed names in a lab.
    check_hostname: bool = True

    @field_validator("ca", "cert", "key", mode="after")
    @classmethod
    def _paths(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            given, absent = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(f"{given} is given without {absent}: the two go together")
        return self


# Union tags: internal names, left out of the field paths users see.
_TLS_BOOL, _TLS_TABLE = "tls-bool", "tls-table"
_TAGS = {_TLS_BOOL, _TLS_TABLE}


def _tls_kind(v: Any) -> str | None:
    if isinstance(v, bool):
        return _TLS_BOOL
    if isinstance(v, dict | TlsConfig):
        return _TLS_TABLE
    return None


# Tagged, so that a bad table is reported once, as itself, not also as "not a boolean".
TlsSetting = Annotated[
    Annotated[bool, Tag(_TLS_BOOL)] | Annotated[TlsConfig, Tag(_TLS_TABLE)],
    Discriminator(
        _tls_kind,
        custom_error_type="tls_type",
        custom_error_message="must be true, false or a table { ca = ..., cert = ..., key = ... }",
    ),
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MqttConfig(_Model):
    host: Host
    port: Port = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    # None: TLS unless the broker is on this box (loopback), see README.
    tls: TlsSetting | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = Field(default=60, ge=5, le=65535)
    topic_prefix: str = Field(default="spime/v1", min_length=1)
    client_id: str | None = None
    max_inflight: int = Field(default=20, ge=1, le=65535)
    # Rate limit for data publishes in messages per second (0: unlimited); events are never held.
    # After an outage a car drains its backlog at this pace rather than all at once, and a
    # fleet coming back together does not flood the broker or the cell.
    drain_rate: float = Field(default=100.0, ge=0)
    reconnect_min: PositiveSeconds = 1.0
    reconnect_max: PositiveSeconds = 120.0
    status_interval: PositiveSeconds = 60.0
    # While publishes are in flight, a PUBACK missing this long declares the link dead and the
    # uplink reconnects (0: rely on keepalive alone, about two keepalives on a dead link).
    ack_timeout: NonNegSeconds = 20.0

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if any(c in v for c in "+#") or not v:
            raise ValueError("must be a topic without wildcards (+, #)")
        return v

    @property
    def tls_config(self) -> TlsConfig | None:
        """The TLS settings in force, or None for plain TCP."""
        if isinstance(self.tls, TlsConfig):
            return self.tls
        if self.tls is True or (self.tls is None and not is_loopback(self.host)):
            return TlsConfig()
        return None


class OutboxConfig(_Model):
    path: FilePath
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    commit_interval: PositiveSeconds = 1.0
    # Memory buffer used while the disk cannot be written (full, read-only).
    memory_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    # Maximum age per priority in seconds (0: kept until sent or evicted for space).
    max_age_telemetry: NonNegSeconds = 0.0
    max_age_event: NonNegSeconds = 0.0

    @field_validator("path", mode="after")
    @classmethod
    def _path(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)


class ModemConfig(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    port: str = Field(min_length=1)
    baudrate: int = Field(default=115200, gt=0)
    apn: str | None = None
    # Command run (with a timeout) when this modem becomes the active one, e.g. an nmcli call.
    link_up: list[str] | None = None
    link_down: list[str] | None = None
    pin: str | None = Field(default=None, pattern=r"^[0-9]{4,8}$")
    # Networks (MCCMNC) counted as home for this SIM besides its own (from its IMSI); None: the
    # deprecated [modems] home_networks.
    home_networks: list[str] | None = None

    @staticmethod
    def check_mccmnc(codes: list[str] | None) -> list[str] | None:
        bad = [
            code
            for code in codes or ()
            if not (code.isascii() and code.isdigit() and len(code) in (5, 6))
        ]
        if bad:
            raise ValueError(f"{bad}: each must be an MCC+MNC code of 5 or 6 digits, e.g. 26201")
        return codes

    @field_validator("home_networks")
    @classmethod
    def _mccmnc(cls, v: list[str] | None) -> list[str] | None:
        return cls.check_mccmnc(v)


class ModemPolicyConfig(_Model):
    primary: str | None = None  # modem name or ICCID; None: the first [[modem]]
    fallback: list[str] = Field(default_factory=list)
    # Deprecated: home networks for every modem without its own list (which makes one SIM's
    # home network home for all); the manager warns about it.
    home_networks: list[str] = Field(default_factory=list)
    allow_roaming: bool = False
    # RSRP (LTE, AT+CESQ) and RSSI (AT+CSQ) are different quantities: RSRP is measured per
    # resource element and reads 20-30 dB lower than RSSI on the same link, so each has its own
    # threshold and a modem's reading is only ever held against its own measure's.
    min_rsrp_dbm: float = -115.0
    min_rssi_dbm: float = -95.0
    # Deprecated: one figure for both measures (its meaning before the two keys above existed).
    # Still honoured for the measures whose own key is not given; the manager warns about it.
    min_signal_dbm: float | None = None
    signal_hysteresis_db: float = Field(default=6.0, ge=0)
    weak_checks: int = Field(default=3, ge=1)
    check_interval: PositiveSeconds = 30.0
    data_failures: int = Field(default=3, ge=1)
    return_delay: PositiveSeconds = 600.0
    return_delay_max: PositiveSeconds = 6 * 3600.0
    max_switches_per_hour: int = Field(default=6, ge=1)
    command_timeout: PositiveSeconds = 5.0
    link_timeout: PositiveSeconds = 60.0
    # Extra device globs rescanned for a modem that vanished (found again by its ICCID).
    search: list[str] = Field(default_factory=list)
    reopen_interval: PositiveSeconds = 30.0
    reset_after: int = Field(default=3, ge=1)  # failed checks before AT+CFUN=1,1
    reset_interval: PositiveSeconds = 900.0  # at most one reset per modem per this long
    rescan_interval: PositiveSeconds = 30.0
    # On a tmpfs, so "a PIN at most once per boot" survives agent restarts but not reboots.
    pin_ledger: FilePath | None = Path("/run/spime-agent/pin-tried")
    history: int = Field(default=20, ge=1)  # switches kept for the status

    @field_validator("home_networks")
    @classmethod
    def _mccmnc(cls, v: list[str]) -> list[str]:
        return ModemConfig.check_mccmnc(v) or []

    @model_validator(mode="before")
    @classmethod
    def _deprecated_min_signal(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("min_signal_dbm") is not None:
            data = dict(data)
            data.setdefault("min_rsrp_dbm", data["min_signal_dbm"])
            data.setdefault("min_rssi_dbm", data["min_signal_dbm"])
        return data

    def min_dbm(self, source: str | None) -> float:
        """The weak-signal threshold for a reading of ``source`` ("rsrp" or "csq")."""
        return self.min_rsrp_dbm if source == "rsrp" else self.min_rssi_dbm


class ConsentRule(_Model):
    match: str = Field(min_length=1)
    category: str = Field(min_length=1)


class ConsentConfig(_Model):
    """The owner's consent, enforced in the data path: a signal whose category is not granted
    is never decoded, stored or sent."""

    granted: list[str] = Field(default_factory=list)
    rules: list[ConsentRule] = Field(default_factory=list)
    # Category of signals no rule matches; None: such signals are never sent (privacy first).
    default_category: str | None = None
    # With "coarse_location" granted but not "location", positions snap to this grid (degrees).
    coarse_grid: float = Field(default=0.01, gt=0)

    @field_validator("granted")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        known = (*CONSENT_CATEGORIES, COARSE_LOCATION)
        bad = [c for c in v if c not in known]
        if bad:
            raise ValueError(f"unknown categories {bad}; known: {', '.join(known)}")
        if "location" in v and COARSE_LOCATION in v:
            raise ValueError(f"grant either location or {COARSE_LOCATION}, not both")
        return v


class StatusConfig(_Model):
    path: FilePath | None = None
    interval: PositiveSeconds = 5.0

    @field_validator("path", mode="after")
    @classmethod
    def _path(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)


class RemoteConfig(_Model):
    """Remote commands: without this section the car accepts none (default deny)."""

    # The fleet's Ed25519 public key (PEM), written by `activate --command-key`.
    command_key: FilePath
    # May the backend grant consent categories (revoking is always allowed)?
    allow_remote_consent: bool = False

    @field_validator("command_key", mode="after")
    @classmethod
    def _key_path(cls, v: Path, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)


_QUALIFIED = r"^[^.\s]+\.[^.\s]+$"


class PowerConfig(_Model):
    """The vehicle lifecycle (README, Lifecycle): ignition, parking, sleep, low voltage."""

    # "Message.Signal" of the ignition; None: bus activity alone decides.
    ignition: str | None = Field(default=None, pattern=_QUALIFIED)
    # Values meaning "on": numbers compare with the decoded value, strings with its label.
    ignition_on: list[int | float | str] = Field(default=[1], min_length=1)
    park_after: PositiveSeconds = 60.0
    park_upload: NonNegSeconds = 30.0
    # argv (no shell) run once parked or at low voltage, with sleep_timeout; None: just wait.
    sleep_command: list[str] | None = Field(default=None, min_length=1)
    sleep_timeout: PositiveSeconds = 30.0
    # AT commands sent to every modem through the modem manager.
    modem_low_power: str = Field(default="AT+CFUN=4", pattern=r"^AT\S*$")
    modem_full_power: str = Field(default="AT+CFUN=1", pattern=r"^AT\S*$")
    voltage: str | None = Field(default=None, pattern=_QUALIFIED)
    voltage_file: FilePath | None = None
    # The file's number times this gives volts (an ADC in millivolts: 0.001).
    voltage_scale: float = Field(default=1.0, gt=0)
    cutoff_volts: float = Field(default=12.2, gt=0)
    cutoff_after: PositiveSeconds = 240.0
    resume_volts: float = Field(default=12.6, gt=0)
    # While parked nothing wakes the agent more often than this (voltage file, status).
    heartbeat: PositiveSeconds = 60.0

    @field_validator("voltage_file", mode="after")
    @classmethod
    def _path(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(v, info)

    @model_validator(mode="after")
    def _cross(self) -> PowerConfig:
        if self.voltage is not None and self.voltage_file is not None:
            raise ValueError("give either voltage (a signal) or voltage_file, not both")
        if self.resume_volts <= self.cutoff_volts:
            raise ValueError(
                f"resume_volts ({self.resume_volts:g}) must be above cutoff_volts "
                f"({self.cutoff_volts:g})"
            )
        return self


class GnssConfig(_Model):
    """The GNSS receiver and which of its fixes are sent (README, Location)."""

    source: Literal["nmea", "gpsd", "at"] = "nmea"
    # nmea: a serial device or any pyserial URL (str); gpsd: its TCP port (int, default 2947).
    port: str | Port | None = None
    baudrate: int = Field(default=9600, gt=0)
    host: Host = "127.0.0.1"  # gpsd
    modem: str | None = Field(default=None, min_length=1)  # at: the [[modem]] whose port polls
    # at: which position command (Quectel AT+QGPSLOC, SIMCom AT+CGNSINF); None: by AT+CGMI
    vendor: Literal["quectel", "simcom"] | None = None
    poll_interval: PositiveSeconds = 1.0  # at: seconds between position queries
    # No valid sentence (or no new position) for this long: "gnss down" (or "no fix").
    down_after: PositiveSeconds = 3.0
    # Fixes waiting between the receiver's thread and the pipeline; the oldest beyond is dropped.
    queue_limit: int = Field(default=10_000, ge=16, le=1_000_000)
    # Sampling (agent.policy.track): curve logging, or tracker rules.
    mode: Literal["curve", "rules"] = "curve"
    tolerance: float = Field(default=10.0, gt=0, le=10_000)
    max_delay: PositiveSeconds = 30.0
    max_points: int = Field(default=600, ge=2, le=100_000)
    min_interval: NonNegSeconds = 1.0
    max_interval: PositiveSeconds = 60.0
    distance: float = Field(default=100.0, gt=0)
    heading: float = Field(default=10.0, gt=0, le=180)
    speed_change: float = Field(default=10.0, gt=0)
    parked_interval: PositiveSeconds = 3600.0
    parked_speed: float = Field(default=3.0, ge=0)

    @model_validator(mode="after")
    def _by_source(self) -> GnssConfig:
        if self.source == "nmea" and not (isinstance(self.port, str) and self.port):
            raise ValueError(
                'source "nmea" needs port = "<device or pyserial URL>", e.g. "/dev/ttyUSB1"'
            )
        if self.source == "gpsd" and isinstance(self.port, str):
            raise ValueError('source "gpsd" takes port as a number (gpsd listens on 2947)')
        if self.source == "at" and self.modem is None:
            raise ValueError('source "at" needs modem = "<name of a [[modem]]>"')
        if self.source != "at" and self.modem is not None:
            raise ValueError(f'modem is only for source "at", not "{self.source}"')
        if self.source != "at" and self.vendor is not None:
            raise ValueError(f'vendor is only for source "at", not "{self.source}"')
        if self.max_interval < self.min_interval:
            raise ValueError("max_interval must be at least min_interval")
        return self

    @property
    def gpsd_port(self) -> int:
        return self.port if isinstance(self.port, int) else 2947


class ZoneConfig(_Model):
    """A privacy zone: a circle around a place (degrees, metres) where no fix is kept."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius: float = Field(gt=0, le=100_000)


class PrivacyConfig(_Model):
    """Location privacy on the box (README, Location): zones and trip ends."""

    zones: list[ZoneConfig] = Field(default_factory=list, max_length=256)
    # Fixes within this distance of where a trip starts and ends are withheld (0: off).
    trip_end_radius: float = Field(default=500.0, ge=0, le=100_000)
    # The receiver down (or, without [power], the CAN position silent) this long ends a trip.
    trip_gap: PositiveSeconds = 300.0

    @field_validator("zones")
    @classmethod
    def _unique(cls, v: list[ZoneConfig]) -> list[ZoneConfig]:
        names = [z.name for z in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"zone names must be unique: {', '.join(dup)}")
        return v


class Config(_Model):
    vehicle: VehicleConfig
    bus: list[BusConfig] = Field(min_length=1)
    signal: list[SignalConfig] = Field(default_factory=list)
    trigger: list[TriggerConfig] = Field(default_factory=list, max_length=1024)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    updates: UpdatesConfig = Field(default_factory=UpdatesConfig)
    mqtt: MqttConfig | None = None
    outbox: OutboxConfig | None = None
    modem: list[ModemConfig] = Field(default_factory=list, max_length=3)
    modems: ModemPolicyConfig = Field(default_factory=ModemPolicyConfig)
    consent: ConsentConfig | None = None
    status: StatusConfig = Field(default_factory=StatusConfig)
    remote: RemoteConfig | None = None
    power: PowerConfig | None = None
    diagnostics: list[DiagnosticsConfig] = Field(default_factory=list, max_length=8)
    gnss: GnssConfig | None = None
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    source: Path | None = Field(default=None, exclude=True)
    # Under a collection plan: the base config's [[signal]] entries that name a coordinate of
    # the CAN position (agent.canposition), which keep their role whatever the plan selects.
    _base_positions: list[SignalConfig] = PrivateAttr(default_factory=list)

    @property
    def base_positions(self) -> list[SignalConfig]:
        return self._base_positions

    @model_validator(mode="after")
    def _cross(self) -> Config:
        names = [b.name for b in self.bus]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"bus names must be unique: {', '.join(dup)}")
        for i, s in enumerate(self.signal):
            if s.bus is not None and s.bus not in names:
                raise ValueError(f"signal[{i}].bus: no [[bus]] named {s.bus!r}")
        wire = [s.name for s in self.signal if s.name]
        dup = sorted({n for n in wire if wire.count(n) > 1})
        if dup:
            raise ValueError(f"signal wire names must be unique: {', '.join(dup)}")
        tnames = [t.name for t in self.trigger]
        dup = sorted({n for n in tnames if tnames.count(n) > 1})
        if dup:
            raise ValueError(f"trigger names must be unique: {', '.join(dup)}")
        mnames = [m.name for m in self.modem]
        if len(set(mnames)) != len(mnames):
            raise ValueError("modem names must be unique")
        for i, d in enumerate(self.diagnostics):
            live = [b for b in self.bus if b.name == d.bus and not b.is_replay]
            if not live:
                raise ValueError(f"diagnostics[{i}].bus: no live [[bus]] named {d.bus!r}")
            if d.isotp == "kernel" and live[0].interface != "socketcan":
                raise ValueError(
                    f'diagnostics[{i}].isotp: "kernel" needs a socketcan bus; bus {d.bus!r} is '
                    f'on interface {live[0].interface!r} (use "auto" or "user")'
                )
        dbus = [d.bus for d in self.diagnostics]
        if len(set(dbus)) != len(dbus):
            raise ValueError("one [[diagnostics]] section per bus")
        if self.gnss is not None and self.gnss.modem is not None and self.gnss.modem not in mnames:
            raise ValueError(f"gnss.modem: no [[modem]] named {self.gnss.modem!r}")
        return self

    @property
    def all_replay(self) -> bool:
        return all(b.is_replay for b in self.bus)


class PlanModel(_Model):
    """A collection plan: the remote form of the ``[[signal]]`` and ``[[trigger]]`` sections,
    validated by the same models. A section present replaces the config's; one absent keeps
    it."""

    id: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=0)
    expires: int | None = Field(default=None, ge=0, description="Unix milliseconds")
    signal: list[SignalConfig] | None = None
    trigger: list[TriggerConfig] | None = Field(default=None, max_length=1024)


def merge_plan(base: Config, plan: PlanModel) -> Config:
    """The config in force under ``plan``: ``base`` with the plan's sections, validated again
    as a whole (bus names, unique names); raises ConfigError with one line per problem."""
    data = base.model_dump()
    if plan.signal is not None:
        data["signal"] = [s.model_dump() for s in plan.signal]
    if plan.trigger is not None:
        data["trigger"] = [t.model_dump() for t in plan.trigger]
    try:
        merged = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(*format_validation_error(f"plan {plan.id!r}", err)) from None
    merged = merged.model_copy(update={"source": base.source})
    # A plan chooses what is sent, not whether the privacy zones apply to the car's position.
    merged._base_positions = [
        e for e in base.signal if e.location or e.name in POSITION_NAMES
    ] + base.base_positions
    return merged


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _shown(value: Any) -> str:
    """A value as it was written in TOML, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_TYPE_NAMES = {
    "bool_type": "true or false",
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
}


def field_path(loc: tuple[Any, ...]) -> str:
    """The dotted path of a pydantic error location, as the user writes it in TOML."""
    return _loc(tuple(p for p in loc if not str(p).startswith("function-") and p not in _TAGS))


def error_message(e: Any) -> str:
    """One pydantic error as a sentence about the value the user wrote."""
    kind = e["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see README, Configuration)"
    if kind == "missing":
        return "required key is missing"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, not {_shown(e['input'])}"
    return str(e["msg"]).removeprefix("Value error, ")


def format_validation_error(source: str, err: ValidationError) -> list[str]:
    return [f"{source}: {field_path(e['loc'])}: {error_message(e)}" for e in err.errors()]


def parse_config(data: dict[str, Any], *, base: Path, source: str) -> Config:
    try:
        return Config.model_validate(data, context={"base": base})
    except ValidationError as err:
        raise ConfigError(*format_validation_error(source, err)) from None


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raise ConfigError with one line per problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err.strerror or err}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: TOML syntax error: {err}") from None
    cfg = parse_config(data, base=path.resolve().parent, source=str(path))
    return cfg.model_copy(update={"source": path})
