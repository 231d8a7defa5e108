"""Live SocketCAN buses read in the pipeline's thread (agent.inline), on vcan: the reader is lent
to the pipeline, which processes its frames, takes the loop's work (``call_soon``, feeds) at
once while the bus is quiet, parked or busy, reads several buses in one wait, and hands every
reader back at a stop, so the sources' threads end."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import can
import pytest

from agent.feed import Feed
from tests.support.agentrun import Running, write_config
from tests.support.data import SPEED_FD_DBC
from tests.support.wait import wait_for

PARKED = 3600.0  # a block only a wake-up or a frame ends within the tests' timeouts


def _config(tmp_path: Path, channels: list[str], mode: str) -> Path:
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    buses: list[dict[str, Any]] = [
        {
            "name": f"b{i}",
            "interface": "socketcan",
            "channel": channel,
            "dbc": ["car.dbc"],
            "fd": True,
            "change_detection": mode,
        }
        for i, channel in enumerate(channels)
    ]
    return write_config(tmp_path / "agent.toml", buses, extra="[updates]\nmax_age = 0.05\n")


def _speed(value: int) -> can.Message:
    return can.Message(
        arbitration_id=0x100, data=value.to_bytes(2, "little") + bytes(6), is_extended_id=False
    )


def _lent(run: Running, n: int = 1) -> bool:
    return len(run.agent.pipeline.inbox.loans) == n


class _Values:
    """An input of the pipeline fed from another thread (as GNSS fixes and diagnostic readings
    are): what the pipeline's thread took."""

    def __init__(self, wake: Any) -> None:
        self.feed: Feed[int] = Feed(16, wake=wake)
        self.taken: list[int] = []

    def poll(self) -> None:
        self.taken.extend(self.feed.take())

    def close(self) -> None:
        pass


@pytest.mark.parametrize("mode", ["off", "bcm"])
def test_a_lent_reader_s_frames_are_processed_and_parked_the_loop_still_wakes(
    tmp_path: Path, canfd_link: str, open_bus, mode: str
) -> None:
    with Running(_config(tmp_path, [canfd_link], mode)) as run:
        pipeline = run.agent.pipeline
        values = _Values(pipeline.wake)
        pipeline.inputs.append(values)
        wait_for(lambda: _lent(run), what="the reader lent to the pipeline")
        car = open_bus(channel=canfd_link)
        car.send(_speed(1000))
        wait_for(lambda: run.samples(), what="the first frame processed")
        # Parked: the loop blocks for an hour unless woken.
        pipeline.set_idle(PARKED)
        ran = threading.Event()
        pipeline.call_soon(ran.set)
        wait_for(ran.is_set, what="call_soon while parked on a quiet bus")
        values.feed.put([1])
        wait_for(lambda: values.taken == [1], what="a feed while parked")
        car.send(_speed(2000))
        wait_for(lambda: len(run.samples()) >= 2, what="a frame while parked")
        # Frames flowing: the loop's own work still runs at once.
        pipeline.set_idle(None)
        done = threading.Event()
        for value in range(3000, 3100):
            car.send(_speed(value))
            if value == 3050:
                pipeline.call_soon(done.set)
                values.feed.put([2])
        wait_for(done.is_set, what="call_soon while frames flow")
        wait_for(lambda: values.taken == [1, 2], what="a feed while frames flow")
        wait_for(lambda: 30.99 in [round(v, 2) for _, _, v in run.samples()], what="the last frame")
        assert run.agent.pipeline.source_states() == {"b0": "up"}
    # Stopped: the reader went back to its source's thread, which closed the bus and ended.
    assert not [t for t in threading.enumerate() if t.name.startswith("source-")]
    assert run.agent.pipeline.inbox.loans == []


def test_two_buses_are_read_in_one_wait(
    tmp_path: Path, canfd_link: str, scratch_vcan, open_bus
) -> None:
    channels = [canfd_link, scratch_vcan.name]
    with Running(_config(tmp_path, channels, "off")) as run:
        wait_for(lambda: _lent(run, 2), what="both readers lent")
        for i, channel in enumerate(channels):
            open_bus(channel=channel).send(_speed(1000 * (i + 1)))
        wait_for(lambda: len(run.samples()) >= 2, what="a frame of each bus")
        assert run.agent.pipeline.source_states() == {"b0": "up", "b1": "up"}
    assert sorted(v for _, _, v in run.samples()) == [10.0, 20.0]


def test_a_burst_taken_while_the_pipeline_was_busy_arrives_whole_and_in_order(
    tmp_path: Path, canfd_link: str, open_bus
) -> None:
    sent = 1000  # about four full batches: the reader reads ahead and hands them on in turn
    with Running(_config(tmp_path, [canfd_link], "off")) as run:
        pipeline = run.agent.pipeline
        wait_for(lambda: _lent(run), what="the reader lent to the pipeline")
        car = open_bus(channel=canfd_link)
        busy, release = threading.Event(), threading.Event()

        def hold() -> None:
            busy.set()
            release.wait(60)

        pipeline.call_soon(hold)
        wait_for(busy.is_set, what="the pipeline busy")
        for value in range(1, sent + 1):
            car.send(_speed(value), timeout=1)
        release.set()
        wait_for(lambda: len(run.samples()) >= sent, timeout=60, what="every frame")
        status = pipeline.sources[0].status
        assert status.frames == sent and status.dropped_frames == 0
    assert [round(v * 100) for _, _, v in run.samples()] == list(range(1, sent + 1))
