"""OBD-II (SAE J1979) mode 01 PIDs and DTC lists: the table, requests and answer parsing.

Pure: no I/O. A PID's value is sent as the unsigned integer its data bytes hold (big-endian)
with the J1979 scale and offset in the schema, so nothing is rounded on the wire. Answers are
untrusted: a malformed one raises ObdError (the caller counts it), never anything else. Modes
03 (stored), 07 (pending) and 0A (permanent) list two-byte DTCs. It does not send anything
(agent.diag.poller) nor format codes (agent.spime.dtc).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Mode 01 allows at most six PIDs in one request (SAE J1979 / ISO 15031-5).
MAX_PIDS_PER_REQUEST = 6
SUPPORT_PIDS = tuple(range(0x00, 0x100, 0x20))  # 0x00, 0x20, ... 0xE0: bitmaps of the next 32
NEGATIVE = 0x7F
RESPONSE_PENDING = 0x78
# Mode -> the DTC list it reads.
DTC_MODES = {0x03: "Stored", 0x07: "Pending", 0x0A: "Permanent"}


class ObdError(ValueError):
    """A malformed or unexpected answer."""


@dataclass(frozen=True)
class Pid:
    pid: int
    name: str  # after SAE J1979, as the signal OBD.<name>
    size: int  # data bytes
    scale: int | float = 1
    offset: int | float = 0
    unit: str = ""


def _table(*pids: Pid) -> dict[int, Pid]:
    return {p.pid: p for p in pids}


PIDS = _table(
    Pid(0x04, "EngineLoad", 1, 100 / 255, 0, "%"),
    Pid(0x05, "CoolantTemperature", 1, 1, -40, "degC"),
    Pid(0x0A, "FuelPressure", 1, 3, 0, "kPa"),
    Pid(0x0B, "IntakeManifoldPressure", 1, 1, 0, "kPa"),
    Pid(0x0C, "EngineSpeed", 2, 0.25, 0, "rpm"),
    Pid(0x0D, "VehicleSpeed", 1, 1, 0, "km/h"),
    Pid(0x0E, "TimingAdvance", 1, 0.5, -64, "deg"),
    Pid(0x0F, "IntakeAirTemperature", 1, 1, -40, "degC"),
    Pid(0x10, "MassAirFlow", 2, 0.01, 0, "g/s"),
    Pid(0x11, "ThrottlePosition", 1, 100 / 255, 0, "%"),
    Pid(0x1F, "RunTime", 2, 1, 0, "s"),
    Pid(0x21, "DistanceWithMIL", 2, 1, 0, "km"),
    Pid(0x2F, "FuelLevel", 1, 100 / 255, 0, "%"),
    Pid(0x30, "WarmupsSinceDTCClear", 1, 1, 0, ""),
    Pid(0x31, "DistanceSinceDTCClear", 2, 1, 0, "km"),
    Pid(0x33, "BarometricPressure", 1, 1, 0, "kPa"),
    Pid(0x42, "ControlModuleVoltage", 2, 0.001, 0, "V"),
    Pid(0x43, "AbsoluteLoad", 2, 100 / 255, 0, "%"),
    Pid(0x46, "AmbientAirTemperature", 1, 1, -40, "degC"),
    Pid(0x4D, "TimeWithMIL", 2, 1, 0, "min"),
    Pid(0x4E, "TimeSinceDTCClear", 2, 1, 0, "min"),
    Pid(0x51, "FuelType", 1, 1, 0, ""),
    Pid(0x5A, "AcceleratorPedalPosition", 1, 100 / 255, 0, "%"),
    Pid(0x5B, "HybridBatteryRemaining", 1, 100 / 255, 0, "%"),
    Pid(0x5C, "OilTemperature", 1, 1, -40, "degC"),
    Pid(0x5E, "FuelRate", 2, 0.05, 0, "L/h"),
    Pid(0xA6, "Odometer", 4, 0.1, 0, "km"),
)
# Bytes of every PID that may appear in an answer we parse (the bitmaps included).
_SIZES = {**{p: 4 for p in SUPPORT_PIDS}, **{p.pid: p.size for p in PIDS.values()}}


def parse_pid_key(key: str) -> int:
    """A config key such as "0D" -> 0x0D; ValueError naming the known PIDs otherwise."""
    try:
        pid = int(key, 16)
    except ValueError:
        pid = -1
    if pid not in PIDS or len(key) != 2:
        known = ", ".join(f"{p:02X}" for p in PIDS)
        raise ValueError(
            f"{key!r} is not a PID this agent decodes (two hex digits; known: {known})"
        )
    return pid


def chunks(pids: Iterable[int], size: int = MAX_PIDS_PER_REQUEST) -> Iterator[tuple[int, ...]]:
    """PIDs in requests of at most ``size`` (six: more break some ECUs)."""
    batch: list[int] = []
    for p in pids:
        batch.append(p)
        if len(batch) == size:
            yield tuple(batch)
            batch = []
    if batch:
        yield tuple(batch)


def mode01_request(pids: Iterable[int]) -> bytes:
    out = bytes([0x01, *pids])
    if not 2 <= len(out) <= 1 + MAX_PIDS_PER_REQUEST:
        raise ValueError(f"a mode 01 request names 1 to {MAX_PIDS_PER_REQUEST} PIDs")
    return out


def negative(payload: bytes, mode: int) -> int | None:
    """The negative response code of an answer ``7F <mode> <nrc>`` to ``mode``, else None."""
    if len(payload) >= 3 and payload[0] == NEGATIVE and payload[1] == mode:
        return payload[2]
    return None


def parse_mode01(payload: bytes) -> dict[int, int]:
    """PID -> raw value (the data bytes as an unsigned big-endian integer) of a mode 01
    answer ``41 <pid> <data> [<pid> <data> ...]``."""
    if len(payload) < 2 or payload[0] != 0x41:
        raise ObdError(f"not a mode 01 answer: {payload[:8].hex()}")
    out: dict[int, int] = {}
    pos = 1
    while pos < len(payload):
        pid = payload[pos]
        if out and not any(payload[pos:]):
            break  # zero padding after the last PID (some ECUs count it in the length)
        size = _SIZES.get(pid)
        if size is None:
            raise ObdError(f"answer names PID {pid:02X}, which has no known length")
        data = payload[pos + 1 : pos + 1 + size]
        if len(data) != size:
            raise ObdError(f"PID {pid:02X}: {len(data)} data bytes, not {size}")
        out[pid] = int.from_bytes(data, "big")
        pos += 1 + size
    return out


def supported(base: int, bitmap: int) -> set[int]:
    """PIDs a bitmap answer to ``base`` (0x00, 0x20, ...) says are supported (bit 31 is
    base + 1)."""
    return {base + 1 + i for i in range(32) if bitmap & (1 << (31 - i))}


def parse_dtcs(payload: bytes, mode: int) -> list[int]:
    """The two-byte DTCs of a mode 03/07/0A answer ``<mode+40> [count] <dtc>...``; zero
    entries (padding) are left out. CAN answers carry a count byte (ISO 15765-4)."""
    if len(payload) < 2 or payload[0] != mode + 0x40:
        raise ObdError(f"not a mode {mode:02X} answer: {payload[:8].hex()}")
    count = payload[1]
    body = payload[2:]
    if len(body) < 2 * count:
        raise ObdError(f"mode {mode:02X}: {count} DTCs announced, {len(body) // 2} present")
    dtcs = [int.from_bytes(body[i : i + 2], "big") for i in range(0, 2 * count, 2)]
    return [d for d in dtcs if d]
