"""gpsd as a GNSS source: its JSON protocol over TCP -> fixes, and the receiver's state.

``GpsdReader`` does no I/O and has no clock of its own (it logs bad reports, rate limited):
the caller feeds the bytes as they arrive with ``now`` (monotonic seconds). Lines end in LF; one
longer than ``MAX_LINE`` is dropped up to its end and counted (gpsd's own reports stay well
below it; a SKY with every satellite in view is a few kilobytes). Each line is parsed with
``json`` and validated with pydantic models (strict types, ranges, finite numbers); a line that
is not JSON, not an object, or has a field of the wrong type or out of range is counted as
``malformed`` and skipped, never the stream.

* ``TPV`` (one per receiver epoch) is an epoch: ``mode`` 2 or 3 with ``lat``, ``lon`` and
  ``time`` is a fix (altitude from ``altMSL``, else the older ``alt``; ``speed`` m/s -> km/h;
  heading from ``track``; accuracy from ``eph``, else from ``epx``/``epy``); mode 0 or 1 is a
  ``no fix`` epoch. A TPV whose time is not after the last fix's is a repeat (counted, no new
  fix), so the fixes handed on are in time order.
* ``SKY`` gives HDOP and the satellites used, applied to the following fixes, and shows the
  receiver alive. ``VERSION``, ``DEVICES``, ``WATCH`` and the others only show gpsd alive, not
  the receiver; they are counted as ``ignored``.
* With ``device`` set, reports of other receivers on the same gpsd are ignored.

``GpsdSource`` connects (``host``, ``port``, default 127.0.0.1:2947), asks for the JSON watch
stream and reads it on its own thread; when gpsd goes away, refuses, closes the connection or
says nothing for ``idle_reconnect`` seconds it reconnects with the agent's backoff, the state
``gnss down`` meanwhile. Paused (agent.sources.fixsource) or stopped, it sends
``?WATCH={"enable":false}`` and closes the connection; a resume connects anew. It does not
decide what is sent (agent.policy).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import socket
import time
from collections.abc import Callable
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from agent.backoff import Backoff
from agent.policy.geo import Fix
from agent.policy.privacy import PrivacyFilter
from agent.policy.track import TrackSampler
from agent.ratelimit import RateLimitedLog
from agent.sources.fixsource import SLICE, FixSource, GnssState, Liveness
from agent.sources.lines import LineFramer

log = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 2947
MAX_LINE = 16_384
MS_KMH = 3.6
UERE_M = 5.0  # as for NMEA: HorizontalAccuracy from HDOP when gpsd gives no error estimate
# gpsd's TPV status -> the GGA quality indicator the Fix carries (2 DGPS, 4 RTK fixed,
# 5 RTK float, 6 dead reckoning); everything else is a plain fix.
_QUALITY = {2: 2, 3: 4, 4: 5, 5: 6, 6: 6}


class _Report(BaseModel):
    # strict: gpsd sends numbers as JSON numbers; "3" for a mode is a broken peer, not a value
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, frozen=True, strict=True)


class _Class(_Report):
    cls: str = Field(alias="class", max_length=32)
    device: str | None = Field(default=None, max_length=1024)


class Tpv(_Report):
    """gpsd's time-position-velocity report (the fields the agent uses)."""

    mode: int = Field(ge=0, le=3)
    status: int | None = Field(default=None, ge=0)
    time: AwareDatetime | None = Field(default=None, strict=False)  # ISO 8601 text
    lat: float | None = Field(default=None, ge=-90.0, le=90.0)
    lon: float | None = Field(default=None, ge=-180.0, le=180.0)
    altMSL: float | None = None  # noqa: N815 (gpsd's names)
    alt: float | None = None
    track: float | None = Field(default=None, ge=0.0, le=360.0)
    speed: float | None = Field(default=None, ge=0.0)
    eph: float | None = Field(default=None, ge=0.0)
    epx: float | None = Field(default=None, ge=0.0)
    epy: float | None = Field(default=None, ge=0.0)


class _Sat(_Report):
    used: bool = False


class Sky(_Report):
    """gpsd's sky view report: dilution and satellites."""

    hdop: float | None = Field(default=None, ge=0.0)
    uSat: int | None = Field(default=None, ge=0)  # noqa: N815
    satellites: list[_Sat] | None = Field(default=None, max_length=1024)


def watch_command(device: str | None = None, *, enable: bool = True) -> bytes:
    """The ``?WATCH`` request for JSON reports (of one device, if given), or with ``enable``
    false the request that ends the watch."""
    body: dict[str, Any] = {"enable": True, "json": True} if enable else {"enable": False}
    if device is not None:
        body["device"] = device
    return b"?WATCH=" + json.dumps(body, separators=(",", ":")).encode() + b";\n"


class GpsdReader:
    """Stateful gpsd JSON stream reader (see the module docstring)."""

    def __init__(self, down_after: float = 3.0, device: str | None = None) -> None:
        self.down_after = down_after
        self.device = device
        self.counters = dict.fromkeys(
            ("reports", "malformed", "overlong", "ignored", "repeated", "no_time", "fixes"), 0
        )
        self.version: str | None = None
        self._live = Liveness(down_after)
        self._lines = LineFramer(MAX_LINE)
        self._hdop: float | None = None
        self._used: int | None = None
        self._last_t: int | None = None
        self._bad_log = RateLimitedLog(log)

    def restart(self) -> None:
        """A new connection: a partial line of the old one is not continued."""
        self._lines.clear()

    def feed(self, data: bytes, now: float) -> list[Fix]:
        """Reads a chunk of the stream; returns the fixes of the TPV reports it completed."""
        out: list[Fix] = []
        for line in self._lines.feed(data):
            if line.strip():
                self._line(line, now, out)
        self.counters["overlong"] = self._lines.overlong
        return out

    def state(self, now: float) -> GnssState:
        return self._live.state(now)

    def forget(self) -> None:
        """The stream was not read for a while (paused): nothing heard before counts."""
        self.restart()
        self._live.forget()

    def _line(self, line: bytes, now: float, out: list[Fix]) -> None:
        try:
            obj = json.loads(line)
            head = _Class.model_validate(obj)
            if self.device is not None and head.device not in (None, self.device):
                self.counters["ignored"] += 1
                return
            if head.cls == "TPV":
                fix = self._tpv(Tpv.model_validate(obj), now)
                if fix is not None:
                    out.append(fix)
            elif head.cls == "SKY":
                sky = Sky.model_validate(obj)
                self._sky(sky)
                self._live.heard(now)
            else:
                if head.cls == "VERSION" and isinstance(obj.get("release"), str):
                    self.version = obj["release"][:64]
                self.counters["ignored"] += 1
                return
        except (ValueError, RecursionError, ValidationError) as err:
            # ValueError covers json's decode errors; RecursionError a hostile nesting depth.
            self.counters["malformed"] += 1
            self._bad_log.warning("malformed", "gpsd: malformed report: %.200s", err)
            return
        self.counters["reports"] += 1

    def _sky(self, sky: Sky) -> None:
        if sky.hdop is not None:
            self._hdop = sky.hdop
        if sky.uSat is not None:
            self._used = sky.uSat
        elif sky.satellites is not None:
            self._used = sum(1 for s in sky.satellites if s.used)

    def _tpv(self, tpv: Tpv, now: float) -> Fix | None:
        if tpv.mode < 2 or tpv.lat is None or tpv.lon is None:
            self._live.epoch(now, fix=False)
            return None
        if tpv.time is None:
            self.counters["no_time"] += 1
            self._live.epoch(now, fix=False)
            return None
        self._live.epoch(now, fix=True)
        t = int(round(tpv.time.astimezone(dt.UTC).timestamp() * 1000))
        if self._last_t is not None and t <= self._last_t:
            self.counters["repeated"] += 1
            return None
        self._last_t = t
        self.counters["fixes"] += 1
        accuracy = tpv.eph
        if accuracy is None and tpv.epx is not None and tpv.epy is not None:
            accuracy = math.hypot(tpv.epx, tpv.epy)
        if accuracy is None and self._hdop is not None:
            accuracy = self._hdop * UERE_M
        altitude = None if tpv.mode < 3 else (tpv.altMSL if tpv.altMSL is not None else tpv.alt)
        return Fix(
            t=t,
            lat=tpv.lat,
            lon=tpv.lon,
            altitude=altitude,
            speed=None if tpv.speed is None else round(tpv.speed * MS_KMH, 3),
            heading=tpv.track,
            hdop=self._hdop,
            quality=_QUALITY.get(tpv.status or 1, 1),
            satellites=self._used,
            accuracy=None if accuracy is None else round(accuracy, 1),
        )


class GpsdSource(FixSource):
    """A gpsd connection and its thread (``start``/``stop``); fixes are taken with ``take``."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        device: str | None = None,
        track: TrackSampler | None = None,
        privacy: PrivacyFilter | None = None,
        down_after: float = 3.0,
        trip_gap: float = 300.0,
        queue_limit: int = 10_000,
        idle_reconnect: float = 30.0,
        connect_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            f"gpsd {host}:{port}",
            track=track,
            privacy=privacy,
            trip_gap=trip_gap,
            queue_limit=queue_limit,
            clock=clock,
        )
        self.host, self.port = host, port
        self.reader: GpsdReader = GpsdReader(down_after, device)
        self.idle_reconnect = idle_reconnect
        self.connect_timeout = connect_timeout
        self.connects = 0  # connections made to gpsd
        self.connect_failures = 0
        self._watch = watch_command(device)
        self._unwatch = watch_command(device, enable=False)

    def _run(self) -> None:
        backoff = Backoff(0.5, 30.0, stable_after=30.0)
        while not self._halt.is_set():
            try:
                sock = socket.create_connection(
                    (self.host, self.port), timeout=self.connect_timeout
                )
            except OSError as err:
                self.connect_failures += 1
                log.warning("%s: cannot connect: %s", self.name, err)
                self._pause(backoff.next_delay())
                continue
            self.connects += 1
            backoff.succeeded()
            try:
                self._session(sock)
            except OSError as err:
                log.warning("%s: %s", self.name, err)
            finally:
                sock.close()
            self._pause(backoff.next_delay())

    def _session(self, sock: socket.socket) -> None:
        """Reads one connection until it fails, closes, falls silent or the source stops."""
        sock.settimeout(SLICE)
        sock.sendall(self._watch)
        self.reader.restart()
        last_data = self._clock()
        while not self._halt.is_set():
            try:
                data = sock.recv(65_536)
            except TimeoutError:
                data = None
            else:
                if not data:
                    raise ConnectionError("gpsd closed the connection")
            now = self._clock()
            if data:
                last_data = now
                self._offer(self.reader.feed(data, now))
            self._tick(now)
            if now - last_data >= self.idle_reconnect:
                raise ConnectionError(f"nothing from gpsd for {self.idle_reconnect:g} s")
        # Paused or stopped: the watch ends before the connection does (gpsd may then let the
        # receiver idle); a connection that failed meanwhile is closed all the same.
        with contextlib.suppress(OSError):
            sock.sendall(self._unwatch)
