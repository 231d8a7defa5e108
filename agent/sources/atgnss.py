"""A modem's GNSS engine as a source: fixes polled over its AT port, through the modem manager.

The modem manager owns the port; this source never opens it. Every ``interval`` seconds it asks
the manager to run one position query on the named modem (``ModemManager.run_command``: between
the manager's own probes, serialized with them, bounded by ``command_timeout``).

* Dialect: ``vendor`` (``"quectel"`` or ``"simcom"``) or, when not given, the modem's
  ``AT+CGMI`` answer. Quectel: ``AT+QGPS=1`` switches the engine on, ``AT+QGPSLOC=2`` answers
  ``+QGPSLOC: <UTC>,<lat>,<lon>,<hdop>,<altitude>,<fix>,<cog>,<spkm>,<spkn>,<date>,<nsat>``
  (decimal degrees; ``<cog>`` is ddd.mm, degrees and minutes), ``+CME ERROR: 516`` when there
  is no fix, ``505`` when the engine is off. SIMCom: ``AT+CGNSPWR=1``, then ``AT+CGNSINF``
  answers ``+CGNSINF: <run>,<fix>,<UTC yyyyMMddhhmmss.sss>,<lat>,<lon>,<alt>,<km/h>,<course>,
  <mode>,,<hdop>,<pdop>,<vdop>,,<in view>,<used>,...,<hpa>,...``.
* The engine is switched on once, and again only when the modem says it is off (a modem that
  was reset), at most once per ``enable_interval``. Paused (agent.sources.fixsource), the
  source stops polling and switches the engine off (Quectel ``AT+QGPSEND``, SIMCom
  ``AT+CGNSPWR=0``); the first poll after the resume switches it on again.
* The fields of an answer are validated by pydantic models (types, ranges, finite numbers,
  dates that exist); an answer that does not fit is counted as ``malformed``, never a crash.
* State, as for every GNSS source (agent.sources.fixsource.Liveness): an answer with a fix is a
  ``fix`` epoch, a "no fix" answer a ``no fix`` epoch; a query without an answer (timeout, port
  gone, modem busy with a long probe, ``ERROR``) is counted and shows nothing, so a modem that
  stops answering turns into ``gnss down`` after ``down_after``. A fix whose time is not after
  the last one's is a repeat: counted, not a new epoch, so an engine that keeps answering its
  last position ages into ``no fix`` instead of painting it fresh.

It does not decide what is sent (agent.policy) nor what the modem manager does with the modem.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.modem.report import ModemError
from agent.modem.transport import AtResponse
from agent.policy.geo import Fix
from agent.policy.privacy import PrivacyFilter
from agent.policy.track import TrackSampler
from agent.ratelimit import Interval, RateLimitedLog
from agent.sources.fixsource import FixSource, GnssState, Liveness

log = logging.getLogger(__name__)

VENDORS = ("quectel", "simcom")
CME_SESSION_ONGOING, CME_SESSION_INACTIVE, CME_NOT_FIXED = 504, 505, 516
KNOT_KMH = 1.852
UERE_M = 5.0  # HorizontalAccuracy from HDOP where the modem gives no accuracy of its own
_MIN_GAP = 0.05  # seconds between two queries, whatever the interval


class ModemCommands(Protocol):
    """What the source needs of the modem manager."""

    def run_command(self, modem: str, command: str, *, timeout: float) -> AtResponse: ...


class _Answer(BaseModel):
    # Lax types: every field arrives as text; ranges and finiteness are still checked.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class QgpsLoc(_Answer):
    utc: str = Field(pattern=r"^\d{6}(\.\d{1,3})?$")
    lat: float = Field(ge=-90.0, le=90.0)
    lon: float = Field(ge=-180.0, le=180.0)
    hdop: float | None = Field(default=None, ge=0.0)
    altitude: float | None = None
    fix: int = Field(ge=2, le=3)
    cog: str | None = Field(default=None, pattern=r"^\d{1,3}(\.[0-5]\d)?$")
    spkm: float | None = Field(default=None, ge=0.0)
    spkn: float | None = Field(default=None, ge=0.0)
    date: str = Field(pattern=r"^\d{6}$")
    nsat: int | None = Field(default=None, ge=0, le=255)


class CgnsInf(_Answer):
    run: int = Field(ge=0, le=1)
    fix: int | None = Field(default=None, ge=0, le=1)
    utc: str | None = Field(default=None, pattern=r"^\d{14}(\.\d{1,3})?$")
    lat: float | None = Field(default=None, ge=-90.0, le=90.0)
    lon: float | None = Field(default=None, ge=-180.0, le=180.0)
    altitude: float | None = None
    speed: float | None = Field(default=None, ge=0.0)  # km/h
    course: float | None = Field(default=None, ge=0.0, le=360.0)
    hdop: float | None = Field(default=None, ge=0.0)
    used: int | None = Field(default=None, ge=0, le=255)
    hpa: float | None = Field(default=None, ge=0.0)  # horizontal position accuracy, metres


_QGPSLOC_FIELDS = ("utc", "lat", "lon", "hdop", "altitude", "fix", "cog", "spkm", "spkn", "date")
# CGNSINF positions of the fields read (the others are reserved or not used)
_CGNSINF_FIELDS = {
    0: "run",
    1: "fix",
    2: "utc",
    3: "lat",
    4: "lon",
    5: "altitude",
    6: "speed",
    7: "course",
    10: "hdop",
    15: "used",
    19: "hpa",
}


def _values(lines: tuple[str, ...], prefix: str) -> list[str] | None:
    """The comma-separated values of the answer line with ``prefix``, or None."""
    for line in lines:
        if line.startswith(prefix):
            return [v.strip() for v in line[len(prefix) :].split(",")]
    return None


def _ms(when: dt.datetime) -> int:
    return int(round(when.timestamp() * 1000))


def parse_qgpsloc(lines: tuple[str, ...]) -> Fix:
    """A Quectel ``AT+QGPSLOC=2`` answer as a fix; ValueError when it does not fit."""
    values = _values(lines, "+QGPSLOC:")
    if values is None or len(values) not in (10, 11):
        raise ValueError("no +QGPSLOC line of 10 or 11 fields")
    names = (*_QGPSLOC_FIELDS, "nsat")
    q = QgpsLoc.model_validate({k: v for k, v in zip(names, values, strict=False) if v != ""})
    utc = dt.datetime.strptime(f"{q.date}{q.utc.split('.')[0]}", "%d%m%y%H%M%S")
    frac = float("0." + q.utc.split(".")[1]) if "." in q.utc else 0.0
    when = utc.replace(tzinfo=dt.UTC) + dt.timedelta(seconds=frac)
    heading = None
    if q.cog is not None:
        deg, _, minutes = q.cog.partition(".")
        heading = int(deg) + (int(minutes) / 60.0 if minutes else 0.0)
        if heading >= 360.0:
            raise ValueError(f"course {q.cog} out of range")
    speed = q.spkm if q.spkm is not None else (None if q.spkn is None else q.spkn * KNOT_KMH)
    return Fix(
        t=_ms(when),
        lat=q.lat,
        lon=q.lon,
        altitude=q.altitude if q.fix == 3 else None,
        speed=None if speed is None else round(speed, 3),
        heading=heading,
        hdop=q.hdop,
        quality=1,
        satellites=q.nsat,
        accuracy=None if q.hdop is None else round(q.hdop * UERE_M, 1),
    )


def parse_cgnsinf(lines: tuple[str, ...]) -> CgnsInf:
    """A SIMCom ``AT+CGNSINF`` answer, validated; ValueError when it does not fit."""
    values = _values(lines, "+CGNSINF:")
    if values is None or len(values) < 2:
        raise ValueError("no +CGNSINF line")
    doc = {name: values[i] for i, name in _CGNSINF_FIELDS.items() if i < len(values) and values[i]}
    inf = CgnsInf.model_validate(doc)
    if inf.run == 1 and inf.fix == 1 and (inf.lat is None or inf.lon is None or inf.utc is None):
        raise ValueError("a fix without its position or time")
    return inf


def cgnsinf_fix(inf: CgnsInf) -> Fix:
    assert inf.lat is not None and inf.lon is not None and inf.utc is not None
    utc = dt.datetime.strptime(inf.utc.split(".")[0], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    frac = float("0." + inf.utc.split(".")[1]) if "." in inf.utc else 0.0
    accuracy = inf.hpa if inf.hpa is not None else (None if inf.hdop is None else inf.hdop * UERE_M)
    return Fix(
        t=_ms(utc + dt.timedelta(seconds=frac)),
        lat=inf.lat,
        lon=inf.lon,
        altitude=inf.altitude,
        speed=inf.speed,
        heading=inf.course,
        hdop=inf.hdop,
        quality=1,
        satellites=inf.used,
        accuracy=None if accuracy is None else round(accuracy, 1),
    )


def vendor_of(manufacturer: str) -> str | None:
    """``quectel`` or ``simcom`` from an ``AT+CGMI`` answer, None for another maker."""
    text = manufacturer.upper()
    for vendor in VENDORS:
        if vendor.upper() in text:
            return vendor
    return None


class AtGnssReader:
    """Answers -> fixes and the engine's state; no I/O of its own."""

    def __init__(self, down_after: float = 3.0) -> None:
        self.down_after = down_after
        self.counters = dict.fromkeys(
            ("queries", "fixes", "no_fix", "repeated", "malformed", "errors", "unanswered"), 0
        )
        self._live = Liveness(down_after)
        self._last_t: int | None = None

    def state(self, now: float) -> GnssState:
        return self._live.state(now)

    def forget(self) -> None:
        """The engine was not polled for a while (paused): no answer before counts."""
        self._live.forget()

    def fix(self, fix: Fix, now: float) -> Fix | None:
        if self._last_t is not None and fix.t <= self._last_t:
            self.counters["repeated"] += 1
            self._live.heard(now)
            return None
        self._last_t = fix.t
        self.counters["fixes"] += 1
        self._live.epoch(now, fix=True)
        return fix

    def no_fix(self, now: float) -> None:
        self.counters["no_fix"] += 1
        self._live.epoch(now, fix=False)


class AtGnssSource(FixSource):
    """Polls one modem's GNSS engine on its own thread; fixes are taken with ``take``."""

    def __init__(
        self,
        modems: ModemCommands,
        modem: str,
        *,
        vendor: str | None = None,
        interval: float = 1.0,
        command_timeout: float = 2.0,
        enable_interval: float = 30.0,
        track: TrackSampler | None = None,
        privacy: PrivacyFilter | None = None,
        down_after: float = 3.0,
        trip_gap: float = 300.0,
        queue_limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if vendor is not None and vendor not in VENDORS:
            raise ValueError(f"vendor {vendor!r}: one of {', '.join(VENDORS)}")
        super().__init__(
            f"modem {modem}",
            track=track,
            privacy=privacy,
            trip_gap=trip_gap,
            queue_limit=queue_limit,
            clock=clock,
        )
        self.modems, self.modem = modems, modem
        self.vendor = vendor
        self.interval = interval
        self.command_timeout = command_timeout
        self.reader: AtGnssReader = AtGnssReader(down_after)
        self.engine_on = False
        self._enable_gate = Interval(enable_interval, clock)
        self._vendor_gate = Interval(enable_interval, clock)
        self._log = RateLimitedLog(log)
        self._bug_log = Interval(60.0, clock)

    def _run(self) -> None:
        while not self._halt.is_set():
            started = self._clock()
            try:
                self._poll()
            except Exception:  # a bug in one poll must not end the source
                self.reader.counters["errors"] += 1
                if self._bug_log.allow():
                    log.exception("%s: poll failed", self.name)
            self._tick(self._clock())
            # At least a short gap even after a slow query: a probe waiting for the port gets it.
            self._pause(max(self.interval - (self._clock() - started), _MIN_GAP))

    def _release(self) -> None:
        """Paused: the engine off (``AT+QGPSEND``, ``AT+CGNSPWR=0``), so a parked car's modem
        does not keep tracking; switched on again at the first poll after the resume."""
        self._enable_gate = Interval(self._enable_gate.seconds, self._clock)
        if self.vendor is None:
            return  # no dialect known: the engine was never switched on
        self.engine_on = False
        r = self._ask("AT+QGPSEND" if self.vendor == "quectel" else "AT+CGNSPWR=0")
        # Quectel answers 505 when the engine was already off.
        if r is not None and (r.ok or r.code == CME_SESSION_INACTIVE):
            log.info("%s: GNSS engine off", self.name)
        elif r is not None:
            self._log.warning("disable", "%s: GNSS engine not switched off: %s", self.name, r.final)

    def _ask(self, command: str) -> AtResponse | None:
        try:
            return self.modems.run_command(self.modem, command, timeout=self.command_timeout)
        except ModemError as err:
            self.reader.counters["unanswered"] += 1
            self._log.warning(("unanswered", command), "%s: %s: %s", self.name, command, err)
            return None

    def _poll(self) -> None:
        # The gates wait only after a real answer: a modem busy with a probe is asked again at
        # the next poll.
        if self.vendor is None:
            if not self._vendor_gate.ready():
                return
            r = self._ask("AT+CGMI")
            if r is None:
                return
            self._vendor_gate.allow()
            maker = " ".join(r.lines)
            self.vendor = vendor_of(maker) if r.ok else None
            if self.vendor is None:
                self._log.warning(
                    "vendor",
                    "%s: maker %r has no known GNSS commands; set [gnss] vendor",
                    self.name,
                    maker[:80],
                )
                return
            log.info("%s: GNSS commands of %s", self.name, self.vendor)
        if not self.engine_on and self._enable_gate.ready():
            self._enable()
        if self.vendor == "quectel":
            self._quectel()
        else:
            self._simcom()

    def _enable(self) -> None:
        quectel = self.vendor == "quectel"
        r = self._ask("AT+QGPS=1" if quectel else "AT+CGNSPWR=1")
        if r is None:
            return
        self._enable_gate.allow()
        self.engine_on = r.ok or (quectel and r.code == CME_SESSION_ONGOING)
        if self.engine_on:
            log.info("%s: GNSS engine on", self.name)
        else:
            self._log.warning("enable", "%s: GNSS engine not switched on: %s", self.name, r.final)

    def _quectel(self) -> None:
        r = self._ask("AT+QGPSLOC=2")
        if r is None:
            return
        self.reader.counters["queries"] += 1
        now = self._clock()
        if r.ok:
            try:
                fix = parse_qgpsloc(r.lines)
            except ValueError as err:  # pydantic's ValidationError is a ValueError
                self._malformed(r, err)
                return
            self._accept(fix, now)
        elif r.code in (CME_NOT_FIXED, CME_SESSION_INACTIVE):
            self.engine_on = self.engine_on and r.code != CME_SESSION_INACTIVE
            self.reader.no_fix(now)
        else:
            self._error(r)

    def _simcom(self) -> None:
        r = self._ask("AT+CGNSINF")
        if r is None:
            return
        self.reader.counters["queries"] += 1
        now = self._clock()
        if not r.ok:
            self._error(r)
            return
        try:
            inf = parse_cgnsinf(r.lines)
            fix = cgnsinf_fix(inf) if inf.run == 1 and inf.fix == 1 else None
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            self._malformed(r, err)
            return
        if fix is not None:
            self._accept(fix, now)
        else:
            self.engine_on = self.engine_on and inf.run == 1
            self.reader.no_fix(now)

    def _accept(self, fix: Fix, now: float) -> None:
        kept = self.reader.fix(fix, now)
        if kept is not None:
            self._offer([kept])

    def _malformed(self, r: AtResponse, err: Exception) -> None:
        self.reader.counters["malformed"] += 1
        self._log.warning(
            "malformed", "%s: %s answer does not parse: %.200s", self.name, r.command, err
        )

    def _error(self, r: AtResponse) -> None:
        self.reader.counters["errors"] += 1
        self._log.warning(("error", r.command), "%s: %s: %s", self.name, r.command, r.final)
