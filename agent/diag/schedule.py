"""When to ask what: per-PID intervals, the DTC interval and the bus-load cap. Pure.

Each PID has its own interval; PIDs due together go into one request of at most six (so a
0.5 s and a 1 s PID cost one request every other turn). The load cap is a token bucket in
bits: every frame the diagnostics send or receive is charged (agent.diag.link counts them),
and no request starts while the bucket is empty, so the added load averages at most
``max_bus_load`` of the bitrate whatever the ECUs answer; PIDs then come late, not more often.
Times are seconds on a monotonic clock passed in. It does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.diag.link import frame_bits
from agent.diag.obd import MAX_PIDS_PER_REQUEST, chunks

# The bucket holds at most this many seconds of budget: a burst after a quiet spell is short.
BURST_SECONDS = 0.5


class Schedule:
    def __init__(self, pids: dict[int, float], dtc_interval: float, now: float) -> None:
        self.intervals = dict(pids)
        self.next = dict.fromkeys(pids, now)
        self.dtc_interval = dtc_interval
        self.next_dtc: float | None = now if dtc_interval > 0 else None

    def restrict(self, supported: Iterable[int]) -> list[int]:
        """Keep only PIDs some ECU supports; the others, which are never asked."""
        keep = set(supported)
        dropped = sorted(p for p in self.intervals if p not in keep)
        for p in dropped:
            del self.intervals[p], self.next[p]
        return dropped

    def due_pids(self, now: float) -> list[tuple[int, ...]]:
        """Requests (PID tuples of at most six) for every PID due now; their next reads are
        scheduled from ``now`` (a late read does not bunch up the following ones)."""
        due = sorted(p for p, t in self.next.items() if t <= now)
        for p in due:
            self.next[p] = now + self.intervals[p]
        return list(chunks(due, MAX_PIDS_PER_REQUEST))

    def dtc_due(self, now: float) -> bool:
        return self.next_dtc is not None and now >= self.next_dtc

    def dtc_read(self, now: float) -> None:
        """DTCs were read (or tried): the next read is one interval after this one ended, so
        slow answers never make DTC reads follow each other back to back."""
        if self.next_dtc is not None:
            self.next_dtc = now + self.dtc_interval

    def next_due(self, *, pids: bool = True, dtcs: bool = True) -> float | None:
        """When the next PID (``pids``) or DTC read (``dtcs``) is due; None: never."""
        times = list(self.next.values()) if pids else []
        if dtcs and self.next_dtc is not None:
            times.append(self.next_dtc)
        return min(times) if times else None


class LoadCap:
    """A token bucket of bus bits: ``rate`` bits per second, charged with what was used."""

    def __init__(self, bitrate: int, max_load: float, now: float) -> None:
        self.bitrate = bitrate
        self.rate = bitrate * max_load
        self.burst = self.rate * BURST_SECONDS
        self.tokens = self.burst
        self.at = now
        self.used = 0
        self.since = now

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def charge(self, bits: int, now: float) -> None:
        self._refill(now)
        self.tokens -= bits
        self.used += bits

    def wait(self, now: float) -> float:
        """Seconds until a request may start (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def load(self, now: float) -> float:
        """The average added load since the start, as a fraction of the bitrate."""
        span = now - self.since
        return self.used / span / self.bitrate if span > 0 else 0.0


def estimate_load(
    pids: dict[int, float],
    dtc_interval: float,
    bitrate: int,
    *,
    ecus: int = 1,
    uds_ecus: int = 0,
    extended: bool = False,
) -> float:
    """An upper bound of the load a configuration adds, as a fraction of the bitrate, when
    ``ecus`` ECUs answer every PID with one frame: each PID asked alone on its interval (joining
    PIDs into one request only lowers it), each DTC read (three OBD lists, one UDS read per
    UDS ECU) a request and one answer frame per ECU. Multi-frame answers add a flow control and
    a frame per 7 bytes: the cap (LoadCap) bounds what this estimate does not."""
    frame = frame_bits(8, extended)
    bits_per_s = sum((1 + ecus) * frame / interval for interval in pids.values())
    if dtc_interval > 0:
        bits_per_s += (3 * (1 + ecus) + 2 * uds_ecus) * frame / dtc_interval
    return bits_per_s / bitrate
