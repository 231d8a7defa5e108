"""spime-agent's measurement script: every measurement the issues set a target for.

Run through ``scripts/bench`` (which installs what is missing first). Prints a Markdown report
to stdout and writes it to ``out/bench.md``; progress lines go to stderr. Every speed is a ratio
to a baseline measured in the same run, interleaved with the subject (A B A B ...), because the
machine is shared and noisy; the median ratio decides, the single runs are shown. A private
mosquitto on a free loopback port (tests/support/broker.py, the tests' launcher) serves the
network measurements (never the one that may listen on 1883) and is stopped at the end.
``--quick`` shortens everything for a smoke run.

It measures the agent's real parts (Pipeline, Outbox, Uplink, Agent, the CLI as a subprocess)
and leaves correctness to the test suite: a target missed is reported, not raised. The exit
status is non-zero only when the bench itself breaks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import cantools
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import Config, MqttConfig, OutboxConfig, load_config
from agent.daemon import Agent, prepare
from agent.outbox import Outbox
from agent.pipeline import Pipeline
from agent.sdnotify import Notifier
from agent.spime import decode_update
from agent.spime.codec import uvarint_len
from agent.updates import Update
from agent.uplink import Uplink

# The test suite's broker launcher and waiting helper (tests/support), one of each for all.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support.broker import BrokerError, Mosquitto  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_DBC = ROOT / "dbc" / "demo_vehicle.dbc"
GEN_DRIVE = ROOT / "scripts" / "gen-demo-drive"
AGENT_CLI = ROOT / ".venv" / "bin" / "spime-agent"
CORPUS = ROOT.parent / "shared" / "corpus"
GENESIS_LOG = CORPUS / "logs" / "eldominio-canbuslogs" / "genesis__mphloggenesis.log"
GENESIS_DBC = CORPUS / "dbc" / "eldominio-canbuslogs" / "genesis__slimmeddbc.dbc"
VIN = "WVWZZZ1JZXW000001"
DATA_TOPIC = f"spime/v1/{VIN}/data"
DOORS_ID = 800  # BCM_Doors in dbc/demo_vehicle.dbc; DoorFL is bit 0
DOOR_SIGNAL = "BCM_Doors.DoorFL"


class BenchError(Exception):
    """The bench itself cannot go on (a missing tool, a part that did not start)."""


@dataclass(frozen=True)
class Plan:
    """How long and how large each measurement is; --quick shrinks every figure."""

    quick: bool
    frames: int  # demo drive for throughput, compactness, RSS and wire bytes
    pairs: int  # interleaved baseline/subject pairs for the throughput ratios
    live_seconds: float
    live_buses: int
    live_rate: int  # frames per second offered on each bus
    backlog: int
    drain_pairs: int
    events: int
    rss_settle: float  # seconds of input processed before VmRSS is read

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 50_000, 2, 5.0, 4, 4000, 30_000, 2, 50, 2.0)
        return cls(False, 200_000, 7, 30.0, 4, 4000, 100_000, 5, 200, 3.0)


@dataclass(frozen=True)
class Verdict:
    """One line of the summary table; ``passed`` None means "no target, for information"."""

    name: str
    target: str
    measured: str
    passed: bool | None


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    def section(self, title: str, *lines: str) -> None:
        self.sections.append("\n".join((f"## {title}", "", *lines, "")))

    def verdict(self, name: str, target: str, measured: str, passed: bool | None) -> None:
        self.verdicts.append(Verdict(name, target, measured, passed))

    def markdown(self, header: list[str]) -> str:
        rows = [
            (v.name, v.target, v.measured, {True: "PASS", False: "FAIL", None: "info"}[v.passed])
            for v in self.verdicts
        ]
        summary = table(("measurement", "target", "measured", "result"), rows)
        return "\n".join((*header, "", *self.sections, "## Summary", "", *summary, ""))


def table(head: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def progress(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def spread(ratios: list[float]) -> str:
    """Median, range and count of interleaved pair ratios, as the report shows them."""
    return (
        f"median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} "
        f"over {len(ratios)} pairs"
    )


def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def publish_size(topic_len: int, payload_len: int) -> int:
    """Bytes of one QoS 1 MQTT 5 PUBLISH without properties: fixed header, remaining length,
    topic, packet id, empty property length, payload (the same estimate as the uplink's)."""
    remaining = 2 + topic_len + 2 + 1 + payload_len
    return 1 + uvarint_len(remaining) + remaining


# ---- parts: broker, configs, drives ----------------------------------------------------------


def write_config(
    path: Path,
    buses: list[dict[str, Any]],
    *,
    events: str | None = "BCM_*.*",
    mqtt_port: int | None = None,
    outbox: Path | None = None,
    extra: str = "",
) -> Config:
    """The demo's configuration (scripts/demo): ``events`` as events, every other signal as
    telemetry, updates of at most 1 s, a snapshot every 30 s; plus buses, broker and outbox."""
    lines = ["[vehicle]", f'vin = "{VIN}"', ""]
    for bus in buses:
        lines.append("[[bus]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in bus.items()]
        lines.append("")
    if events is not None:
        lines += ["[[signal]]", f"match = {json.dumps(events)}", 'priority = "event"', ""]
        lines += ["[[signal]]", 'match = "*.*"', ""]
    lines += ["[updates]", "max_age = 1.0", "snapshot_interval = 30", ""]
    if mqtt_port is not None:
        lines += ["[mqtt]", 'host = "127.0.0.1"', f"port = {mqtt_port}", ""]
    if outbox is not None:
        lines += ["[outbox]", f"path = {json.dumps(str(outbox))}", ""]
    path.write_text("\n".join(lines) + "\n" + extra)
    return load_config(path)


def replay_bus(log: Path, dbc: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "demo", "interface": "replay", "log": str(log), "dbc": [str(dbc)], **extra}


def generate_drive(out: Path, frames: int) -> None:
    proc = subprocess.run(
        [sys.executable, str(GEN_DRIVE), "--out", str(out), "--frames", str(frames)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise BenchError(f"gen-demo-drive failed: {proc.stderr.strip()}")


def read_frames(log: Path, limit: int | None = None) -> list[can.Message]:
    out = []
    with can.LogReader(str(log)) as reader:
        for msg in reader:
            out.append(msg)
            if limit is not None and len(out) >= limit:
                break
    return out


class Collect:
    """Pipeline sink: counts updates, samples and payload bytes, keeps the payloads."""

    def __init__(self) -> None:
        self.updates = 0
        self.samples = 0
        self.bytes = 0
        self.payloads: list[tuple[bytes, str]] = []

    def __call__(self, update: Update) -> None:
        self.updates += 1
        self.samples += update.samples
        self.bytes += len(update.payload)
        self.payloads.append((update.payload, "event" if update.event else "telemetry"))


@dataclass(frozen=True)
class PipelineRun:
    pipeline: Pipeline
    sink: Collect
    seconds: float  # wall
    loop_cpu: float  # CPU seconds of the pipeline loop's thread (decode, sampling, encode)
    reader_cpu: float  # CPU seconds of the child processes that read the logs (reader)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_pipeline(cfg: Config) -> PipelineRun:
    """Run a replay config through the real Pipeline in this thread, as the agent does (a
    large log is read in a child process beside it: ``reader``)."""
    catalog = prepare(cfg)
    sink = Collect()
    pipeline = Pipeline(cfg, catalog, boot=os.urandom(8), sink=sink)
    cpu = time.thread_time()
    reader_cpu = children_cpu()
    start = time.monotonic()
    pipeline.run()
    seconds = time.monotonic() - start
    cpu = time.thread_time() - cpu
    reader_cpu = children_cpu() - reader_cpu
    if pipeline.stats.source_errors:
        raise BenchError("; ".join(pipeline.stats.source_errors))
    return PipelineRun(pipeline, sink, seconds, cpu, reader_cpu)


def bare_read(log: Path) -> tuple[int, float]:
    return bare_read_cpu(log)[:2]


def bare_read_cpu(log: Path) -> tuple[int, float, float]:
    """Frames, wall seconds and CPU seconds of a bare LogReader loop over ``log``."""
    cpu = time.thread_time()
    start = time.monotonic()
    n = 0
    with can.LogReader(str(log)) as reader:
        for _ in reader:
            n += 1
    return n, time.monotonic() - start, time.thread_time() - cpu


@dataclass(frozen=True)
class JsonCost:
    """One JSON message per decoded frame, as a naive agent would send."""

    frames: int  # frames in the log
    decoded: int  # frames whose id is in the DBC and that cantools decoded
    failed: int  # frames whose id is in the DBC that cantools could not decode
    json_bytes: int
    wire_bytes: int  # the same messages as QoS 1 MQTT 5 PUBLISHes on the data topic
    duration: float  # seconds from the first to the last frame


def json_per_frame(log: Path, dbc: Path, *, strict: bool = True) -> JsonCost:
    db = cantools.database.load_file(str(dbc), strict=strict)
    by_id = {(m.frame_id, m.is_extended_frame): m for m in db.messages}
    topic_len = len(DATA_TOPIC.encode())
    frames = decoded = failed = json_bytes = wire = 0
    first = last = None
    with can.LogReader(str(log)) as reader:
        for msg in reader:
            frames += 1
            first = msg.timestamp if first is None else first
            last = msg.timestamp
            m = by_id.get((msg.arbitration_id, msg.is_extended_id))
            if m is None:
                continue
            try:
                values = m.decode(bytes(msg.data), decode_choices=False, allow_truncated=True)
            except Exception:  # cantools raises several types for bad payloads; all count alike
                failed += 1
                continue
            doc = {"vin": VIN, "t": msg.timestamp, "message": m.name, "signals": values}
            size = len(json.dumps(doc).encode())
            decoded += 1
            json_bytes += size
            wire += publish_size(topic_len, size)
    return JsonCost(frames, decoded, failed, json_bytes, wire, (last or 0.0) - (first or 0.0))


# ---- 1. pipeline throughput ------------------------------------------------------------------


def bench_throughput(plan: Plan, report: Report, drive: Path, work: Path) -> Collect:
    cfg = write_config(work / "throughput.toml", [replay_bus(drive, DEMO_DBC)])
    rows = []
    ratios = []
    cpu_ratios = []
    kept: Collect | None = None
    bare_read(drive)  # warm the page cache and imports so that neither side pays for them
    run_pipeline(cfg)
    loads = [load_average()]
    for i in range(plan.pairs):
        progress(f"throughput pair {i + 1}/{plan.pairs}")
        # Alternate which side runs first, so that a trend in the machine's load (or a cache
        # warmed by the first) favours neither side.
        if i % 2:
            result = run_pipeline(cfg)
            n_base, t_base, c_base = bare_read_cpu(drive)
        else:
            n_base, t_base, c_base = bare_read_cpu(drive)
            result = run_pipeline(cfg)
        t_pipe, n_pipe = result.seconds, result.pipeline.stats.frames
        if n_pipe != n_base:
            raise BenchError(f"pipeline saw {n_pipe} frames, LogReader {n_base}")
        kept = kept or result.sink
        ratio = t_base / t_pipe
        ratios.append(ratio)
        # Were both of the pipeline's processes given a core of their own, the slower one
        # would decide its time: the ratio of CPU seconds, less disturbed by other load.
        cpu_ratios.append(c_base / max(result.loop_cpu, result.reader_cpu))
        rows.append(
            (
                i + 1,
                f"{t_base:.2f}",
                f"{c_base:.2f}",
                f"{n_base / t_base:,.0f}",
                f"{t_pipe:.2f}",
                f"{n_pipe / t_pipe:,.0f}",
                f"{result.loop_cpu:.2f}",
                f"{result.reader_cpu:.2f}",
                f"{ratio:.2f}",
            )
        )
    assert kept is not None
    loads.append(load_average())
    med = statistics.median(ratios)
    report.section(
        "1. Pipeline throughput (replay -> decode -> sampling -> encode, no network)",
        f"Demo drive of {plan.frames:,} frames; the real Pipeline with a sink that collects sizes, "
        "against a bare `can.LogReader` loop over the same file, interleaved.",
        "",
        *table(
            (
                "pair",
                "LogReader s",
                "LogReader CPU s",
                "LogReader frames/s",
                "Pipeline s",
                "Pipeline frames/s",
                "loop thread CPU s",
                "reader process CPU s",
                "ratio",
            ),
            rows,
        ),
        "",
        f"Ratio: **{spread(ratios)}** (target >= 0.7); load average {loads[0]} before, "
        f"{loads[1]} after. CPU seconds of the LogReader loop over those of the busier of the "
        f"pipeline's thread and its reader process (the ratio with two cores free): "
        f"{spread(cpu_ratios)}.",
        "",
        "When every bus is a replay, a log of this size is read by python-can in a child "
        "process (`reader`), beside the Pipeline's thread that decodes, samples and encodes: "
        "with two free cores the time is the slower of the two, with one core their sum. The "
        "baseline reads in one process.",
    )
    report.verdict("1. pipeline throughput / bare LogReader", ">= 0.7", spread(ratios), med >= 0.7)
    return kept


# ---- 2. live input ---------------------------------------------------------------------------


@dataclass
class SenderResult:
    sent: int = 0
    cpu: float = 0.0  # this thread's CPU seconds
    seconds: float = 0.0


def send_paced(
    channel: str, frames: list[can.Message], rate: int, seconds: float, out: SenderResult
) -> None:
    """Offer ``rate`` frames/s for ``seconds`` on a virtual bus, paced on the monotonic clock
    (bursts of whatever is due every ~2 ms, as a busy bus delivers)."""
    bus = can.Bus(interface="virtual", channel=channel, ignore_config=True)
    try:
        total = int(rate * seconds)
        n = len(frames)
        cpu0 = time.thread_time()
        start = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate))
            while sent < due:
                bus.send(frames[sent % n])
                sent += 1
            time.sleep(0.002)
        out.seconds = time.monotonic() - start
        out.cpu = time.thread_time() - cpu0
        out.sent = sent
    finally:
        bus.shutdown()


def bench_live(
    plan: Plan,
    report: Report,
    frames: list[can.Message],
    work: Path,
    *,
    extra: str = "",
    title: str = "2. Live input: 4 virtual buses at 4,000 frames/s each",
) -> tuple[int, float]:
    """Returns (frames lost, the agent's share of one core in %)."""
    tag = uuid.uuid4().hex[:8]
    channels = [f"bench-{tag}-{i}" for i in range(plan.live_buses)]
    buses = [
        {"name": f"can{i}", "interface": "virtual", "channel": ch, "dbc": [str(DEMO_DBC)]}
        for i, ch in enumerate(channels)
    ]
    cfg = write_config(work / "live.toml", buses, extra=extra)
    sink = Collect()
    pipeline = Pipeline(cfg, prepare(cfg), boot=os.urandom(8), sink=sink)
    runner = threading.Thread(target=pipeline.run, name="bench-pipeline", daemon=True)
    runner.start()
    try:
        if not wait_until(lambda: all(s == "up" for s in pipeline.source_states().values()), 20.0):
            raise BenchError(f"virtual buses did not come up: {pipeline.source_states()}")
        depth = [0]
        watching = threading.Event()

        def watch() -> None:
            while not watching.wait(0.02):
                depth[0] = max(depth[0], pipeline.queue.qsize())

        watcher = threading.Thread(target=watch, name="bench-queue-watch", daemon=True)
        results = [SenderResult() for _ in channels]
        # Each bus starts at another point of the drive, so the four carry different data.
        step = len(frames) // plan.live_buses
        senders = [
            threading.Thread(
                target=send_paced,
                args=(
                    ch,
                    frames[i * step :] + frames[: i * step],
                    plan.live_rate,
                    plan.live_seconds,
                    res,
                ),
                name=f"bench-send-{i}",
                daemon=True,
            )
            for i, (ch, res) in enumerate(zip(channels, results, strict=True))
        ]
        progress(
            f"live input: {plan.live_buses} virtual buses x {plan.live_rate} frames/s "
            f"for {plan.live_seconds:.0f} s"
        )
        watcher.start()
        cpu0, wall0 = time.process_time(), time.monotonic()
        for t in senders:
            t.start()
        for t in senders:
            t.join(plan.live_seconds * 4 + 60)
            if t.is_alive():
                raise BenchError("a live sender did not finish")
        sent_done = time.monotonic()
        sent = sum(r.sent for r in results)

        def dropped() -> int:
            return sum(s.status.dropped_frames for s in pipeline.sources)

        # The virtual bus queues are unbounded: what the pipeline has not yet taken is late,
        # not lost; wait for it (bounded) before counting.
        wait_until(lambda: pipeline.stats.frames + dropped() >= sent, 60.0)
        cpu1, wall1 = time.process_time(), time.monotonic()
        watching.set()
        watcher.join(5)
    finally:
        pipeline.stop()
        runner.join(15)
    lost_total = sent - pipeline.stats.frames
    rows = []
    for src, res in zip(pipeline.sources, results, strict=True):
        rows.append(
            (
                src.cfg.name,
                f"{res.sent:,}",
                f"{res.sent / res.seconds:,.0f}",
                f"{src.status.frames:,}",
                f"{src.status.dropped_frames:,}",
                f"{res.sent - src.status.frames:,}",
            )
        )
    wall = wall1 - wall0
    cpu = (cpu1 - cpu0) / wall * 100
    sender_cpu = sum(r.cpu for r in results) / wall * 100
    catch_up = wall1 - sent_done
    offered_ok = all(r.sent / r.seconds >= plan.live_rate * 0.98 for r in results)
    ok = lost_total == 0 and dropped() == 0 and offered_ok
    trig = pipeline.trigger_status()
    report.section(
        title,
        f"{plan.live_buses} python-can `virtual` buses in this process, each offered "
        f"{plan.live_rate:,} demo-drive frames/s for {plan.live_seconds:.0f} s by a sender thread "
        "paced on the monotonic clock; the real Pipeline consumes them.",
        "",
        *table(
            (
                "bus",
                "sent",
                "offered frames/s",
                "received by source",
                "dropped (queue full)",
                "not received",
            ),
            rows,
        ),
        "",
        *table(
            ("figure", "value"),
            [
                ("frames sent (all buses)", f"{sent:,}"),
                ("frames processed by the pipeline", f"{pipeline.stats.frames:,}"),
                ("frames lost (sent - processed)", f"{lost_total:,}"),
                (
                    "decoded / unchanged",
                    f"{pipeline.stats.decoded:,} / {pipeline.stats.unchanged:,}",
                ),
                ("updates / samples", f"{sink.updates:,} / {sink.samples:,}"),
                (
                    "max pipeline queue depth (batches of <= 256 frames)",
                    f"{depth[0]} of {pipeline.queue.maxsize}",
                ),
                ("time to catch up after the senders stopped", f"{catch_up:.2f} s"),
                ("process CPU (% of one core)", f"{cpu:.0f} %"),
                ("of which the bench's sender threads", f"{sender_cpu:.0f} %"),
                ("agent share (process - senders)", f"{cpu - sender_cpu:.0f} %"),
                (
                    "triggers active / fired / captures",
                    f"{trig['active']} / {trig.get('fired', 0):,} / {trig.get('captures', 0):,}",
                ),
            ],
        ),
        "",
        "The process CPU includes the sender threads (the virtual bus copies each frame on "
        "send); their own thread CPU time is shown and subtracted for the agent's share.",
    )
    if not extra:
        report.verdict(
            "2. live input, 4 x 4,000 frames/s",
            "0 frames lost",
            f"{lost_total + dropped():,} lost; agent CPU {cpu - sender_cpu:.0f} % of a core",
            ok,
        )
    return lost_total + dropped() if offered_ok else -1, cpu - sender_cpu


# ---- 3. compactness --------------------------------------------------------------------------


def compactness_rows(name: str, sink: Collect, cost: JsonCost) -> tuple[Any, ...]:
    per_sample = sink.bytes / sink.samples if sink.samples else float("nan")
    return (
        name,
        f"{cost.frames:,}",
        f"{cost.decoded:,}",
        f"{sink.updates:,}",
        f"{sink.samples:,}",
        f"{sink.bytes:,}",
        f"{per_sample:.2f}",
        f"{cost.json_bytes:,}",
        f"{sink.bytes / cost.json_bytes:.4f}" if cost.json_bytes else "n/a",
    )


def bench_compactness(report: Report, demo_sink: Collect, demo_cost: JsonCost, work: Path) -> None:
    rows = [compactness_rows("demo drive", demo_sink, demo_cost)]
    notes = []
    verdicts = [("demo", demo_sink)]
    if GENESIS_LOG.is_file() and GENESIS_DBC.is_file():
        progress("compactness: Genesis drive of the corpus")
        strict = True
        try:
            cfg = write_config(
                work / "genesis.toml", [replay_bus(GENESIS_LOG, GENESIS_DBC)], events=None
            )
            sink = run_pipeline(cfg).sink
        except Exception as err:  # a DBC the strict loader refuses is retried leniently
            notes.append(f"Genesis DBC loaded leniently ({type(err).__name__}).")
            strict = False
            cfg = write_config(
                work / "genesis.toml",
                [replay_bus(GENESIS_LOG, GENESIS_DBC, lenient_dbc=True)],
                events=None,
            )
            sink = run_pipeline(cfg).sink
        cost = json_per_frame(GENESIS_LOG, GENESIS_DBC, strict=strict)
        rows.append(compactness_rows("Genesis (corpus)", sink, cost))
        verdicts.append(("Genesis", sink))
        notes.append(
            f"Genesis: `{GENESIS_LOG.name}` with `{GENESIS_DBC.name}`, every signal selected."
        )
    else:
        notes.append(f"Genesis drive skipped: the corpus is absent ({CORPUS}).")
    report.section(
        "3. Compactness",
        "Bytes per transmitted sample with every header included (sum of update payloads / "
        "samples), and the ratio to one JSON message per decoded frame "
        '(`json.dumps({"vin", "t", "message", "signals"})` with cantools values).',
        "",
        *table(
            (
                "drive",
                "frames",
                "decoded frames",
                "updates",
                "samples",
                "spime bytes",
                "bytes/sample",
                "JSON bytes",
                "spime / JSON",
            ),
            rows,
        ),
        "",
        *notes,
    )
    for name, sink in verdicts:
        per = sink.bytes / sink.samples if sink.samples else float("inf")
        report.verdict(f"3. bytes per sample, {name}", "<= 4", f"{per:.2f}", per <= 4)


# ---- 4. resident memory ----------------------------------------------------------------------


def bench_rss(plan: Plan, report: Report, drive: Path, work: Path) -> None:
    progress("resident memory of spime-agent run --dry-run")
    path = work / "rss.toml"
    write_config(path, [replay_bus(drive, DEMO_DBC, speed=1.0, time="now")])
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["SPIME_LOG_LEVEL"] = "info"
    exe = str(AGENT_CLI) if AGENT_CLI.exists() else shutil.which("spime-agent")
    if exe is None:
        raise BenchError("spime-agent is not installed: run scripts/setup")
    proc = subprocess.Popen(
        [exe, "run", "--config", str(path), "--dry-run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    up = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            if " is up" in line:
                up.set()

    reader = threading.Thread(target=read_stderr, name="bench-rss-stderr", daemon=True)
    reader.start()
    try:
        if not up.wait(30):
            raise BenchError("spime-agent did not start: " + " / ".join(lines[-5:]))
        # Let it process input for a while, so its data path state is built, not just imported.
        time.sleep(plan.rss_settle)
        if proc.poll() is not None:
            raise BenchError("spime-agent ended early: " + " / ".join(lines[-5:]))
        status = Path(f"/proc/{proc.pid}/status").read_text()
        fields = {
            k: int(v.split()[0]) * 1024
            for k, v in (line.split(":", 1) for line in status.splitlines() if ":" in line)
            if k in ("VmRSS", "VmHWM")
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        reader.join(5)
    rss, hwm = fields["VmRSS"], fields["VmHWM"]
    report.section(
        "4. Resident memory",
        f"`spime-agent run --config <demo config> --dry-run` as a subprocess, replaying the demo "
        f"drive at speed 1; VmRSS read from /proc after the bus was up and {plan.rss_settle:.0f} s "
        "of input, then SIGTERM.",
        "",
        *table(
            ("figure", "value"),
            [("VmRSS", mb(rss)), ("VmHWM (peak)", mb(hwm)), ("exit code after SIGTERM", code)],
        ),
    )
    report.verdict("4. resident memory (dry run)", "<= 60 MB", mb(rss), rss <= 60e6)


# ---- 5. backlog drain ------------------------------------------------------------------------


def fill_outbox(path: Path, payloads: list[tuple[bytes, str]], n: int) -> Outbox:
    for p in path.parent.glob(path.name + "*"):
        p.unlink()
    cfg = OutboxConfig(path=path, max_bytes=8 << 30, memory_bytes=512 << 20)
    outbox = Outbox(cfg)
    outbox.open()
    now = time.time()
    for i in range(n):
        payload, priority = payloads[i % len(payloads)]
        outbox.put(payload, priority, created=now)
        if i % 5000 == 4999:
            outbox.flush()
    outbox.flush()
    rows = outbox.stats().rows
    if rows != n:
        outbox.close()
        raise BenchError(f"outbox holds {rows} rows after {n} puts")
    return outbox


def drain_limit(n: int) -> float:
    """Seconds after which a drain of ``n`` updates counts as broken (20x the usual time)."""
    return max(120.0, n / 500)


def drain_uplink(port: int, outbox: Outbox, n: int, run: int) -> float:
    # drain_rate 0: this measures what the uplink can do, as the raw paho baseline does.
    cfg = MqttConfig(host="127.0.0.1", port=port, client_id=f"bench-uplink-{run}", drain_rate=0)
    uplink = Uplink(
        cfg,
        vin=VIN,
        boot=os.urandom(8).hex(),
        outbox=outbox,
        schema_id="bench0000",
        schema_json=b"{}",
    )
    start = time.monotonic()
    uplink.start()
    try:
        deadline = start + drain_limit(n)
        while not uplink.wait_drained(1.0):
            if time.monotonic() > deadline:
                raise BenchError(f"uplink did not drain: {uplink.stats()}")
        seconds = time.monotonic() - start
    finally:
        uplink.stop(2.0)
    acked = uplink.stats().acked
    if acked < n:
        raise BenchError(f"uplink drained with {acked} of {n} acknowledged")
    return seconds


def raw_paho(port: int, payloads: list[tuple[bytes, str]], n: int, run: int) -> float:
    """Baseline: one paho client publishing every payload at QoS 1 with 20 in flight, then
    waiting for every PUBACK."""
    acked = [0]
    # paho refuses a publish whose 16-bit message id is still outstanding: beyond 65,535
    # unacknowledged messages the rest would be silently refused, so hold the caller back there.
    room = threading.BoundedSemaphore(60_000)
    connected = threading.Event()
    done = threading.Event()

    def on_connect(c: mqtt.Client, u: object, f: object, rc: Any, p: object) -> None:
        connected.set()

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: Any, p: object) -> None:
        acked[0] += 1
        room.release()
        if acked[0] >= n:
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{run}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    client.on_connect = on_connect
    client.on_publish = on_publish
    start = time.monotonic()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(15):
            raise BenchError("baseline paho client did not connect")
        for i in range(n):
            room.acquire()
            info = client.publish(DATA_TOPIC, payloads[i % len(payloads)][0], qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BenchError(f"baseline publish refused: {mqtt.error_string(info.rc)}")
        if not done.wait(drain_limit(n)):
            raise BenchError(f"baseline got {acked[0]} of {n} PUBACKs")
        seconds = time.monotonic() - start
    finally:
        client.disconnect()
        client.loop_stop()
    return seconds


def bench_drain(
    plan: Plan, report: Report, payloads: list[tuple[bytes, str]], port: int, work: Path
) -> None:
    n = plan.backlog
    avg = sum(len(p) for p, _ in payloads) / len(payloads)
    rows = []
    ratios = []
    cpu_ratios = []
    loads = [load_average()]

    def baseline(i: int) -> tuple[float, float]:
        cpu = time.process_time()
        seconds = raw_paho(port, payloads, n, i)
        return seconds, time.process_time() - cpu

    def subject(i: int) -> tuple[float, float]:
        # Filling the outbox is not timed; its committer is idle by the time the drain starts.
        outbox = fill_outbox(work / "drain" / "outbox.db", payloads, n)
        try:
            cpu = time.process_time()
            seconds = drain_uplink(port, outbox, n, i)
            return seconds, time.process_time() - cpu
        finally:
            outbox.close()

    for i in range(plan.drain_pairs):
        progress(f"drain pair {i + 1}/{plan.drain_pairs}: {n:,} updates")
        # Alternate which side runs first (see bench_throughput).
        if i % 2:
            t_up, c_up = subject(i)
            t_raw, c_raw = baseline(i)
        else:
            t_raw, c_raw = baseline(i)
            t_up, c_up = subject(i)
        ratio = t_raw / t_up
        ratios.append(ratio)
        cpu_ratios.append(c_raw / c_up)
        rows.append(
            (
                i + 1,
                f"{t_raw:.2f}",
                f"{n / t_raw:,.0f}",
                f"{t_up:.2f}",
                f"{n / t_up:,.0f}",
                f"{ratio:.2f}",
                f"{c_raw:.2f} / {c_up:.2f}",
            )
        )
    loads.append(load_average())
    med = statistics.median(ratios)
    report.section(
        "5. Drain of a backlog to the local broker",
        f"{n:,} update payloads of the demo drive ({len(payloads):,} distinct, average "
        f"{avg:,.0f} bytes) in a real SQLite outbox, drained by agent.uplink.Uplink (start() "
        "until wait_drained); baseline: raw paho QoS 1 of the same payloads with max_inflight "
        "20 (publish all, wait for every PUBACK). Filling the outbox is not timed.",
        "",
        *table(
            (
                "pair",
                "raw paho s",
                "raw paho updates/s",
                "Uplink s",
                "Uplink updates/s",
                "ratio",
                "CPU s raw paho / Uplink",
            ),
            rows,
        ),
        "",
        f"Ratio: **{spread(ratios)}** (target >= 0.9); load average {loads[0]} before, "
        f"{loads[1]} after.",
        "",
        "CPU of this process, raw paho / Uplink (the Uplink's includes its outbox's deletes "
        "and fsyncs; less sensitive to other jobs on the machine than the times): "
        f"{spread(cpu_ratios)}.",
    )
    report.verdict("5. backlog drain / raw paho", ">= 0.9", spread(ratios), med >= 0.9)


# ---- 6. event latency ------------------------------------------------------------------------


class Arrivals:
    """A paho subscriber on the data topic recording (arrival wall time, payload)."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-sub", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(DATA_TOPIC, 1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(15):
            self.close()
            raise BenchError("latency subscriber was not subscribed in time")

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        # Only stamp here: decoding later keeps the callback from delaying the next arrival.
        arrived = time.time()
        with self._lock:
            self.got.append((arrived, bytes(msg.payload)))

    def snapshot(self) -> list[tuple[float, bytes]]:
        with self._lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def publishing_agent(cfg: Config, port: int) -> Iterator[tuple[Agent, Arrivals]]:
    """The in-process Agent publishing to the local broker, connected and its bus "car" up, and
    a subscriber to what it publishes; both stopped on exit."""
    agent = Agent(cfg, prepare(cfg), dry_run=False, notifier=Notifier(""))
    runner = threading.Thread(target=agent.run, name="bench-agent", daemon=True)
    sub = Arrivals(port)
    runner.start()
    try:
        ready = wait_until(
            lambda: (
                agent.uplink is not None
                and agent.uplink.stats().state == "connected"
                and agent.pipeline.source_states().get("car") == "up"
            ),
            30.0,
        )
        if not ready:
            raise BenchError("the agent did not connect and open its bus in 30 s")
        yield agent, sub
    finally:
        agent.request_stop()
        runner.join(30)
        sub.close()


def drive_doors(
    channel: str,
    frames: list[can.Message],
    doors: int,
    period: float,
    door_open: Callable[[int], bool],
) -> list[tuple[int, float]]:
    """Demo-drive telemetry at about 400 frames/s (the drive's own rate) on a virtual bus, and a
    door frame every ``period`` s, ``doors`` times, its DoorFL bit set where ``door_open(k)``.
    Returns (k, time.time() at send) of each door frame."""
    telemetry = [f for f in frames if f.arbitration_id != DOORS_ID]
    door = next((f for f in frames if f.arbitration_id == DOORS_ID), None)
    door_data = bytearray(door.data if door is not None else bytes(8))
    sent: list[tuple[int, float]] = []
    car = can.Bus(
        interface="virtual", channel=channel, ignore_config=True, preserve_timestamps=True
    )
    try:
        rate = 400.0
        start = time.monotonic()
        k = j = 0
        while k < doors:
            now = time.monotonic()
            while j < int((now - start) * rate):
                msg = telemetry[j % len(telemetry)]
                msg.timestamp = time.time()
                car.send(msg)
                j += 1
            if now >= start + period * (k + 1):
                door_data[0] = (door_data[0] & 0xFE) | (1 if door_open(k) else 0)
                ts = time.time()
                car.send(
                    can.Message(
                        timestamp=ts,
                        arbitration_id=DOORS_ID,
                        data=bytes(door_data),
                        is_extended_id=False,
                    )
                )
                sent.append((k, ts))
                k += 1
            time.sleep(0.002)
    finally:
        car.shutdown()
    return sent


def bench_latency(
    plan: Plan, report: Report, frames: list[can.Message], port: int, work: Path
) -> None:
    channel = f"bench-{uuid.uuid4().hex[:8]}-latency"
    bus_cfg = {"name": "car", "interface": "virtual", "channel": channel, "dbc": [str(DEMO_DBC)]}
    cfg = write_config(
        work / "latency.toml",
        [bus_cfg],
        events="BCM_Doors.*",
        mqtt_port=port,
        outbox=work / "latency" / "outbox.db",
    )
    with publishing_agent(cfg, port) as (agent, sub):
        progress(f"event latency: {plan.events} door events, every 100 ms, with telemetry")
        doors = drive_doors(channel, frames, plan.events, 0.1, lambda k: (k + 1) % 2 == 1)
        sent = {int(ts * 1000): ts for _, ts in doors}

        def door_samples() -> dict[int, float]:
            got: dict[int, float] = {}
            for arrived, payload in sub.snapshot():
                doc = decode_update(payload, agent.catalog.schema)
                if doc["snapshot"]:
                    continue
                for s in doc["samples"]:
                    key = round(s["t"] * 1000)
                    if s["signal"] == DOOR_SIGNAL and key in sent and key not in got:
                        got[key] = arrived
            return got

        wait_until(lambda: len(door_samples()) >= len(sent), 20.0, 0.2)
        got = door_samples()
    latencies = [(got[key] - sent[key]) * 1000 for key in got]
    if not latencies:
        raise BenchError("no door event arrived at the subscriber")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    missing = len(sent) - len(got)
    report.section(
        "6. Event latency: door frame -> subscriber",
        "The in-process Agent publishing to the local broker (`BCM_Doors.*` as events, every "
        "other signal as telemetry, default commit_interval, outbox on disk); a virtual bus fed "
        "with demo-drive telemetry at about 400 frames/s and a changing door frame every ~100 ms; "
        "a paho subscriber decodes each update. Latency = arrival (time.time()) - the frame's "
        "timestamp (time.time() at send, kept by the virtual bus).",
        "",
        *table(
            ("figure", "value"),
            [
                ("door events sent / arrived", f"{len(sent)} / {len(got)}"),
                ("p50", f"{p50:.1f} ms"),
                ("p99", f"{p99:.1f} ms"),
                ("max", f"{max(latencies):.1f} ms"),
                ("min", f"{min(latencies):.1f} ms"),
            ],
        ),
    )
    report.verdict(
        "6. event latency p99",
        "<= 100 ms",
        f"p99 {p99:.1f} ms (p50 {p50:.1f} ms)" + (f", {missing} missing" if missing else ""),
        p99 <= 100 and missing == 0,
    )


# ---- 7. bytes on the wire per hour -----------------------------------------------------------


def bench_wire(report: Report, drive: Path, cost: JsonCost, port: int, work: Path) -> None:
    progress("bytes on the wire: the demo drive through the publishing agent")
    cfg = write_config(
        work / "wire.toml",
        [replay_bus(drive, DEMO_DBC)],
        mqtt_port=port,
        outbox=work / "wire" / "outbox.db",
    )
    agent = Agent(cfg, prepare(cfg), dry_run=False, drain_timeout=300, notifier=Notifier(""))
    result = agent.run()
    if result.exit_code != 0:
        raise BenchError(f"agent run ended with {result.exit_code}: {result.problems}")
    stats = agent.uplink.stats()
    hours = cost.duration / 3600
    spime_h = stats.bytes_sent / hours
    json_h = cost.wire_bytes / hours
    report.section(
        "7. Bytes on the wire per hour of the demo drive",
        f"The demo drive ({cost.duration:.1f} s, {cost.frames:,} frames) replayed at full speed "
        "through the in-process Agent to the local broker; `uplink.stats().bytes_sent` counts "
        "every PUBLISH (data, schema, status) with its MQTT 5 framing (fixed header, remaining "
        "length, topic, packet id, properties); TCP/TLS overhead and PUBACKs not counted. The "
        "JSON line is one QoS 1 PUBLISH per decoded frame on the same topic.",
        "",
        *table(
            ("sender", "PUBLISH packets", "bytes in the drive", "bytes per hour", "per hour"),
            [
                (
                    "spime-agent",
                    f"{stats.published:,} (+ control)",
                    f"{stats.bytes_sent:,}",
                    f"{spime_h:,.0f}",
                    mb(spime_h),
                ),
                (
                    "JSON per frame",
                    f"{cost.decoded:,}",
                    f"{cost.wire_bytes:,}",
                    f"{json_h:,.0f}",
                    mb(json_h),
                ),
            ],
        ),
        "",
        f"spime / JSON on the wire: **{stats.bytes_sent / cost.wire_bytes:.4f}**.",
    )
    report.verdict(
        "7. bytes on the wire per hour",
        "(no target)",
        f"{mb(spime_h)}/h vs JSON {mb(json_h)}/h",
        None,
    )


# ---- 9. command round trip -------------------------------------------------------------------


def bench_commands(plan: Plan, report: Report, port: int, work: Path) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from agent.control.envelope import generate_key, public_pem, seal

    key = generate_key()
    (work / "fleet.pub").write_bytes(public_pem(key.public_key()))
    channel = f"bench-{uuid.uuid4().hex[:8]}-commands"
    bus_cfg = {"name": "car", "interface": "virtual", "channel": channel, "dbc": [str(DEMO_DBC)]}
    path = work / "commands.toml"
    write_config(path, [bus_cfg], mqtt_port=port, outbox=work / "commands" / "outbox.db")
    with open(path, "a") as f:
        f.write(f'\n[remote]\ncommand_key = "{work / "fleet.pub"}"\n')
    cfg = load_config(path)
    agent = Agent(cfg, prepare(cfg), dry_run=False, notifier=Notifier(""))
    runner = threading.Thread(target=agent.run, name="bench-agent", daemon=True)
    reply = f"spime/v1/{VIN}/cmd/reply/bench"
    answers: dict[bytes, float] = {}
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        corr = bytes(getattr(msg.properties, "CorrelationData", b""))
        with lock:
            answers[corr] = arrived

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-cmd", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(reply, 1)
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    client.on_message = on_message
    n = 30 if plan.quick else 200
    rtts: list[float] = []
    runner.start()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not subscribed.wait(15):
            raise BenchError("command requester was not subscribed in time")
        # The agent subscribes once connected; a first ping (not counted) proves it listens.
        progress(f"command round trip: {n} pings, one every 100 ms")
        for i in range(n + 1):
            now_ms = int(time.time() * 1000)
            _, envelope = seal(key, vin=VIN, command="ping", issued=now_ms, expires=now_ms + 60_000)
            corr = i.to_bytes(4, "big")
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply
            props.CorrelationData = corr
            props.MessageExpiryInterval = 60
            while True:
                sent = time.perf_counter()
                client.publish(f"spime/v1/{VIN}/cmd", envelope, qos=1, properties=props)
                if wait_until(lambda c=corr: c in answers, 30.0 if i else 2.0, 0.001):
                    break
                if i:
                    raise BenchError(f"ping {i} got no answer in 30 s")
                # Not subscribed yet: the first ping went nowhere; send it again (new id).
                now_ms = int(time.time() * 1000)
                _, envelope = seal(
                    key, vin=VIN, command="ping", issued=now_ms, expires=now_ms + 60_000
                )
            if i:
                rtts.append((answers[corr] - sent) * 1000)
            time.sleep(0.1)
    finally:
        client.disconnect()
        client.loop_stop()
        agent.request_stop()
        runner.join(30)
    p50, p99 = percentile(rtts, 50), percentile(rtts, 99)
    report.section(
        "9. Command round trip: signed ping -> answer",
        "The in-process Agent with `[remote]` on the local broker (idle virtual bus); a paho "
        "MQTT 5 requester publishes a signed `ping` (QoS 1, Response Topic, Correlation Data) "
        "every 100 ms and stamps the answer's arrival. Round trip = publish -> answer, including "
        "the broker both ways, Ed25519 verification, the replay memory's atomic write (fsync) "
        "and the status summary.",
        "",
        *table(
            ("figure", "value"),
            [
                ("pings", str(len(rtts))),
                ("p50", f"{p50:.1f} ms"),
                ("p99", f"{p99:.1f} ms"),
                ("max", f"{max(rtts):.1f} ms"),
            ],
        ),
    )
    report.verdict(
        "9. command round trip p99", "<= 250 ms", f"p99 {p99:.1f} ms (p50 {p50:.1f} ms)", p99 <= 250
    )


# ---- main ------------------------------------------------------------------------------------


# ---- 8. triggers and plans -------------------------------------------------------------------


def trigger_config(count: int, buses: int) -> str:
    """``count`` rising triggers spread over the demo DBC's plain numeric signals on every bus,
    each capturing its own signal and one neighbour, 1 s before and 0.5 s after."""
    db = cantools.database.load_file(str(DEMO_DBC))
    signals = [
        (m.name, s)
        for m in db.messages
        if not m.is_multiplexed()
        for s in m.signals
        if s.length > 1 and s.minimum is not None and s.maximum is not None
    ]
    lines = []
    for i in range(count):
        bus = f"can{i % buses}"
        msg, sig = signals[i % len(signals)]
        nmsg, nsig = signals[(i + 1) % len(signals)]
        frac = 0.2 + 0.6 * ((i * 7) % 11) / 10
        threshold = sig.minimum + (sig.maximum - sig.minimum) * frac
        lines += [
            "[[trigger]]",
            f'name = "t{i}"',
            f'when = "`{bus}/{msg}.{sig.name}` > {threshold:.3f}"',
            "min_interval = 2",
            "before = 1",
            "after = 0.5",
            f'capture = ["{bus}/{msg}.{sig.name}", "{bus}/{nmsg}.{nsig.name}"]',
            "",
        ]
    return "\n".join(lines)


def bench_trigger_load(
    plan: Plan, report: Report, frames: list[can.Message], work: Path, base_cpu: float
) -> None:
    progress("live input with 256 triggers")
    lost, cpu = bench_live(
        plan,
        report,
        frames,
        work,
        extra=trigger_config(256, plan.live_buses),
        title="8a. Live input with 256 active triggers",
    )
    ratio = cpu / base_cpu if base_cpu > 0 else float("nan")
    report.verdict(
        "8a. 256 triggers, 4 x 4,000 frames/s",
        "0 lost; CPU <= 2x without triggers",
        f"{lost:,} lost; agent CPU {cpu:.0f} % vs {base_cpu:.0f} % ({ratio:.2f}x)",
        lost == 0 and ratio <= 2.0,
    )


def bench_capture_latency(
    plan: Plan, report: Report, frames: list[can.Message], port: int, work: Path
) -> None:
    """Trigger firing -> capture at a subscriber (after the window closes), and plan sent ->
    applied, on the in-process Agent publishing to the local broker."""
    channel = f"bench-{uuid.uuid4().hex[:8]}-capture"
    after = 0.2
    bus_cfg = {"name": "car", "interface": "virtual", "channel": channel, "dbc": [str(DEMO_DBC)]}
    cfg = write_config(
        work / "capture.toml",
        [bus_cfg],
        events=None,
        mqtt_port=port,
        outbox=work / "capture" / "outbox.db",
        extra=(
            '[[signal]]\nmatch = "ECM_*.*"\n\n[[trigger]]\nname = "door"\n'
            f'when = "BCM_Doors.DoorFL == 1"\nbefore = 0.5\nafter = {after}\n'
            'capture = ["ESP_VehicleDynamics.*", "BCM_Doors.*"]\n'
        ),
    )
    captures = max(10, plan.events // 4)
    with publishing_agent(cfg, port) as (agent, sub):
        progress(f"capture latency: {captures} door triggers, every 500 ms, with telemetry")
        # The door opens and closes every 250 ms: each opening fires the trigger.
        doors = drive_doors(channel, frames, captures * 2, 0.25, lambda k: k % 2 == 0)
        fired = {int(ts * 1000): ts for k, ts in doors if k % 2 == 0}

        def capture_arrivals() -> dict[int, float]:
            got: dict[int, float] = {}
            for arrived, payload in sub.snapshot():
                doc = decode_update(payload, agent.catalog.schema)
                trig = doc.get("trigger")
                if trig is not None:
                    got.setdefault(round(trig["t"] * 1000), arrived)
            return got

        wait_until(lambda: len(capture_arrivals()) >= len(fired), 20.0, 0.2)
        got = capture_arrivals()
        # Plan sent -> applied: the call that a plan command or the retained plan makes, until
        # the pipeline runs the new selection.
        applied: list[float] = []
        for version in range(1, 11):
            doc = {
                "id": "bench",
                "version": version,
                "signal": [{"match": "ECM_*.*" if version % 2 else "ESP_*.*"}],
            }
            t0 = time.monotonic()
            problems = agent.apply_plan(doc)
            if problems or not agent.pipeline.wait_reloaded(10.0):
                raise BenchError(f"plan not applied: {problems}")
            applied.append((time.monotonic() - t0) * 1000)
    latencies = [(got[key] - (fired[key] + after)) * 1000 for key in got if key in fired]
    if not latencies:
        raise BenchError("no capture arrived at the subscriber")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    report.section(
        "8b. Trigger firing -> capture at a subscriber; plan sent -> applied",
        "The in-process Agent publishing to the local broker; a virtual bus with demo-drive "
        "telemetry at about 400 frames/s and a door frame opening every 500 ms; the trigger "
        f"`BCM_Doors.DoorFL == 1` captures 0.5 s before and {after} s after. Latency = arrival "
        "at a paho subscriber - (the firing frame's timestamp + after): the time from the "
        "window's end to the capture at the subscriber. Plans: `Agent.apply_plan` (what a plan "
        "command or the retained plan calls) until the pipeline runs the new selection; "
        "alternating selections.",
        "",
        *table(
            ("figure", "value"),
            [
                ("triggers fired / captures arrived", f"{len(fired)} / {len(latencies)}"),
                ("capture after window end, p50", f"{p50:.1f} ms"),
                ("capture after window end, p99", f"{p99:.1f} ms"),
                (
                    "plan applied, p50 / max",
                    f"{percentile(applied, 50):.0f} / {max(applied):.0f} ms",
                ),
            ],
        ),
    )
    report.verdict(
        "8b. trigger -> capture at subscriber",
        "p99 <= 100 ms after the window",
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(latencies)} of {len(fired)})",
        p99 <= 100 and len(latencies) == len(fired),
    )
    report.verdict(
        "8c. plan sent -> applied",
        "<= 1 s",
        f"p50 {percentile(applied, 50):.0f} ms, max {max(applied):.0f} ms",
        max(applied) <= 1000,
    )


def _ctx_switches(pid: int, exclude: set[int]) -> dict[int, int]:
    """Voluntary context switches of each thread of ``pid`` (each one is a wake-up), except the
    threads in ``exclude`` (the bench's own)."""
    counts: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        if int(task.name) in exclude:
            continue
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    counts[int(task.name)] = int(line.split()[1])
        except OSError:
            continue  # a thread that ended meanwhile
    return counts


def _per_thread(before: dict[int, int], after: dict[int, int], scale: float) -> str:
    """Wake-ups per minute by thread name, the busiest first."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    rates = {names.get(tid, str(tid)): (n - before.get(tid, 0)) * scale for tid, n in after.items()}
    busy = sorted(((r, name) for name, r in rates.items() if r > 0), reverse=True)
    return ", ".join(f"{name} {r:.0f}" for r, name in busy) or "none"


def _parked_window(window: float, bench_threads: set[int]) -> tuple[float, str, float]:
    """Over ``window`` seconds: wake-ups per minute of this process's threads but the bench's
    own (``bench_threads``), the same per thread, and the process's CPU seconds per hour (the
    calling thread's left out)."""
    pid = os.getpid()
    before, cpu0 = _ctx_switches(pid, bench_threads), time.thread_time()
    proc0 = time.process_time()
    time.sleep(window)
    after = _ctx_switches(pid, bench_threads)
    wakes = (sum(after.values()) - sum(before.values())) * 60.0 / window
    by_thread = _per_thread(before, after, 60.0 / window)
    cpu_h = (time.process_time() - proc0 - (time.thread_time() - cpu0)) * 3600.0 / window
    return wakes, by_thread, cpu_h


def _ready_seconds(work: Path) -> tuple[float, float]:
    """Start of `spime-agent run` (a subprocess, the demo config publishing to a local port
    with nothing listening) -> READY=1 on its NOTIFY_SOCKET: wall seconds, and the CPU seconds
    the process had used by then (less sensitive to a busy machine).

    As installed (a wheel's modules are byte-compiled at install): the bytecode is cached in
    the work folder, whatever PYTHONDONTWRITEBYTECODE says, and the caller discards a first
    run that writes it."""
    import socket

    cfg_path = work / "ready.toml"
    write_config(
        cfg_path,
        [{"name": "demo", "interface": "virtual", "channel": "ready", "dbc": [str(DEMO_DBC)]}],
        mqtt_port=1,
        outbox=work / "ready-outbox.db",
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = str(work / f"notify-{uuid.uuid4().hex[:8]}.sock")
    notify.bind(addr)
    notify.settimeout(30)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(AGENT_CLI), "run", "--config", str(cfg_path)],
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "NOTIFY_SOCKET": addr,
            "PYTHONPYCACHEPREFIX": str(work / "pycache"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        wall = time.monotonic() - t0
        # utime and stime, fields 14 and 15 of /proc/PID/stat (after the parenthesised name).
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return wall, cpu
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        notify.close()


def _acked(agent: Agent) -> int:
    return int(agent.uplink.stats().acked) if agent.uplink is not None else 0


def bench_power(plan: Plan, report: Report, port: int, work: Path) -> None:
    """The lifecycle (issue 10): start -> READY, wake-ups per minute while parked, and the first
    frame after parking -> the first PUBACK of the agent's data (its uplink counter of updates
    acknowledged by the broker), the paused link's reconnect included."""
    _ready_seconds(work)  # writes the bytecode cache
    runs = [_ready_seconds(work) for _ in range(3 if plan.quick else 5)]
    readies = sorted(wall for wall, _ in runs)
    ready = statistics.median(readies)
    ready_cpu = statistics.median(cpu for _, cpu in runs)
    report.verdict(
        "start -> READY (`spime-agent run`, demo config, publishing)",
        "<= 0.5 s",
        f"median {ready:.2f} s ({', '.join(f'{r:.2f}' for r in readies)}); "
        f"CPU used by then: median {ready_cpu:.2f} s; load average {os.getloadavg()[0]:.1f}",
        ready <= 0.5,
    )
    channel = f"power-{uuid.uuid4().hex[:8]}"
    cfg = write_config(
        work / "power.toml",
        [{"name": "car", "interface": "virtual", "channel": channel, "dbc": [str(DEMO_DBC)]}],
        mqtt_port=port,
        outbox=work / "power-outbox.db",
        extra=("[power]\npark_after = 1\npark_upload = 2\nheartbeat = 60\n"),
    )
    agent = Agent(cfg, prepare(cfg), dry_run=False)
    bench_threads = {threading.get_native_id()}
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    car = can.Bus(interface="virtual", channel=channel, ignore_config=True)
    samples: list[float] = []

    def state() -> str:
        doc = agent.status()["power"]
        # Just started, the agent is parked until the inputs decide: no park to wake from yet.
        return "started" if doc["reason"] == "started" else str(doc["state"])

    def paused() -> bool:
        # Parked and the park actions done: upload, clean disconnect (then the radio).
        return state() == "parked" and agent.uplink is not None and agent.uplink.stats().paused

    try:
        door = 0
        cycles = 5 if plan.quick else 20
        for _ in range(cycles):
            if not wait_until(paused, 60):
                raise BenchError("the agent did not park and pause its link within 60 s")
            acked = _acked(agent)
            door ^= 1
            t = time.monotonic()
            car.send(
                can.Message(
                    arbitration_id=DOORS_ID, data=bytes([door]) + bytes(7), is_extended_id=False
                )
            )
            if not wait_until(lambda a=acked: _acked(agent) > a, 30, interval=0.002):
                raise BenchError("no update acknowledged after a wake within 30 s")
            samples.append(time.monotonic() - t)
        window = 15.0 if plan.quick else 60.0
        if not wait_until(paused, 60):
            raise BenchError("the agent did not park and pause its link within 60 s")
        time.sleep(3.0)
        wakes, by_thread, cpu_h = _parked_window(window, bench_threads)
    finally:
        car.shutdown()
        agent.request_stop()
        runner.join(15)
    p50, p99 = percentile(samples, 50), percentile(samples, 99)
    report.verdict(
        "parked: wake-ups per minute (agent threads, voluntary context switches)",
        "<= 60",
        f"{wakes:.0f}/min over {window:.0f} s",
        wakes <= 60,
    )
    report.verdict("parked: CPU seconds per hour (process)", "", f"{cpu_h:.1f} s/h", None)
    report.verdict(
        "wake (first frame after parking) -> first PUBACK (reconnect included)",
        "p99 <= 2 s",
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms ({len(samples)} wakes)",
        p99 <= 2.0,
    )
    report.section(
        "Lifecycle",
        "Agent in this process on a `virtual` bus (`park_after = 1`, local broker); "
        f"{len(samples)} park/wake cycles, each measured from the frame sent to the agent's "
        "`acked` counter rising (its MQTT link paused while parked, so the reconnect counts); "
        f"wake-ups from /proc/self/task/*/status over {window:.0f} s parked, the bench's own "
        f"threads left out; per thread and minute: {by_thread}. "
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
    )


def bench_power_gnss(plan: Plan, report: Report, port: int, work: Path) -> None:
    """Parked with a GNSS receiver (``[gnss]``): an NMEA pseudo-terminal the bench feeds at 1 Hz
    like a receiver, which goes on talking while the car is parked. Measured: wake-ups per
    minute parked (as in bench_power), the sentences the agent read while parked (none: the
    receiver is paused, its port closed), and from the wake's frame to the port open again and
    to the first fix read."""
    import tty

    from tests.support.nmea import epoch, position

    progress("lifecycle with a GNSS receiver")
    master, slave = os.openpty()
    tty.setraw(slave)
    # A receiver nobody reads fills the pty's buffer; what it cannot write is lost, as on a
    # serial line.
    os.set_blocking(master, False)
    channel = f"power-gnss-{uuid.uuid4().hex[:8]}"
    cfg = write_config(
        work / "power-gnss.toml",
        [{"name": "car", "interface": "virtual", "channel": channel, "dbc": [str(DEMO_DBC)]}],
        mqtt_port=port,
        outbox=work / "power-gnss-outbox.db",
        extra=(
            "[power]\npark_after = 1\npark_upload = 2\nheartbeat = 60\n"
            f"[gnss]\nport = {json.dumps(os.ttyname(slave))}\n"
        ),
    )
    agent = Agent(cfg, prepare(cfg), dry_run=False)
    bench_threads = {threading.get_native_id()}
    stop = threading.Event()
    feeder_cpu = [0.0]  # the writer's own CPU seconds, left out of the agent's

    def feed() -> None:
        bench_threads.add(threading.get_native_id())
        second = 0
        while not stop.wait(1.0):
            with contextlib.suppress(BlockingIOError):
                os.write(master, epoch("GN", second, *position(second)))
            second += 1
            feeder_cpu[0] = time.thread_time()

    def gnss() -> Any:
        src = agent.location.source if agent.location is not None else None
        if src is None:
            raise BenchError("the GNSS receiver was not opened")
        return src

    def doc(part: str) -> dict[str, Any]:
        return agent.status()[part]  # type: ignore[no-any-return]

    def door() -> None:
        car.send(can.Message(arbitration_id=DOORS_ID, data=bytes(8), is_extended_id=False))

    def driving_with_fix() -> bool:
        door()  # the car drives while its frames come
        return doc("power")["state"] == "driving" and doc("gnss")["state"] == "fix"

    def parked() -> bool:
        link = agent.uplink is not None and agent.uplink.stats().paused
        return doc("power")["state"] == "parked" and link and doc("gnss")["state"] == "paused"

    runner = threading.Thread(target=agent.run, daemon=True)
    feeder = threading.Thread(target=feed, name="bench-receiver", daemon=True)
    runner.start()
    feeder.start()
    car = can.Bus(interface="virtual", channel=channel, ignore_config=True)
    window = 15.0 if plan.quick else 60.0
    try:
        if not wait_until(driving_with_fix, 60, interval=0.2):
            raise BenchError("no GNSS fix while driving within 60 s")
        if not wait_until(parked, 60):
            raise BenchError("the agent did not park, pause its link and its receiver in 60 s")
        time.sleep(3.0)
        read0, opens0 = gnss().reader.counters["sentences"], gnss().opens
        cpu0 = feeder_cpu[0]
        wakes, by_thread, cpu_h = _parked_window(window, bench_threads)
        cpu_h -= (feeder_cpu[0] - cpu0) * 3600.0 / window
        read = gnss().reader.counters["sentences"] - read0
        fixes0 = gnss().reader.counters["fixes"]
        t = time.monotonic()
        door()
        if not wait_until(lambda: gnss().opens > opens0, 30, interval=0.002):
            raise BenchError("the GNSS port was not opened again within 30 s of the wake")
        opened = time.monotonic() - t
        if not wait_until(lambda: gnss().reader.counters["fixes"] > fixes0, 30, interval=0.005):
            raise BenchError("no fix read within 30 s of the wake")
        fixed = time.monotonic() - t
    finally:
        stop.set()
        car.shutdown()
        agent.request_stop()
        runner.join(15)
        feeder.join(5)
        os.close(master)
        os.close(slave)
    report.verdict(
        "parked with a GNSS receiver (NMEA pty talking at 1 Hz): wake-ups per minute; "
        "sentences read while parked",
        "<= 60; none",
        f"{wakes:.0f}/min over {window:.0f} s; {read} read",
        wakes <= 60 and read == 0,
    )
    report.verdict(
        "parked with a GNSS receiver: CPU seconds per hour (process, the bench's writer left out)",
        "",
        f"{cpu_h:.1f} s/h",
        None,
    )
    report.verdict(
        "wake (first frame after parking) -> GNSS port open again / first fix read",
        "",
        f"{opened * 1000:.0f} ms / {fixed * 1000:.0f} ms (the receiver talks once a second)",
        None,
    )
    report.section(
        "Lifecycle with a GNSS receiver",
        "The lifecycle's agent with `[gnss]` on a pseudo-terminal the bench writes an NMEA epoch "
        "(RMC and GGA) to every second, parked as soon as the frames stop; "
        f"wake-ups over {window:.0f} s parked, the bench's threads (the receiver's writer "
        f"included) left out; per thread and minute: {by_thread}. "
        f"Load average at the end: {os.getloadavg()[0]:.1f}.",
    )


def header(plan: Plan, started: float) -> list[str]:
    return [
        "# spime-agent bench",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(started))}; "
        f"{'quick smoke run (--quick)' if plan.quick else 'full run'}; "
        f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"python-can {can.__version__}, cantools {cantools.__version__}.",
        "",
        "Speeds are ratios to a baseline measured in the same run (interleaved, median shown); "
        "absolute figures are for orientation only: the machine is shared and noisy.",
    ]


def run(plan: Plan, work: Path) -> Report:
    report = Report()
    drive = work / "drive.log"
    progress(f"generating a {plan.frames:,}-frame demo drive")
    generate_drive(drive, plan.frames)
    demo_sink = bench_throughput(plan, report, drive, work)
    progress("JSON per frame on the demo drive")
    demo_cost = json_per_frame(drive, DEMO_DBC)
    frames = read_frames(drive, 40_000)
    _, base_cpu = bench_live(plan, report, frames, work)
    bench_trigger_load(plan, report, frames, work, base_cpu)
    bench_compactness(report, demo_sink, demo_cost, work)
    bench_rss(plan, report, drive, work)
    # No per-packet log: it would cost the broker time being measured.
    broker = Mosquitto(work / "broker", log_types=("error", "warning", "notice", "information"))
    with broker:
        port = broker.port
        bench_drain(plan, report, demo_sink.payloads, port, work)
        bench_latency(plan, report, frames, port, work)
        bench_wire(report, drive, demo_cost, port, work)
        bench_capture_latency(plan, report, frames, port, work)
        bench_commands(plan, report, port, work)
        bench_power(plan, report, port, work)
        bench_power_gnss(plan, report, port, work)
    run_location(plan, report, work)
    report.sections += run_vcan(plan).sections
    return report


def run_location(plan: Plan, report: Report, work: Path) -> None:
    """12: location sampling and bytes per fix (scripts/bench_location.py), with 1 s updates
    of a short demo drive as the CAN data a fix rides along with."""
    from bench_location import bench_location

    progress("location: fixes sent and bytes per fix")
    drive = work / "location-drive.log"
    generate_drive(drive, 20_000)
    cfg = write_config(work / "location.toml", [replay_bus(drive, DEMO_DBC)])
    run = run_pipeline(cfg)
    updates = [p for p, _ in run.sink.payloads]
    bench_location(report, updates, run.pipeline.catalog.schema)


def run_location_only(plan: Plan, work: Path) -> Report:
    report = Report()
    run_location(plan, report, work)
    return report


def run_vcan(plan: Plan) -> Report:
    """The SocketCAN part (scripts/bench_vcan.py): here where the kernel has vcan, else in
    scripts/vcan-vm (its Markdown section is taken as it comes)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_vcan.py")]
    cmd += ["--quick"] * plan.quick
    if not Path("/sys/class/net/vcan0").exists():
        cmd = [str(ROOT / "scripts" / "vcan-vm"), "--timeout", "3000", "--", *cmd]
    progress("SocketCAN receive path: " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=3600, cwd=ROOT)
    if proc.returncode != 0:
        raise BenchError(f"the SocketCAN bench failed (exit {proc.returncode})")
    report = Report()
    report.sections.append(proc.stdout[proc.stdout.index("## ") :])
    return report


def run_ratios_only(plan: Plan, work: Path) -> Report:
    """The replay throughput and the backlog drain alone (both ratios to a baseline)."""
    report = Report()
    drive = work / "drive.log"
    progress(f"generating a {plan.frames:,}-frame demo drive")
    generate_drive(drive, plan.frames)
    demo_sink = bench_throughput(plan, report, drive, work)
    broker = Mosquitto(work / "broker", log_types=("error", "warning", "notice", "information"))
    with broker:
        bench_drain(plan, report, demo_sink.payloads, broker.port, work)
    return report


def run_power_only(plan: Plan, work: Path) -> Report:
    report = Report()
    broker = Mosquitto(work / "broker", log_types=("error", "warning", "notice", "information"))
    with broker:
        bench_power(plan, report, broker.port, work)
        bench_power_gnss(plan, report, broker.port, work)
    return report


def run_bcm() -> int:
    """Kernel-side change detection on real SocketCAN (scripts/bench_bcm.py): on vcan0 where
    this kernel has it, else inside scripts/vcan-vm; its table goes to out/bench-bcm.md."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_bcm.py")]
    if not Path("/sys/class/net/vcan0").exists():
        cmd = [str(ROOT / "scripts" / "vcan-vm"), "--timeout", "1800", "--", *cmd]
    return subprocess.run(cmd, cwd=ROOT, check=False).returncode


def run_diag() -> int:
    """The diagnostics' ISO-TP transports on real SocketCAN (scripts/bench_diag.py): on vcan0
    where this kernel has it, else inside scripts/vcan-vm; its table goes to out/bench-diag.md."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_diag.py")]
    if not Path("/sys/class/net/vcan0").exists():
        cmd = [str(ROOT / "scripts" / "vcan-vm"), "--timeout", "900", "--", *cmd]
    return subprocess.run(cmd, cwd=ROOT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shortened smoke run (< 60 s)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench.md")
    parser.add_argument("--power", action="store_true", help="only the lifecycle measurements")
    parser.add_argument("--location", action="store_true", help="only the location part")
    parser.add_argument("--bcm", action="store_true", help="only CAN_BCM on vcan (VM if needed)")
    parser.add_argument(
        "--diag", action="store_true", help="only kernel vs user ISO-TP on vcan (VM if needed)"
    )
    parser.add_argument(
        "--vcan", action="store_true", help="only the SocketCAN receive path (in the VM if need be)"
    )
    parser.add_argument(
        "--ratios", action="store_true", help="only the replay throughput and the backlog drain"
    )
    args = parser.parse_args(argv)
    if args.bcm:
        return run_bcm()
    if args.diag:
        return run_diag()
    plan = Plan.make(args.quick)
    started = time.time()
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="spime-bench-"))
    try:
        if args.location:
            report = run_location_only(plan, work)
        elif args.vcan:
            report = run_vcan(plan)
        elif args.power:
            report = run_power_only(plan, work)
        elif args.ratios:
            report = run_ratios_only(plan, work)
        else:
            report = run(plan, work)
    except (BenchError, BrokerError) as err:
        print(f"bench: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report.markdown(header(plan, started))
    text += f"\nBench time: {time.monotonic() - t0:.0f} s.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    sys.stdout.write(text)
    progress(f"report written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
