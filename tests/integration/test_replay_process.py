"""A log read in a child process (``reader = "process"``, agent.logchild) against the same log
read in the pipeline's thread: the same updates byte for byte, the same counters; a stop or a
SIGTERM in the middle of a replay ends the child (reaped, never orphaned)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.can_source import PROCESS_MIN_BYTES, Source
from agent.config import load_config
from agent.daemon import prepare
from agent.pipeline import Pipeline
from agent.updates import Update
from tests.support.agentrun import write_config
from tests.support.data import DEMO_DBC, ENGINE_DBC, REPO, make_demo_drive
from tests.support.wait import wait_for

DBC = (
    ENGINE_DBC
    + """BO_ 2147484160 Body: 8 ECU
 SG_ Door : 0|1@1+ (1,0) [0|1] "" Vector__XXX
"""
)
EVERY_SIGNAL = '[[signal]]\nmatch = "*.*"\n'


def _generated(path: Path, frames: int) -> Path:
    """A candump log: engine frames that change, some repeated, extended-id door frames, a
    remote frame, an error frame, a short frame and an id the DBC does not know."""
    lines = []
    for i in range(frames):
        t = 100.0 + i * 0.001
        kind = i % 7
        if kind == 0:
            lines.append(f"({t:.6f}) can0 00000200#{i // 7 % 2:02X}\n")
        elif kind == 1:
            lines.append(f"({t:.6f}) can0 300#0011\n")
        elif kind == 2 and i % 700 == 2:
            lines.append(f"({t:.6f}) can0 100#R\n")
        elif kind == 3 and i % 1400 == 3:
            lines.append(f"({t:.6f}) can0 20000040#0000000000000000\n")
        elif kind == 4 and i % 350 == 4:
            lines.append(f"({t:.6f}) can0 100#1127\n")
        else:
            speed = (i // 5) % 60000
            lines.append(
                f"({t:.6f}) can0 100#{speed & 0xFF:02X}{speed >> 8:02X}0000000000{i % 90:02X}\n"
            )
    path.write_text("".join(lines))
    return path


def _replay(
    tmp_path: Path, logs: list[Path], dbc: Path, reader: str, extra: str = EVERY_SIGNAL, **bus: Any
) -> tuple[list[bytes], Pipeline]:
    buses = [
        {"name": f"b{i}", "interface": "replay", "log": str(log), "dbc": [str(dbc)]}
        | {"reader": reader, **bus}
        for i, log in enumerate(logs)
    ]
    cfg = load_config(write_config(tmp_path / f"{reader}.toml", buses, extra=extra))
    payloads: list[bytes] = []

    def sink(update: Update) -> None:
        payloads.append(update.payload + (b"E" if update.event else b"T"))

    pipeline = Pipeline(cfg, prepare(cfg), boot=bytes(8), sink=sink)
    pipeline.run()
    assert all(src.reader_pid == 0 for src in pipeline.sources)
    return payloads, pipeline


def _same_in_both(tmp_path: Path, logs: list[Path], dbc: Path, **kw: Any) -> list[bytes]:
    threaded, p1 = _replay(tmp_path, logs, dbc, "thread", **kw)
    forked, p2 = _replay(tmp_path, logs, dbc, "process", **kw)
    assert forked == threaded
    assert p2.stats == p1.stats
    assert p2.source_counters() == p1.source_counters()
    assert p2.source_states() == p1.source_states()
    return threaded


def test_a_generated_log_gives_the_same_updates_in_a_child_process(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    # More frames than one message of the child holds, and not a multiple of it.
    log = _generated(tmp_path / "drive.log", 30_001)
    updates = _same_in_both(tmp_path, [log], tmp_path / "car.dbc")
    assert len(updates) > 10
    # Merged with a second log, and paced (a speed beyond reach: nothing waits for long).
    other = _generated(tmp_path / "other.log", 5_000)
    _same_in_both(tmp_path, [log, other], tmp_path / "car.dbc")
    _same_in_both(tmp_path, [other], tmp_path / "car.dbc", speed=1e6)


def test_the_demo_drive_gives_the_same_updates_in_a_child_process(tmp_path: Path) -> None:
    log = make_demo_drive(tmp_path / "demo.log", 60)
    extra = '[[signal]]\nmatch = "BCM_*.*"\npriority = "event"\n\n' + EVERY_SIGNAL
    assert _same_in_both(tmp_path, [log], DEMO_DBC, extra=extra)


@pytest.mark.parametrize(
    "log, dbc",
    [
        ("eldominio-canbuslogs/genesis__mphloggenesis.log", "genesis__slimmeddbc.dbc"),
        ("eldominio-canbuslogs/Yaris_09__noeculog.trc", "Yaris_09__toyota_iQ_2009_can.dbc"),
        ("python-can/logfile_errorframes.asc", None),
        ("python-can/test_CanMessage.asc.gz", None),
        ("python-can/test_CanFdMessage.blf", None),
    ],
)
def test_corpus_logs_give_the_same_updates_in_a_child_process(
    corpus: Path, tmp_path: Path, log: str, dbc: str | None
) -> None:
    path = corpus / "logs" / log
    if not path.is_file():
        pytest.skip(f"{path} is not in the corpus")
    db = corpus / "dbc" / "eldominio-canbuslogs" / dbc if dbc else DEMO_DBC
    _same_in_both(tmp_path, [path], db)


def test_a_stop_mid_replay_ends_the_child(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    # Far more than the pipe holds: the child is still reading when the pipeline stops.
    log = _generated(tmp_path / "drive.log", 200_000)
    bus = {"name": "car", "interface": "replay", "log": str(log), "dbc": ["car.dbc"]}
    cfg = load_config(
        write_config(tmp_path / "a.toml", [{**bus, "reader": "process"}], extra=EVERY_SIGNAL)
    )
    pids: list[int] = []

    def sink(update: Update) -> None:
        if not pids:
            pids.append(pipeline.sources[0].reader_pid)
            pipeline.stop()

    pipeline = Pipeline(cfg, prepare(cfg), boot=bytes(8), sink=sink)
    pipeline.run()
    (pid,) = pids
    assert pid > 0
    assert pipeline.stats.frames < 200_000
    assert pipeline.sources[0].reader_pid == 0
    # Reaped by the pipeline: not a child of this process any more, not running anywhere.
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not Path(f"/proc/{pid}").exists()


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (none once it ended)."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        return []
    return found


def test_sigterm_mid_replay_ends_the_agent_and_its_child(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    log = _generated(tmp_path / "drive.log", 400_000)
    bus = {"name": "car", "interface": "replay", "log": str(log), "dbc": ["car.dbc"]}
    cfg = write_config(tmp_path / "a.toml", [{**bus, "reader": "process"}], extra=EVERY_SIGNAL)
    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(cfg), "--dry-run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=REPO,
        )
        try:
            # Up means the child opened the log (and the agent's signal handlers are in place).
            wait_for(lambda: "bus car is up" in err.read_text(), timeout=60, what="the replay")
            (child,) = wait_for(
                lambda: _children(agent.pid), timeout=60, what="the process reading the log"
            )
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(60) == 0, err.read_text()
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    text = err.read_text()
    assert "received SIGTERM" in text and "Traceback" not in text, text
    finished = re.search(r"input finished: (\d+) frames", text)
    assert finished and int(finished.group(1)) < 400_000, text  # stopped mid-replay
    # The agent reaped it before it ended: no orphan left running.
    assert not Path(f"/proc/{child}").exists()


def _in_process(tmp_path: Path, log: Path, **bus: Any) -> bool:
    (tmp_path / "car.dbc").write_text(DBC)
    entry = {"name": "car", "interface": "replay", "log": str(log), "dbc": ["car.dbc"], **bus}
    cfg = load_config(write_config(tmp_path / "a.toml", [entry]))
    return Source(0, cfg.bus[0], queue.Queue(), threading.Event()).in_process()


def test_auto_reads_a_large_unpaced_log_in_a_process_given_two_cores(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU here")
    big = _generated(tmp_path / "big.log", 80_000)
    assert big.stat().st_size >= PROCESS_MIN_BYTES
    small = _generated(tmp_path / "small.log", 1_000)
    assert _in_process(tmp_path, big)
    assert not _in_process(tmp_path, big, speed=1.0)
    assert not _in_process(tmp_path, big, reader="thread")
    assert not _in_process(tmp_path, small)
    assert _in_process(tmp_path, small, reader="process", speed=1.0)
    # Held to one CPU, the same process reads the large log in its thread.
    one_cpu = (
        "import os, sys; from tests.integration import test_replay_process as t; "
        "from pathlib import Path; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "sys.exit(0 if t._in_process(Path(sys.argv[1]), Path(sys.argv[2])) else 3)"
    )
    r = subprocess.run([sys.executable, "-c", one_cpu, str(tmp_path), str(big)], cwd=REPO)
    assert r.returncode == 3


def test_time_now_shifts_the_log_to_start_when_the_child_reads_it(tmp_path: Path) -> None:
    (tmp_path / "car.dbc").write_text(DBC)
    log = _generated(tmp_path / "drive.log", 3_000)  # 100.000 s to 102.999 s
    for reader in ("thread", "process"):
        before = time.time()
        _, pipeline = _replay(tmp_path, [log], tmp_path / "car.dbc", reader, time="now")
        after = time.time()
        # The first frame is stamped when it was read, the rest keep their spacing.
        start = pipeline.now - 2.999
        assert before <= start <= after, reader
