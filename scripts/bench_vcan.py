"""The bench's SocketCAN part: the agent's receive path on a real vcan, against candump.

Runs where SocketCAN exists (inside ``scripts/vcan-vm``; ``scripts/bench.py`` starts it there
when the host has none) and prints a Markdown section on stdout; progress goes to stderr. The
corpus's real Genesis drive is replayed with can-utils' ``canplayer`` on vcan0, sped up by
rewriting its timestamps. ``candump vcan0 > /dev/null`` and the agent (``spime-agent run
--dry-run``, a subprocess) read every replay in the same boot; each one's CPU is the sum over
its threads of /proc/PID/task/*/schedstat, from just before the replay until the agent has
counted every frame its kernel filters pass (its status file, on the guest's tmpfs). The
figure is CPU per bus frame of the agent divided by candump's, per replay; the median of the
rounds decides. Then the replay rate is raised until the agent loses frames: the highest rate
without loss is reported, and above it whether the agent's own counters account for every
frame lost. Standard library and the project's own packages only; it does not judge targets.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import cantools

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
GENESIS_LOG = CORPUS / "logs" / "eldominio-canbuslogs" / "genesis__mphloggenesis.log"
GENESIS_DBC = CORPUS / "dbc" / "eldominio-canbuslogs" / "genesis__slimmeddbc.dbc"
CHANNEL = "vcan0"
# A telematics selection: engine, speed, accelerations, steering, coolant, battery.
TEN_SIGNALS = (
    "EMS11.N",
    "EMS11.VS",
    "EMS11.TQI",
    "EMS12.TEMP_ENG",
    "ESP12.LAT_ACCEL",
    "ESP12.LONG_ACCEL",
    "ESP12.YAW_RATE",
    "SAS11.SAS_Angle",
    "CLU11.CF_Clu_Vanz",
    "EMS14.VB",
)
STATUS_INTERVAL = 0.5


def progress(text: str) -> None:
    print(f"bench-vcan: {text}", file=sys.stderr, flush=True)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far (schedstat's first field, in ns)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` so far: its wake-ups."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


@dataclass(frozen=True)
class Drive:
    lines: list[tuple[float, str]]  # (timestamp, the rest of the candump line)
    ids: list[int]

    @classmethod
    def load(cls, path: Path) -> Drive:
        lines, ids = [], []
        for frame in can.LogReader(str(path)):
            ids.append(frame.arbitration_id | (0x80000000 if frame.is_extended_id else 0))
        for line in path.read_text().splitlines():
            stamp, rest = line.split(")", 1)
            lines.append((float(stamp.lstrip("(")), rest))
        return cls(lines, ids)

    @property
    def seconds(self) -> float:
        return self.lines[-1][0] - self.lines[0][0]

    def write(self, out: Path, speed: float, loops: int) -> int:
        """The drive ``loops`` times over at ``speed`` times its rate; the number of frames."""
        t0, gap = self.lines[0][0], self.seconds / speed + 0.01
        with out.open("w") as f:
            for k in range(loops):
                for t, rest in self.lines:
                    f.write(f"({1000 + k * gap + (t - t0) / speed:.6f}){rest}\n")
        return len(self.lines) * loops

    def passing(self, keys: set[int], loops: int) -> int:
        """Frames of the drive (``loops`` times) that kernel filters on ``keys`` let through."""
        return sum(1 for i in self.ids if i in keys) * loops


def selection_keys(signals: tuple[str, ...] | None) -> set[int]:
    db = cantools.database.load_file(str(GENESIS_DBC), strict=False)
    keys = set()
    for msg in db.messages:
        if signals is None or any(s.startswith(f"{msg.name}.") for s in signals):
            keys.add(msg.frame_id | (0x80000000 if msg.is_extended_frame else 0))
    return keys


def write_config(path: Path, status: Path, signals: tuple[str, ...] | None, bus: str) -> None:
    lines = [
        "[vehicle]",
        'vin = "WVWZZZ1JZXW000001"',
        "",
        "[[bus]]",
        'name = "car"',
        'interface = "socketcan"',
        f'channel = "{CHANNEL}"',
        "fd = true",
        f"dbc = [{json.dumps(str(GENESIS_DBC))}]",
        bus,
        "",
    ]
    for match in signals or ("*.*",):
        lines += ["[[signal]]", f'match = "{match}"', ""]
    lines += ["[updates]", "max_age = 1.0", ""]
    lines += ["[status]", f"path = {json.dumps(str(status))}", f"interval = {STATUS_INTERVAL}"]
    path.write_text("\n".join(lines) + "\n")


class Agent:
    """``spime-agent run --dry-run`` as a subprocess, read through its status file."""

    def __init__(self, work: Path, name: str, signals: tuple[str, ...] | None, bus: str) -> None:
        self.status = work / f"{name}.status.json"
        self.config = work / f"{name}.toml"
        write_config(self.config, self.status, signals, bus)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "--log-level", "warning", "run", "--dry-run"]
            + ["--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 180
        while self.counters().get("buses", {}).get("car") not in ("up", "silent"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench-vcan: the agent ({name}) did not come up")
            time.sleep(0.2)

    def counters(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status.read_text()))
        except (OSError, ValueError):
            return {}

    def pipeline(self) -> dict[str, int]:
        return dict(self.counters().get("pipeline", {}))

    def idle_per_s(self, seconds: float = 3.0) -> tuple[float, float]:
        """The agent's CPU (ns) and wake-ups per second with nothing on the bus: its timers
        and status writes."""
        pid = self.proc.pid
        c0, w0, t0 = cpu_ns(pid), wakeups(pid), time.monotonic()
        time.sleep(seconds)
        span = time.monotonic() - t0
        return (cpu_ns(pid) - c0) / span, (wakeups(pid) - w0) / span

    def wait_counted(
        self, frames: int, timeout: float = 120.0
    ) -> tuple[dict[str, int], int, float]:
        """Wait until the agent has counted ``frames`` more frames (received or dropped) than
        it had, or until its counts stop moving; return its counters and its CPU time when
        they last moved. With CAN_BCM fewer frames than the filters pass reach the agent, so
        its counts stop short: the idle seconds spent seeing that they stopped are not its
        work on the replay."""
        deadline = time.monotonic() + timeout
        last, still, cpu, when = -1, 0, cpu_ns(self.proc.pid), time.monotonic()
        while time.monotonic() < deadline:
            p = self.pipeline()
            seen = p.get("frames", 0) + p.get("dropped_frames", 0)
            if seen >= frames:
                return p, cpu_ns(self.proc.pid), time.monotonic()
            if seen == last:
                still += 1
            else:
                still, cpu, when = 0, cpu_ns(self.proc.pid), time.monotonic()
            if still > 4 * STATUS_INTERVAL / 0.05:  # four status writes without progress
                return p, cpu, when
            last = seen
            time.sleep(0.05)
        return self.pipeline(), cpu_ns(self.proc.pid), time.monotonic()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextmanager
def candump() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["candump", CHANNEL], stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def replay(log: Path) -> float:
    t0 = time.monotonic()
    subprocess.run(["canplayer", "-I", str(log), f"{CHANNEL}=can0"], check=True, timeout=600)
    return time.monotonic() - t0


@dataclass
class Round:
    agent_ns: float  # per bus frame
    candump_ns: float
    rate: float  # frames per second offered
    counters: dict[str, int]
    span: float  # seconds measured

    @property
    def ratio(self) -> float:
        return self.agent_ns / self.candump_ns


def measure(agent: Agent, dump: subprocess.Popen[bytes], log: Path, frames: int) -> Round:
    before = agent.pipeline()
    base = before.get("frames", 0) + before.get("dropped_frames", 0)
    a0, c0, t0 = cpu_ns(agent.proc.pid), cpu_ns(dump.pid), time.monotonic()
    seconds = replay(log)
    after, a1, t1 = agent.wait_counted(base + frames)
    c1 = cpu_ns(dump.pid)
    total = log_frames(log)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after if isinstance(after[k], int)}
    return Round((a1 - a0) / total, (c1 - c0) / total, total / seconds, delta, t1 - t0)


def log_frames(log: Path) -> int:
    with log.open() as f:
        return sum(1 for _ in f)


def cpu_section(drive: Drive, work: Path, rounds: int, speed: float, bus_extra: dict[str, str]):
    log = work / "drive.log"
    total = drive.write(log, speed, 1)
    rows = []
    verdicts = {}
    with candump() as dump:
        for label, signals in (("all signals", None), ("10 signals", TEN_SIGNALS)):
            for variant, extra in bus_extra.items():
                name = f"{label} {variant}".strip()
                progress(f"{name}: starting the agent")
                agent = Agent(work, name.replace(" ", "-"), signals, extra)
                try:
                    passing = drive.passing(selection_keys(signals), 1)
                    idle, idle_wakeups = agent.idle_per_s()
                    runs = []
                    for i in range(rounds):
                        progress(f"{name}: replay {i + 1} of {rounds} at {speed:g}x")
                        runs.append(measure(agent, dump, log, passing))
                finally:
                    agent.stop()
                ratios = [r.ratio for r in runs]
                # With CAN_BCM unchanged frames stay in the kernel: fewer frames is no loss.
                lost = sum(passing - r.counters.get("frames", 0) for r in runs)
                lost_text = f"{lost:,}" if "bcm" not in extra else "n/a"
                med = statistics.median(ratios)
                verdicts[name] = med
                rows.append(
                    (
                        name,
                        f"{passing:,} of {total:,}",
                        f"{statistics.median(r.rate for r in runs):,.0f}",
                        f"{statistics.median(r.candump_ns for r in runs) / 1000:,.0f} µs",
                        f"{statistics.median(r.agent_ns for r in runs) / 1000:,.0f} µs",
                        f"**{med:.2f}** ({', '.join(f'{x:.2f}' for x in ratios)})",
                        f"{idle / 1e6:.0f} ms/s, "
                        f"{statistics.median(idle * r.span / total for r in runs) / 1000:,.0f} µs"
                        f", {idle_wakeups:.0f} wake-ups/s",
                        lost_text,
                    )
                )
    return rows, verdicts


def rate_section(drive: Drive, work: Path, speeds: list[float], extra: str):
    rows = []
    best = None
    progress("replay rate: starting the agent (all signals)")
    agent = Agent(work, "rate", None, extra)
    keys = selection_keys(None)
    try:
        for speed in speeds:
            # Each rate lasts about as long as the 8x replay, so a reader slower than the bus
            # cannot hide behind the receive buffer for long.
            loops = max(1, round(speed / 8))
            log = work / f"rate-{speed:g}.log"
            total = drive.write(log, speed, loops)
            passing = drive.passing(keys, loops)
            before = agent.pipeline()
            progress(f"replay rate: {speed:g}x, {total:,} frames")
            seconds = replay(log)
            after, _, _ = agent.wait_counted(
                before.get("frames", 0) + before.get("dropped_frames", 0) + passing
            )
            got = after.get("frames", 0) - before.get("frames", 0)
            dropped = after.get("dropped_frames", 0) - before.get("dropped_frames", 0)
            kernel = after.get("kernel_dropped", 0) - before.get("kernel_dropped", 0)
            lost = passing - got
            rows.append(
                (
                    f"{speed:g}x",
                    f"{total / seconds:,.0f}",
                    f"{passing:,}",
                    f"{got:,}",
                    f"{lost:,}",
                    f"{dropped:,} ({kernel:,} by the kernel)",
                )
            )
            if lost == 0 and dropped == 0:
                # canplayer in the one vCPU may offer less at a higher speed: keep the most.
                if best is None or total / seconds > best[1]:
                    best = (speed, total / seconds)
            else:
                break
    finally:
        agent.stop()
    return rows, best


def table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_vcan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, two replay rates")
    parser.add_argument(
        "--no-bcm",
        action="store_true",
        help='only the raw reader (change_detection = "off"), not also CAN_BCM',
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/spime-bench-vcan"))
    args = parser.parse_args(argv)
    if not GENESIS_LOG.is_file():
        print(f"bench-vcan: corpus not found at {CORPUS}", file=sys.stderr)
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    drive = Drive.load(GENESIS_LOG)
    speed = 8.0
    # The raw reader (agent.sources.socketcan) and kernel-side change detection (CAN_BCM).
    variants = {"(raw reader)": 'change_detection = "off"'}
    if not args.no_bcm:
        variants["(CAN_BCM)"] = 'change_detection = "bcm"'
    rounds = 1 if args.quick else 3
    t0 = time.monotonic()
    rows, _ = cpu_section(drive, args.work, rounds, speed, variants)
    speeds = [8.0, 32.0] if args.quick else [8.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0]
    rate_rows, best = rate_section(drive, args.work, speeds, next(iter(variants.values())))
    recorded = len(drive.lines) / drive.seconds
    out = [
        "## SocketCAN receive path (vcan in the VM, real Genesis drive)",
        "",
        f"The corpus's Genesis drive ({len(drive.lines):,} frames in {drive.seconds:.1f} s, "
        f"{recorded:,.0f} frames/s) replayed by `canplayer` on vcan0 at {speed:g}x its recorded "
        f"rate; `candump {CHANNEL} > /dev/null` and `spime-agent run --dry-run` read the same "
        f"replays in one boot of the VM (one vCPU, software emulation). CPU per bus frame from "
        "/proc/PID/task/*/schedstat, from the replay's start until the agent counted every "
        f"frame its kernel filters pass (with CAN_BCM, which hands on fewer: until its counts "
        f"stopped); {rounds} replays per row, median ratio (single runs in brackets). What the "
        f"agent costs idle (its timers, a status file every {STATUS_INTERVAL:g} s) is measured "
        "for 3 s before the replays and is included in its CPU per frame.",
        "",
        *table(
            (
                "agent",
                "frames through its kernel filters",
                "frames/s offered",
                "candump CPU / frame",
                "agent CPU / frame",
                "agent / candump",
                "agent idle: CPU per second, over a replay per frame, and wake-ups",
                "frames lost",
            ),
            rows,
        ),
        "",
        "Replay rate raised until the agent (all signals, raw reader) loses frames; each rate "
        "replays the drive more often the faster it goes:",
        "",
        *table(
            (
                "speed",
                "frames/s offered",
                "frames through the filters",
                "received",
                "lost",
                "counted as dropped by the agent",
            ),
            rate_rows,
        ),
        "",
        (
            f"Highest rate offered without loss: **{best[1]:,.0f} frames/s ({best[0]:g}x)**"
            + (" (no rate tried lost a frame)." if rate_rows[-1][4] == "0" else ".")
            if best
            else "Frames were lost at every rate tried."
        ),
        "",
        f"VM bench time: {time.monotonic() - t0:.0f} s.",
        "",
    ]
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
