"""NMEA 0183 from a GNSS receiver: byte stream -> fixes, and the receiver's state.

Pure: no I/O, no clock of its own. The caller feeds the bytes as they arrive, with ``now``
(seconds on a monotonic clock), and asks for the state with ``now``.

* Framing: lines end in LF (CR optional); a chunk may end mid-sentence (the rest is kept for the
  next chunk). Bytes before the last ``$`` of a line are garbage (a receiver that restarted
  mid-sentence). A line longer than ``MAX_LINE`` is dropped up to its end and counted: the
  standard allows 82 characters, receivers a little more.
* Parsing is pynmea2's (``check=True``: a sentence without its ``*hh`` checksum, or with a wrong
  one, is rejected). RMC, GGA, GSA and VTG are read from any talker (GP, GN, GL, GA, GB, BD...);
  other sentence types are counted as ``ignored``. A field that does not parse rejects its
  sentence (``malformed``), never the stream.
* Epochs: the sentences of one UTC time of day form one epoch; it is closed when both RMC and
  GGA of that time were seen, or when a sentence of another time arrives. GSA and VTG (no time)
  belong to the open epoch. An epoch with a valid position (RMC status ``A`` or GGA quality > 0)
  and a known date becomes a ``Fix``; one without a position is a ``no fix`` epoch.
* State: ``gnss down`` when no valid sentence came for ``down_after`` seconds; ``no fix`` when
  sentences come but the last epoch had no position, or it is older than ``down_after``;
  ``fix`` otherwise. A stale position is never reported as a fix.

It does not open ports (agent.sources.gnss) nor decide which fixes are sent (agent.policy).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import pynmea2

from agent.policy.geo import Fix
from agent.sources.fixsource import GnssState, Liveness
from agent.sources.lines import LineFramer

# NMEA 0183 allows 82 characters; some receivers send longer proprietary sentences.
MAX_LINE = 200
KNOT_KMH = 1.852
# HorizontalAccuracy estimated from HDOP: HDOP times a typical user range error of 5 m.
UERE_M = 5.0
_TYPES = frozenset({"RMC", "GGA", "GSA", "VTG"})


@dataclass
class _Epoch:
    tod: dt.time
    date: dt.date | None = None
    lat: float | None = None
    lon: float | None = None
    rmc: bool = False
    gga: bool = False
    valid: bool = False
    altitude: float | None = None
    speed: float | None = None
    heading: float | None = None
    hdop: float | None = None
    quality: int = 0
    satellites: int | None = None


def _opt_float(v: object) -> float | None:
    """A field as a finite float, None when empty; NaN and infinities are malformed."""
    if v is None or v == "":
        return None
    f = float(v)  # type: ignore[arg-type]
    if not math.isfinite(f):
        raise ValueError(f"not a finite number: {v}")
    return f


@dataclass
class NmeaReader:
    """Stateful NMEA stream reader (see the module docstring)."""

    down_after: float = 3.0
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("sentences", "checksum", "malformed", "overlong", "ignored", "no_date", "fixes"), 0
        )
    )
    _lines: LineFramer = field(default_factory=lambda: LineFramer(MAX_LINE))
    _epoch: _Epoch | None = None
    _date: dt.date | None = None
    _live: Liveness = field(init=False)

    def __post_init__(self) -> None:
        self._live = Liveness(self.down_after)

    def feed(self, data: bytes, now: float) -> list[Fix]:
        """Reads a chunk of the stream; returns the fixes of the epochs it closed."""
        out: list[Fix] = []
        for line in self._lines.feed(data):
            self._line(line, now, out)
        self.counters["overlong"] = self._lines.overlong
        return out

    def _line(self, raw: bytes, now: float, out: list[Fix]) -> None:
        start = raw.rfind(b"$")
        if start < 0:
            if raw.strip():
                self.counters["malformed"] += 1
            return
        text = raw[start:].strip().decode("ascii", "replace")
        try:
            msg = pynmea2.parse(text, check=True)
        except pynmea2.ChecksumError:
            self.counters["checksum"] += 1
            return
        except (pynmea2.ParseError, ValueError, TypeError, AttributeError):
            self.counters["malformed"] += 1
            return
        self._live.heard(now)
        kind = getattr(msg, "sentence_type", "")
        if kind not in _TYPES:
            self.counters["ignored"] += 1
            return
        try:
            self._sentence(msg, kind, now, out)
        except (ValueError, TypeError, AttributeError, ArithmeticError, IndexError, KeyError):
            # IndexError: pynmea2 leaves trailing fields a short sentence lacks out of .data
            self.counters["malformed"] += 1
            return
        self.counters["sentences"] += 1

    def _sentence(self, msg: pynmea2.NMEASentence, kind: str, now: float, out: list[Fix]) -> None:
        if kind in ("GSA", "VTG"):
            ep = self._epoch
            if ep is None:
                return
            if kind == "GSA":
                hdop = _opt_float(msg.hdop)  # type: ignore[attr-defined]
                ep.hdop = ep.hdop if hdop is None else hdop
            else:
                kmh = _opt_float(msg.spd_over_grnd_kmph)  # type: ignore[attr-defined]
                track = _opt_float(msg.true_track)  # type: ignore[attr-defined]
                ep.speed = ep.speed if kmh is None else kmh
                ep.heading = ep.heading if track is None else track
            return
        tod = msg.timestamp  # type: ignore[attr-defined]
        if not isinstance(tod, dt.time):
            raise ValueError("no time")
        # Read every field before touching state, so a bad field rejects the whole sentence.
        if kind == "RMC":
            valid = msg.status == "A"  # type: ignore[attr-defined]
            date = msg.datestamp if msg.data[8] else None  # type: ignore[attr-defined]
            lat, lon = (msg.latitude, msg.longitude) if valid else (None, None)  # type: ignore[attr-defined]
            knots = _opt_float(msg.spd_over_grnd)  # type: ignore[attr-defined]
            course = _opt_float(msg.true_course)  # type: ignore[attr-defined]
        else:
            quality = int(msg.gps_qual or 0)  # type: ignore[attr-defined]
            valid = quality > 0
            lat, lon = (msg.latitude, msg.longitude) if valid else (None, None)  # type: ignore[attr-defined]
            altitude = _opt_float(msg.altitude)  # type: ignore[attr-defined]
            hdop = _opt_float(msg.horizontal_dil)  # type: ignore[attr-defined]
            sats = int(msg.num_sats) if msg.num_sats else None  # type: ignore[attr-defined]
        if lat is not None:
            if msg.lat_dir not in ("N", "S") or msg.lon_dir not in ("E", "W"):  # type: ignore[attr-defined]
                raise ValueError("bad hemisphere")
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):  # type: ignore[operator]
                raise ValueError("position out of range")
        if kind == "GGA" and not 0 <= quality <= 9:
            raise ValueError("GGA quality out of range")
        ep = self._epoch
        if ep is not None and ep.tod != tod:
            self._close(now, out)
            ep = None
        if ep is None:
            ep = self._epoch = _Epoch(tod)
        if kind == "RMC":
            ep.rmc = True
            if isinstance(date, dt.date):
                ep.date = self._date = date
            if knots is not None:
                ep.speed = knots * KNOT_KMH
            ep.heading = course if course is not None else ep.heading
            ep.quality = ep.quality or (1 if valid else 0)
        else:
            ep.gga = True
            ep.quality = quality
            ep.altitude = altitude
            ep.hdop = hdop if hdop is not None else ep.hdop
            ep.satellites = sats
        if valid:
            ep.valid = True
            ep.lat, ep.lon = float(lat), float(lon)  # type: ignore[arg-type]
        elif kind == "RMC" or ep.quality == 0:
            ep.valid = False
        if ep.rmc and ep.gga:
            self._close(now, out)

    def _close(self, now: float, out: list[Fix]) -> None:
        ep, self._epoch = self._epoch, None
        if ep is None:
            return
        self._live.epoch(now, fix=False)
        if not ep.valid or ep.lat is None or ep.lon is None:
            return
        date = ep.date or self._date
        if date is None:
            self.counters["no_date"] += 1
            return
        when = dt.datetime.combine(date, ep.tod.replace(tzinfo=None), tzinfo=dt.UTC)
        self._live.epoch(now, fix=True)
        self.counters["fixes"] += 1
        out.append(
            Fix(
                t=int(round(when.timestamp() * 1000)),
                lat=ep.lat,
                lon=ep.lon,
                altitude=ep.altitude,
                speed=None if ep.speed is None else round(ep.speed, 3),
                heading=ep.heading,
                hdop=ep.hdop,
                quality=ep.quality or 1,
                satellites=ep.satellites,
                accuracy=None if ep.hdop is None else round(ep.hdop * UERE_M, 1),
            )
        )

    def state(self, now: float) -> GnssState:
        """The receiver's state at ``now``; never ``fix`` for a position older than down_after."""
        return self._live.state(now)

    def forget(self) -> None:
        """The stream was not read for a while: a partial line or epoch is not continued and
        nothing heard before counts (the date of the last RMC still dates the next epochs)."""
        self._lines.clear()
        self._epoch = None
        self._live.forget()
