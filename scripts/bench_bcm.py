"""The VM part of the bench for kernel-side change detection (CAN_BCM) on real SocketCAN.

Runs where SocketCAN exists (vcan0 up, can-utils installed): on a host without it,
``scripts/bench --bcm`` runs it inside scripts/vcan-vm. The real Genesis drive of the shared
corpus is replayed with canplayer onto vcan0 (timestamps compressed: 8x its recorded rate for
the CPU figures, about 9,300 frames/s for the loss figures) while the agent's Pipeline reads it
with ``change_detection = "off"`` (every frame) and ``"bcm"`` (changes only), for a 10-signal
selection and for every signal but counters and checksums, three rounds each, interleaved.
Measured per run: frames or notifications reaching user space, the reader's and the pipeline's
wake-ups (their threads' voluntary context switches, from /proc/self/task/TID/status: sleeps,
and waits for the GIL too) and CPU time (from /proc/self/task/TID/schedstat) as a multiple of
that of a ``candump`` reading the same replays over the same span, and what the kernel
dropped. Then the whole agent (``agent.daemon.Agent``, a dry run in this process) reads one
replay per selection and mode: the CPU of each of its threads against candump's. Prints
Markdown; numbers only, no verdicts (the main bench owns those). Writes the tables to
``out/bench-bcm.md`` too (the VM shares the checkout).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cantools

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import load_config  # noqa: E402
from agent.daemon import Agent, prepare  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from tests.support.agentrun import write_config  # noqa: E402
from tests.support.data import CORPUS  # noqa: E402

DBC = CORPUS / "dbc" / "eldominio-canbuslogs" / "genesis__slimmeddbc.dbc"
DRIVE = CORPUS / "logs" / "eldominio-canbuslogs" / "genesis__mphloggenesis.log"
CHANNEL = "vcan0"
COUNTERS = re.compile(r"cnt|count|alive|chk|checksum|crc|parity", re.IGNORECASE)
# Ten signals a telematics plan typically asks for, all on the drive.
TEN = (
    "EMS11.N",
    "EMS11.VS",
    "EMS11.TQI_ACOR",
    "EMS12.TEMP_ENG",
    "EMS12.PV_AV_CAN",
    "CLU11.CF_Clu_Vanz",
    "ESP12.YAW_RATE",
    "ESP12.LAT_ACCEL",
    "SAS11.SAS_Angle",
    "EMS14.VB",
)
LOSS_RATE = 9300.0
ROUNDS = 3


def _cpu_ns(path: str) -> int:
    return int(Path(path).read_text().split()[0])


def _switches(tid: int) -> int:
    """A thread's voluntary context switches so far: how often it went to sleep (and woke)."""
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def scaled_log(out: Path, rate: float | None, speed: float = 1.0) -> tuple[Path, int]:
    """The drive with its timestamps compressed (``speed`` times faster, or to an average of
    ``rate`` frames/s); returns the file and its frame count."""
    lines = [ln for ln in DRIVE.read_text().splitlines() if ln.startswith("(")]
    stamps = [float(ln[1 : ln.index(")")]) for ln in lines]
    t0, span = stamps[0], stamps[-1] - stamps[0]
    if rate is not None:
        speed = span / (len(lines) / rate)
    body = [
        f"({t0 + (t - t0) / speed:.6f}){ln[ln.index(')') + 1 :]}"
        for t, ln in zip(stamps, lines, strict=True)
    ]
    out.write_text("\n".join(body) + "\n")
    return out, len(lines)


def selection(which: str) -> list[str]:
    if which == "ten":
        return list(TEN)
    db = cantools.database.load_file(str(DBC))
    return [
        f"{m.name}.{s.name}" for m in db.messages for s in m.signals if not COUNTERS.search(s.name)
    ]


def settle(probe: Any) -> None:
    """Wait until ``probe()`` stays the same for a second: the reader caught up."""
    last = probe()
    while True:
        time.sleep(1.0)
        now = probe()
        if now == last:
            return
        last = now


class NullSink:
    def __call__(self, update: Any) -> None:
        pass


def agent_run(
    work: Path, log: Path, mode: str, signals: list[str], dump: int, **more: Any
) -> dict[str, float]:
    """One replay read by the Pipeline in this process; ``dump`` is the pid of a candump
    reading the same replays, whose CPU over the same span is the baseline."""
    shutil.copy(DBC, work / "car.dbc")
    extra = "[updates]\nmax_age = 1.0\nsnapshot_interval = 0\n" + "".join(
        f'[[signal]]\nmatch = "{s}"\n' for s in signals
    )
    bus = {
        "name": "car",
        "interface": "socketcan",
        "channel": CHANNEL,
        "dbc": ["car.dbc"],
        "change_detection": mode,
        **more,
    }
    cfg = load_config(write_config(work / f"{mode}.toml", [bus], extra))
    pipeline = Pipeline(cfg, prepare(cfg), boot=os.urandom(8), sink=NullSink())
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    src = pipeline.sources[0]
    while pipeline.source_states()["car"] != "up" or src._thread.native_id is None:
        time.sleep(0.05)
    time.sleep(0.3)  # the reader's setups are in place
    tid, ptid = src._thread.native_id, runner.native_id
    assert ptid is not None
    stat = f"/proc/self/task/{tid}/schedstat"
    pstat = f"/proc/self/task/{ptid}/schedstat"
    dstat = f"/proc/{dump}/schedstat"
    cpu0, pcpu0, frames0 = _cpu_ns(stat), _cpu_ns(pstat), src.status.frames
    sw0, psw0, dcpu0 = _switches(tid), _switches(ptid), _cpu_ns(dstat)
    subprocess.run(["canplayer", "-I", str(log), f"{CHANNEL}=can0"], check=True)
    settle(lambda: src.status.frames)  # what is in flight is read
    out = {
        "candump_ns": _cpu_ns(dstat) - dcpu0,
        "wakeups": src.status.frames - frames0,
        "cpu_ns": _cpu_ns(stat) - cpu0,
        "pipeline_ns": _cpu_ns(pstat) - pcpu0,
        "switches": _switches(tid) - sw0,
        "pipeline_switches": _switches(ptid) - psw0,
        "dropped": src.status.dropped_frames,
    }
    pipeline.stop()
    runner.join(10)
    return out


def _threads() -> dict[str, int]:
    """CPU time so far of each of this process's named threads."""
    out = {}
    for t in threading.enumerate():
        if t.native_id is not None:
            try:
                out[t.name] = _cpu_ns(f"/proc/self/task/{t.native_id}/schedstat")
            except OSError:
                continue  # ended meanwhile
    return out


def whole_agent_run(
    work: Path, log: Path, mode: str, signals: list[str], dump: int
) -> dict[str, float]:
    """One replay read by the whole agent (a dry run, in this process, default intervals): the
    CPU of each of its threads and of candump over the same span."""
    shutil.copy(DBC, work / "car.dbc")
    extra = "[updates]\nmax_age = 1.0\n" + "".join(f'[[signal]]\nmatch = "{s}"\n' for s in signals)
    bus = {
        "name": "car",
        "interface": "socketcan",
        "channel": CHANNEL,
        "dbc": ["car.dbc"],
        "change_detection": mode,
    }
    cfg = load_config(write_config(work / f"whole-{mode}.toml", [bus], extra))
    agent = Agent(cfg, prepare(cfg), dry_run=True, on_json=NullSink())
    runner = threading.Thread(target=agent.run, name="pipeline", daemon=True)
    runner.start()
    src = agent.pipeline.sources[0]
    while agent.pipeline.source_states()["car"] not in ("up", "silent"):
        time.sleep(0.05)
    time.sleep(0.3)  # the reader's setups are in place
    before, dcpu0 = _threads(), _cpu_ns(f"/proc/{dump}/schedstat")
    subprocess.run(["canplayer", "-I", str(log), f"{CHANNEL}=can0"], check=True)
    settle(lambda: src.status.frames)
    after, dcpu = _threads(), _cpu_ns(f"/proc/{dump}/schedstat") - dcpu0
    agent.request_stop()
    runner.join(10)
    spent = {k: after[k] - before[k] for k in after if k in before and k != "MainThread"}
    reader = spent.pop(src._thread.name, 0)
    pipeline = spent.pop("pipeline", 0)
    return {
        "reader": reader / dcpu,
        "pipeline": pipeline / dcpu,
        "others": sum(spent.values()) / dcpu,
        "whole": (reader + pipeline + sum(spent.values())) / dcpu,
    }


@contextmanager
def candump() -> Iterator[int]:
    """candump reading vcan0 into /dev/null for as long as the bench runs: its pid."""
    with open(os.devnull, "wb") as null:
        dump = subprocess.Popen(["candump", CHANNEL], stdout=null)
    try:
        time.sleep(0.3)
        yield dump.pid
    finally:
        dump.terminate()
        dump.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_bcm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-bcm.md")
    args = parser.parse_args(argv)
    if not DRIVE.is_file():
        print("bench_bcm: the shared corpus is not here", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="spime-bcm-"))
    cpu_log, n = scaled_log(work / "x8.log", None, speed=8.0)
    loss_log, _ = scaled_log(work / "loss.log", LOSS_RATE)
    rows = []
    with candump() as dump:
        for which in ("ten", "all"):
            signals = selection(which)
            runs: dict[str, list[dict[str, float]]] = {"off": [], "bcm": []}
            # Interleaved, so that a change of the machine's load hits both alike.
            for _ in range(ROUNDS):
                for mode in runs:
                    runs[mode].append(agent_run(work, cpu_log, mode, signals, dump))
                    print(f"bench_bcm: {which} {mode}: {runs[mode][-1]}", file=sys.stderr)
            for mode, got in runs.items():
                # The smallest receive buffer (64 KiB): the default 4 MiB holds the whole drive.
                loss = agent_run(work, loss_log, mode, signals, dump, receive_buffer=65536)
                print(f"bench_bcm: {which} {mode} loss: {loss}", file=sys.stderr)
                rows.append((which, len(signals), mode, got, loss))
        whole = []
        for which in ("ten", "all"):
            signals = selection(which)
            for mode in ("off", "bcm"):
                w = whole_agent_run(work, cpu_log, mode, signals, dump)
                print(f"bench_bcm: whole agent {which} {mode}: {w}", file=sys.stderr)
                whole.append((which, mode, w))
    lines = [
        f"Genesis drive, {n:,} frames, replayed with canplayer at 8x (CPU; {ROUNDS} rounds, "
        f"median, single rounds in brackets) and at {LOSS_RATE:,.0f} frames/s (loss); candump "
        "reads the same replays, its CPU over the same span is the baseline.",
        "",
        "| selection | signals | change detection | frames or notifications reaching user "
        "space | reader wake-ups | pipeline wake-ups | reader CPU / candump | "
        "pipeline CPU / candump | reader + pipeline / candump | lost at 9,300/s (64 KiB "
        "buffer) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for which, count, mode, got, loss in rows:

        def med(key: str, got: list[dict[str, float]] = got) -> float:
            return statistics.median(r[key] for r in got)

        def ratio(*keys: str, got: list[dict[str, float]] = got) -> str:
            each = [sum(r[k] for k in keys) / max(1, r["candump_ns"]) for r in got]
            return f"{statistics.median(each):.2f} ({', '.join(f'{x:.2f}' for x in each)})"

        lines.append(
            f"| {'10 signals' if which == 'ten' else 'all but counters/checksums'} | {count} | "
            f"{mode} | {med('wakeups'):,.0f} | {med('switches'):,.0f} | "
            f"{med('pipeline_switches'):,.0f} | {ratio('cpu_ns')} | {ratio('pipeline_ns')} | "
            f"{ratio('cpu_ns', 'pipeline_ns')} | {loss['dropped']:,} |"
        )
    lines += [
        "",
        "The whole agent (a dry run in this process, default intervals, one replay each): CPU "
        "of its threads over the replay and one idle second after it, as multiples of "
        "candump's over the same span.",
        "",
        "| selection | change detection | reader | pipeline | other threads | whole agent |",
        "|---|---|---|---|---|---|",
    ]
    for which, mode, w in whole:
        lines.append(
            f"| {'10 signals' if which == 'ten' else 'all but counters/checksums'} | {mode} | "
            f"{w['reader']:.2f} | {w['pipeline']:.2f} | {w['others']:.2f} | "
            f"**{w['whole']:.2f}** |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    sys.stdout.write(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
