"""The simulated modem's GNSS engine: Quectel and SIMCom position commands over a scripted track.

``GnssScript`` answers ``AT+QGPS=1``/``AT+QGPS?``/``AT+QGPSEND``/``AT+QGPSLOC=2`` (Quectel) or
``AT+CGNSPWR=1``/``AT+CGNSPWR?``/``AT+CGNSINF`` (SIMCom), as the vendor's manuals describe them.
Each position query answered with a fix takes the next point of ``track`` (one second apart,
from ``t0``); past the end of the track, or in mode ``nofix``, the engine has no fix (Quectel
``+CME ERROR: 516``, SIMCom fix status 0). Mode ``error`` answers ``ERROR``, ``silent`` nothing
at all (the modem's other commands still answer), ``garbage`` a position line that does not
parse. Before the engine is switched on, queries say so (Quectel ``+CME ERROR: 505``, SIMCom
run status 0); a modem reset switches it off. Tests change the mode by assigning its fields (one
attribute at a time: the simulator's thread sees each whole); nothing depends on wall time.

It is a test fixture, not part of the agent's data path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

QUECTEL, SIMCOM = "Quectel", "SIMCOM INCORPORATED"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# (lines, final): a final of "" means the modem does not answer at all.
Answer = tuple[list[str], str]
SILENT: Answer = ([], "")


@dataclass
class GnssScript:
    vendor: str = "quectel"  # "quectel" or "simcom"
    track: tuple[tuple[float, float], ...] = ()
    mode: str = "fix"  # fix, nofix, error, silent, garbage
    t0: dt.datetime = T0
    speed_kmh: float = 50.0
    engine_on: bool = False
    step: int = 0  # the next track point
    enables: int = 0  # engine switch-on commands obeyed

    def reset(self) -> None:
        """The modem restarted: its GNSS engine is off."""
        self.engine_on = False

    def answer(self, upper: str, error: Callable[[int], str]) -> Answer | None:
        """The answer to a GNSS command; None for any other command."""
        if self.vendor == "quectel":
            return self._quectel(upper, error)
        return self._simcom(upper)

    def _point(self) -> tuple[dt.datetime, float, float] | None:
        if self.mode != "fix" or self.step >= len(self.track):
            return None
        lat, lon = self.track[self.step]
        when = self.t0 + dt.timedelta(seconds=self.step)
        self.step += 1
        return when, lat, lon

    def _quectel(self, upper: str, error: Callable[[int], str]) -> Answer | None:
        if upper == "AT+QGPS=1":
            if self.engine_on:
                return [], error(504)  # session is ongoing
            self.engine_on = True
            self.enables += 1
            return [], "OK"
        if upper == "AT+QGPS?":
            return [f"+QGPS: {int(self.engine_on)}"], "OK"
        if upper == "AT+QGPSEND":
            self.engine_on = False
            return [], "OK"
        if not upper.startswith("AT+QGPSLOC"):
            return None
        if upper != "AT+QGPSLOC=2":
            return [], error(501)  # only the decimal-degree format is scripted
        if self.mode == "silent":
            return SILENT
        if self.mode == "error":
            return [], "ERROR"
        if not self.engine_on:
            return [], error(505)  # session not active
        if self.mode == "garbage":
            return ["+QGPSLOC: 25:61:00.000,north,,,,9,,,,321321,x"], "OK"
        point = self._point()
        if point is None:
            return [], error(516)  # not fixed now
        when, lat, lon = point
        kmh = self.speed_kmh
        return [
            f"+QGPSLOC: {when:%H%M%S}.000,{lat:.5f},{lon:.5f},0.8,520.0,3,012.30,"
            f"{kmh:.1f},{kmh / 1.852:.1f},{when:%d%m%y},09"
        ], "OK"

    def _simcom(self, upper: str) -> Answer | None:
        if upper == "AT+CGNSPWR=1":
            if not self.engine_on:
                self.enables += 1
            self.engine_on = True
            return [], "OK"
        if upper == "AT+CGNSPWR?":
            return [f"+CGNSPWR: {int(self.engine_on)}"], "OK"
        if upper == "AT+CGNSPWR=0":
            self.engine_on = False
            return [], "OK"
        if upper != "AT+CGNSINF":
            return None
        if self.mode == "silent":
            return SILENT
        if self.mode == "error":
            return [], "ERROR"
        if not self.engine_on:
            return ["+CGNSINF: 0" + "," * 20], "OK"
        if self.mode == "garbage":
            return ["+CGNSINF: 1,1,2026x,north,east" + "," * 16], "OK"
        point = self._point()
        if point is None:
            return ["+CGNSINF: 1,0" + "," * 19], "OK"
        when, lat, lon = point
        return [
            f"+CGNSINF: 1,1,{when:%Y%m%d%H%M%S}.000,{lat:.6f},{lon:.6f},520.000,"
            f"{self.speed_kmh:.2f},12.5,1,,0.8,1.2,0.9,,12,9,,,42,4.0,6.0"
        ], "OK"
