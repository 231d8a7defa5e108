"""Kernel-side change detection (CAN_BCM) on vcan: the same changes as the raw path on a real
drive, heartbeats confirmed and a silent bus detected although unchanged frames never reach
user space, a resynchronisation after the kernel dropped notifications, and a reload changing
what the kernel watches."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from agent.can_source import Source
from agent.catalog import build_catalog
from agent.config import load_config
from agent.sources.bcm import BcmReader
from agent.sources.kernelsock import size_receive_buffer
from tests.support.agentrun import Running, write_config
from tests.support.data import CORPUS, SPEED_FD_DBC
from tests.support.wait import wait_for

GENESIS_DBC = CORPUS / "dbc" / "eldominio-canbuslogs" / "genesis__slimmeddbc.dbc"
GENESIS_LOG = CORPUS / "logs" / "eldominio-canbuslogs" / "genesis__candump-2021-05-28_164301.log"
# Signals that change in every frame by design: a selection without them is where BCM pays.
COUNTERS = re.compile(r"cnt|count|alive|chk|checksum|crc|parity", re.IGNORECASE)


def _bus(channel: str, name: str, mode: str, **more: object) -> dict[str, object]:
    return {
        "name": name,
        "interface": "socketcan",
        "channel": channel,
        "dbc": ["car.dbc"],
        "change_detection": mode,
        **more,
    }


def _signals(entries: list[dict[str, object]]) -> str:
    out = []
    for entry in entries:
        out.append("[[signal]]")
        out += [f"{k} = {v!r}".replace("'", '"') for k, v in entry.items()]
    return "\n".join(out) + "\n"


@pytest.mark.skipif(not GENESIS_LOG.is_file(), reason="the shared corpus is not here")
def test_bcm_hands_on_the_changes_the_raw_path_decodes(
    tmp_path: Path, vcan0: str, canplayer: str
) -> None:
    (tmp_path / "car.dbc").write_bytes(GENESIS_DBC.read_bytes())
    db = cantools.database.load_file(str(GENESIS_DBC))
    chosen = [
        {"match": f"{m.name}.{s.name}"}
        for m in db.messages
        for s in m.signals
        if not COUNTERS.search(s.name)
    ]
    extra = "[updates]\nmax_age = 0.05\nsnapshot_interval = 0\n" + _signals(chosen)
    runs = {
        mode: Running(write_config(tmp_path / f"{mode}.toml", [_bus(vcan0, "car", mode)], extra))
        for mode in ("bcm", "off")
    }
    with runs["bcm"] as bcm, runs["off"] as raw:
        for run in (bcm, raw):
            wait_for(lambda r=run: r.agent.pipeline.source_states()["car"] == "up", what="up")
        # As fast as canplayer sends, one frame a millisecond: the drive in about 1.4 s.
        subprocess.run(
            [canplayer, "-t", "-g", "1", "-I", str(GENESIS_LOG), f"{vcan0}=can0"],
            check=True,
            timeout=120,
        )
        ids = {m.frame_id for m in db.messages}
        sent = sum(
            1
            for line in GENESIS_LOG.read_text().splitlines()
            if int(line.split()[2].split("#")[0], 16) in ids
        )
        raw_src = raw.agent.pipeline.sources[0]
        # Processed, not only read: a reader reading ahead counts frames before they are.
        raw_stats = raw.agent.pipeline.stats
        wait_for(lambda: raw_stats.frames >= sent, timeout=60, what="every frame, raw")
        wait_for(lambda: len(bcm.samples()) >= len(raw.samples()), timeout=60, what="bcm samples")
        bcm_src = bcm.agent.pipeline.sources[0]
        woken = bcm_src.status.frames
    assert sorted(bcm.samples()) == sorted(raw.samples())
    assert len(raw.samples()) > 500
    # Unchanged frames stayed in the kernel.
    assert woken < sent * 0.8, (woken, sent)
    assert bcm_src.status.dropped_frames == raw_src.status.dropped_frames == 0


def _engine_config(tmp_path: Path, channel: str, **policy: object) -> Path:
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    extra = "[updates]\nmax_age = 0.05\nsnapshot_interval = 0\n" + _signals(
        [{"match": "Engine.Speed", **policy}]
    )
    return write_config(
        tmp_path / "agent.toml", [_bus(channel, "pt", "bcm", silent_after=0.8)], extra
    )


def _speed(value: int) -> can.Message:
    return can.Message(
        arbitration_id=0x100, data=value.to_bytes(2, "little") + bytes(6), is_extended_id=False
    )


def test_heartbeats_need_a_confirming_frame_and_silence_is_seen(
    tmp_path: Path, vcan0: str, open_bus
) -> None:
    car = open_bus()
    with Running(_engine_config(tmp_path, vcan0, max_interval=0.2)) as run:
        pipeline = run.agent.pipeline
        wait_for(lambda: pipeline.source_states()["pt"] == "up", what="bus up")
        states: set[str] = set()
        sent = 0
        # The same frame every 20 ms, until four heartbeats went out.
        deadline = time.monotonic() + 30
        while len(run.samples()) < 5 and time.monotonic() < deadline:
            car.send(_speed(1000))
            sent += 1
            states.add(pipeline.source_states()["pt"])
            time.sleep(0.02)  # the car's own cycle, not a wait for the agent
        last_sent = time.time()
        assert len(run.samples()) >= 5
        assert states == {"up"}
        # The first frame reached user space; the rest were confirmed by the kernel's silence.
        assert pipeline.sources[0].status.frames <= sent // 4, sent
        wait_for(lambda: pipeline.source_states()["pt"] == "silent", what="silent bus")
        samples = run.samples()
    assert {(name, value) for _, name, value in samples} == {("Engine.Speed", 10.0)}
    # No heartbeat claims a value later than a frame confirmed it.
    assert max(t for t, _, _ in samples) <= last_sent + 0.01


def _reader(
    tmp_path: Path, channel: str, **bus: object
) -> tuple[BcmReader, Source, queue.Queue[tuple[int, Any]], threading.Event, can.BusABC]:
    """A CAN_BCM reader of every message of the test DBC, handing batches to a queue."""
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    cfg = load_config(write_config(tmp_path / "agent.toml", [_bus(channel, "pt", "bcm", **bus)]))
    plan = build_catalog(cfg).buses[0]
    out: queue.Queue[tuple[int, Any]] = queue.Queue(1000)
    stop = threading.Event()
    source = Source(0, plan.config, out, stop, messages=plan.messages)
    can_bus = can.Bus(interface="socketcan", channel=channel, ignore_config=True, fd=True)
    return BcmReader(source, can_bus, plan.messages), source, out, stop, can_bus


def _changes(frames: list[Any]) -> list[Any]:
    """The frames that changed their id's content: confirmations repeat the last one."""
    seen: dict[int, bytes] = {}
    out = []
    for f in frames:
        if seen.get(f.arbitration_id) != bytes(f.data):
            seen[f.arbitration_id] = bytes(f.data)
            out.append(f)
    return out


def test_batched_notifications_keep_order_and_kernel_times(
    tmp_path: Path, canfd_link: str, open_bus
) -> None:
    reader, source, out, stop, bus = _reader(tmp_path, canfd_link, fd=True)
    car = open_bus(channel=canfd_link)
    watcher = open_bus(channel=canfd_link)
    size_receive_buffer(watcher, "watcher", 1 << 20)  # room for the whole burst
    thread = threading.Thread(target=reader.run, daemon=True)
    sent = 100
    try:
        reader.open()
        # Both ids change with every frame, interleaved: each is a notification.
        for value in range(1, sent + 1):
            car.send(_speed(value), timeout=1)
            car.send(_fd_wide(value), timeout=1)
        thread.start()
        batches: list[list[Any]] = []

        def all_changes() -> bool:
            while not out.empty():
                batches.append(out.get_nowait()[1])
            return len(_changes([f for b in batches for f in b])) >= 2 * sent

        wait_for(all_changes, timeout=30, what="every change")
        got = _changes([f for b in batches for f in b])
        # What python-can reads of the same traffic: the kernel stamped both copies alike.
        expected = [watcher.recv(5) for _ in range(2 * sent)]
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
        bus.shutdown()
    assert all(m is not None for m in expected)
    assert [(f.arbitration_id, f.is_extended_id, f.is_fd, bytes(f.data)) for f in got] == [
        (m.arbitration_id, m.is_extended_id, m.is_fd, bytes(m.data)) for m in expected if m
    ]
    assert [round(f.timestamp, 6) for f in got] == [round(m.timestamp, 6) for m in expected if m]
    # Taken in batches, not one notification per wake.
    assert len([b for b in batches if b]) < len(got)
    assert reader.notifications >= 2 * sent


def test_dropped_notifications_resynchronise(tmp_path: Path, canfd_link: str, open_bus) -> None:
    reader, source, out, stop, bus = _reader(tmp_path, canfd_link, fd=True, receive_buffer=65536)
    car = open_bus(channel=canfd_link)
    thread = threading.Thread(target=reader.run, daemon=True)
    try:
        reader.open()
        # Nobody reads yet: most of these changes overflow the socket's buffer.
        for value in range(1, 3001):
            car.send(_speed(value), timeout=1)
            car.send(_fd_wide(value), timeout=1)
        thread.start()
        seen: list[bytes] = []

        def final_values_arrived() -> bool:
            # The car repeats its last values, unchanged: only a resync lets them through.
            car.send(_speed(3000))
            car.send(_fd_wide(3000))
            while not out.empty():
                _, batch = out.get_nowait()
                seen.extend(bytes(m.data) for m in batch)
            return _speed(3000).data in seen and _fd_wide(3000).data in seen

        wait_for(final_values_arrived, timeout=30, what="the last values after the drop")
        assert source.status.kernel_dropped > 0
        assert reader.resyncs >= 1
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
        bus.shutdown()


def _fd_wide(value: int) -> can.Message:
    return can.Message(
        arbitration_id=0x18FEF1FE,
        is_extended_id=True,
        is_fd=True,
        data=bytes(12) + value.to_bytes(4, "little"),
    )


def test_a_reload_changes_what_the_kernel_watches(
    tmp_path: Path, canfd_link: str, open_bus
) -> None:
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    bus = [_bus(canfd_link, "pt", "bcm", fd=True)]
    extra = "[updates]\nmax_age = 0.05\nsnapshot_interval = 0\n"
    cfg = write_config(tmp_path / "agent.toml", bus, extra + _signals([{"match": "Engine.Speed"}]))
    car = open_bus()
    with Running(cfg) as run:
        wait_for(lambda: run.agent.pipeline.source_states()["pt"] == "up", what="bus up")
        wait_for(lambda: car.send(_speed(1000)) or run.samples(), what="Engine.Speed")
        write_config(cfg, bus, extra + _signals([{"match": "Fd.Wide"}]))
        assert run.agent.reload()
        # Until the reader applied the new selection, the frame of the new message is not seen.
        wait_for(lambda: car.send(_fd_wide(7)) or len(run.samples()) > 1, what="Fd.Wide")
        # The old message is no longer watched: its change is not handed on, the later frame
        # of the new message is.
        car.send(_speed(2000))
        car.send(_fd_wide(8))
        wait_for(lambda: ("Fd.Wide", 8) in {(n, v) for _, n, v in run.samples()}, what="8")
    assert [(n, v) for _, n, v in run.samples()] == [
        ("Engine.Speed", 10.0),
        ("Fd.Wide", 7),
        ("Fd.Wide", 8),
    ]
