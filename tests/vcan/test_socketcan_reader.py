"""The direct SocketCAN batch reader (agent.sources.socketcan) on a real vcan: every kind of
frame it reads is what python-can reads from the same traffic (the kernel stamps both copies
alike), kernel filters set through python-can apply, a link going down raises once, and a
recorded drive replayed by canplayer decodes to the same values as the agent's log replay."""

from __future__ import annotations

import errno
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import pytest

from agent.can_source import BATCH
from agent.sources.socketcan import BatchReader, Frame
from tests.support.agentrun import Running, write_config
from tests.support.wait import wait_for

OpenBus = Callable[..., can.BusABC]
# Generous: the suite runs under software emulation on a loaded machine.
TIMEOUT = 20.0
FIELDS = Frame._fields
SO_RCVBUFFORCE = 33  # asm-generic/socket.h (root may exceed net.core.rmem_max)


def reader_of(bus: can.BusABC) -> BatchReader:
    reader = BatchReader.of(bus, size=BATCH)
    assert reader is not None
    return reader


def read_batches(reader: BatchReader, n: int) -> list[list[Frame]]:
    """Batches read until they hold ``n`` frames."""
    batches: list[list[Frame]] = []

    def more() -> bool:
        batches.append(reader.read(0.1))
        return sum(map(len, batches)) >= n

    wait_for(more, TIMEOUT, f"{n} frames")
    return [b for b in batches if b]


def read_n(reader: BatchReader, n: int) -> list[Frame]:
    return [f for b in read_batches(reader, n) for f in b]


def as_python_can(bus: can.BusABC, n: int) -> list[tuple[Any, ...]]:
    """The next ``n`` frames python-can reads, as the reader's fields."""
    out = []
    for _ in range(n):
        msg = bus.recv(TIMEOUT)
        assert msg is not None, f"python-can got no frame within {TIMEOUT} s"
        out.append(tuple(bytes(msg.data) if f == "data" else getattr(msg, f) for f in FIELDS))
    return out


def test_every_kind_of_frame_reads_as_python_can_reads_it(open_bus: OpenBus) -> None:
    tx, rx, ref = open_bus(), open_bus(), open_bus()
    reader = reader_of(rx)
    sent = [
        can.Message(arbitration_id=0x123, data=bytes(range(8)), is_extended_id=False),
        can.Message(arbitration_id=0x1FFFFFFF, data=b"\x10\x20", is_extended_id=True),
        can.Message(arbitration_id=0x7FF, data=b"", is_extended_id=False),
        can.Message(arbitration_id=0x321, is_remote_frame=True, dlc=4, is_extended_id=False),
        can.Message(
            arbitration_id=0x456,
            data=bytes(range(64)),
            is_fd=True,
            bitrate_switch=True,
            is_extended_id=False,
        ),
        can.Message(arbitration_id=0x18DAF110, data=bytes(12), is_fd=True, is_extended_id=True),
        # An error frame (as a controller reports bus-off): class bits in the id.
        can.Message(arbitration_id=0x40, data=bytes(8), is_error_frame=True),
    ]
    for msg in sent:
        tx.send(msg)

    got = read_n(reader, len(sent))

    assert [tuple(f) for f in got] == as_python_can(ref, len(sent))
    fd = got[4]
    assert (fd.is_fd, fd.bitrate_switch, fd.dlc, fd.data) == (True, True, 64, bytes(range(64)))
    assert got[3].is_remote_frame and got[6].is_error_frame and got[6].arbitration_id == 0x40
    assert got[0].timestamp > 1e9  # the kernel's wall-clock receive time


def test_a_burst_larger_than_a_batch_comes_in_full_batches_in_order(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    # Room for the whole burst: the default receive buffer holds about 200 frames.
    rx.socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
    reader = reader_of(rx)
    n = BATCH * 2 + 10
    for i in range(n):
        tx.send(can.Message(arbitration_id=0x100, data=i.to_bytes(2, "little")))

    batches = read_batches(reader, n)

    assert [int.from_bytes(f.data, "little") for b in batches for f in b] == list(range(n))
    assert max(map(len, batches)) == BATCH


def test_kernel_filters_set_through_python_can_apply(open_bus: OpenBus) -> None:
    tx = open_bus()
    rx = open_bus(can_filters=[{"can_id": 0x200, "can_mask": 0x7F0, "extended": False}])
    reader = reader_of(rx)
    for arbitration_id in (0x100, 0x205, 0x210, 0x20F):
        tx.send(can.Message(arbitration_id=arbitration_id, data=b"\x01", is_extended_id=False))
    assert [f.arbitration_id for f in read_n(reader, 2)] == [0x205, 0x20F]

    rx.set_filters([{"can_id": 0x100, "can_mask": 0x7FF, "extended": False}])
    for arbitration_id in (0x205, 0x100):
        tx.send(can.Message(arbitration_id=arbitration_id, data=b"\x02", is_extended_id=False))
    assert [f.arbitration_id for f in read_n(reader, 1)] == [0x100]


def test_nothing_to_read_returns_an_empty_batch(open_bus: OpenBus) -> None:
    assert reader_of(open_bus()).read(0.05) == []


def test_link_down_raises_enetdown_once_and_reading_resumes_after_up(
    open_bus: OpenBus, link_control: Callable[[str], None]
) -> None:
    rx = open_bus()
    reader = reader_of(rx)
    link_control("down")
    # The socket reports the link change as a pending error: poll wakes at once.
    with pytest.raises(OSError) as down:
        reader.read(TIMEOUT)
    assert down.value.errno == errno.ENETDOWN
    assert reader.read(0.05) == []  # reported once, as python-can sees it

    link_control("up")
    open_bus().send(can.Message(arbitration_id=0x22, data=b"\x22", is_extended_id=False))
    assert [f.arbitration_id for f in read_n(reader, 1)] == [0x22]


def test_no_reader_for_a_bus_without_a_socketcan_socket() -> None:
    with can.Bus(interface="virtual", channel="no-socket", ignore_config=True) as bus:
        assert BatchReader.of(bus, size=BATCH) is None


def _values_by_signal(samples: list[tuple[float, str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for _, name, value in samples:
        out.setdefault(name, []).append(value)
    return out


def test_corpus_drive_over_canplayer_decodes_as_its_log_replay(
    tmp_path: Path, corpus: Path, canfd_link: str, canplayer: str
) -> None:
    source = corpus / "logs" / "eldominio-canbuslogs" / "genesis__mphloggenesis.log"
    dbc = corpus / "dbc" / "eldominio-canbuslogs" / "genesis__slimmeddbc.dbc"
    # The first 2,000 frames, 8 times as fast as recorded (a few seconds under emulation).
    lines = source.read_text().splitlines()[:2000]
    t0 = float(lines[0][1 : lines[0].index(")")])
    log = tmp_path / "drive.log"
    log.write_text(
        "".join(
            f"({t0 + (float(ln[1 : ln.index(')')]) - t0) / 8:.6f}){ln[ln.index(')') + 1 :]}\n"
            for ln in lines
        )
    )
    extra = '[[signal]]\nmatch = "*.*"\n[updates]\nmax_age = 0.1\nsnapshot_interval = 0\n'
    bus = {"name": "car", "dbc": [str(dbc)]}
    replay_cfg = write_config(
        tmp_path / "replay.toml", [{**bus, "interface": "replay", "log": str(log)}], extra
    )
    live_cfg = write_config(
        tmp_path / "live.toml",
        # The raw reader, not kernel-side change detection (tested in test_bcm_vcan).
        [{**bus, "interface": "socketcan", "channel": canfd_link, "change_detection": "off"}],
        extra,
    )
    with Running(replay_cfg) as replay:
        replay.thread.join(120)
    expected = _values_by_signal(replay.samples())
    assert sum(map(len, expected.values())) > 100

    with Running(live_cfg) as run:
        wait_for(lambda: run.agent.pipeline.source_states()["car"] == "up", what="bus up")
        subprocess.run([canplayer, "-I", str(log), f"{canfd_link}=can0"], check=True, timeout=120)
        total = sum(map(len, expected.values()))
        wait_for(lambda: len(run.samples()) >= total, timeout=60, what="every change")
        status = run.agent.pipeline.sources[0].status
    assert _values_by_signal(run.samples()) == expected
    assert status.frames > 0 and status.dropped_frames == 0
