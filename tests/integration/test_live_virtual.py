"""The agent on live python-can `virtual` buses (same process: the virtual bus is in-process)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from agent.config import load_config
from agent.daemon import prepare
from agent.feed import Feed
from agent.pipeline import Pipeline
from tests.support.agentrun import Running, write_config
from tests.support.data import SPEED_FD_DBC
from tests.support.wait import wait_for


@pytest.fixture()
def channel() -> str:
    return f"spime-test-{uuid.uuid4().hex[:8]}"


def _config(tmp_path: Path, buses: list[dict[str, Any]]) -> Path:
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    return write_config(
        tmp_path / "agent.toml",
        buses,
        extra="[updates]\nmax_age = 0.05\n",
    )


def test_frames_on_a_virtual_bus_become_updates_with_frame_timestamps(
    tmp_path: Path, channel: str
) -> None:
    cfg = _config(
        tmp_path,
        [
            {
                "name": "pt",
                "interface": "virtual",
                "channel": channel,
                "dbc": ["car.dbc"],
                "fd": True,
            }
        ],
    )
    # preserve_timestamps: the virtual bus then passes on the sender's time, as a kernel would.
    with (
        Running(cfg) as run,
        can.Bus(
            interface="virtual", channel=channel, ignore_config=True, preserve_timestamps=True
        ) as car,
    ):
        wait_for(lambda: run.agent.pipeline.source_states()["pt"] == "up", what="bus up")
        car.send(
            can.Message(
                timestamp=1767225600.5,
                arbitration_id=0x100,
                data=bytes([0x10, 0x27, 0, 0, 0, 0, 0, 0]),
                is_extended_id=False,
            )
        )
        car.send(can.Message(arbitration_id=0x123, data=b"\x01", is_extended_id=False))
        car.send(can.Message(arbitration_id=0x100, is_error_frame=True, is_extended_id=False))
        car.send(
            can.Message(
                timestamp=1767225601.0,
                arbitration_id=0x18FEF1FE,
                is_fd=True,
                data=bytes(12) + (7).to_bytes(4, "little"),
                is_extended_id=True,
            )
        )
        wait_for(lambda: len(run.samples()) >= 2, what="two samples")
        stats = run.agent.pipeline.stats
        wait_for(lambda: stats.error_frames == 1, what="error frame counted")
    assert run.samples() == [(1767225600.5, "Engine.Speed", 100.0), (1767225601.0, "Fd.Wide", 7)]
    assert stats.unselected == 0  # 0x123 never reached the pipeline: filtered at the bus
    assert run.result.exit_code == 0


def test_dead_bus_is_reported_down_while_a_quiet_one_is_silent(
    tmp_path: Path, channel: str
) -> None:
    cfg = _config(
        tmp_path,
        [
            {
                "name": "quiet",
                "interface": "virtual",
                "channel": channel,
                "dbc": ["car.dbc"],
                "silent_after": 0.2,
            },
            # No SocketCAN interface of that name exists here: opening fails every time.
            {
                "name": "dead",
                "interface": "socketcan",
                "channel": "spimenone0",
                "dbc": ["car.dbc"],
                "reopen_min": 0.05,
                "reopen_max": 0.1,
            },
        ],
    )
    with Running(cfg) as run:
        src = {s.cfg.name: s for s in run.agent.pipeline.sources}
        wait_for(lambda: src["dead"].status.reopens >= 3, what="reopen attempts")
        assert run.agent.pipeline.source_states()["dead"] == "down"
        assert src["dead"].status.last_error
        wait_for(lambda: run.agent.pipeline.source_states()["quiet"] == "silent", what="silent")
        with can.Bus(interface="virtual", channel=channel, ignore_config=True) as car:
            car.send(can.Message(arbitration_id=0x100, data=bytes(8), is_extended_id=False))
            wait_for(lambda: run.agent.pipeline.source_states()["quiet"] == "up", what="up again")


@pytest.mark.parametrize("reader", ["thread", "process"])
def test_a_replay_beside_a_live_bus_is_read_on_its_own_thread(
    tmp_path: Path, channel: str, reader: str
) -> None:
    (tmp_path / "drive.log").write_text(
        "".join(f"({1767225600 + i / 10:.6f}) can0 100#{i:02X}00000000000000\n" for i in range(30))
    )
    cfg = _config(
        tmp_path,
        [
            {"name": "live", "interface": "virtual", "channel": channel, "dbc": ["car.dbc"]},
            {
                "name": "rec",
                "interface": "replay",
                "log": "drive.log",
                "dbc": ["car.dbc"],
                "speed": 10,
                "reader": reader,
            },
        ],
    )
    with Running(cfg) as run:
        states = run.agent.pipeline.source_states
        wait_for(lambda: states()["rec"] == "finished", what="replay finished")
        wait_for(lambda: len(run.samples()) >= 30, what="every replayed change")
        assert states()["live"] in ("up", "silent")  # the live bus keeps the agent running
        assert run.agent.pipeline.sources[1].reader_pid == 0  # a reader process ended with it
    values = [v for _, name, v in run.samples() if name == "rec/Engine.Speed"]
    assert values == [i * 0.01 for i in range(30)]


class _Taker:
    """A pipeline input that takes what a feed holds, batch by batch."""

    def __init__(self, feed: Feed[int]) -> None:
        self.feed = feed
        self.polls = 0
        self.batches: list[list[int]] = []

    def poll(self) -> None:
        self.polls += 1
        got = self.feed.take()
        if got:
            self.batches.append(got)

    def close(self) -> None:
        return None


def test_a_feed_wakes_a_parked_pipeline_on_a_quiet_bus(tmp_path: Path, channel: str) -> None:
    cfg = load_config(
        _config(
            tmp_path,
            [{"name": "pt", "interface": "virtual", "channel": channel, "dbc": ["car.dbc"]}],
        )
    )
    pipeline = Pipeline(cfg, prepare(cfg), boot=bytes(8), sink=lambda update: None)
    feed: Feed[int] = Feed(16)
    taker = _Taker(feed)
    pipeline.inputs.append(taker)
    pipeline.set_idle(3600.0)  # parked: the loop blocks until a frame or a wake
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: taker.polls >= 1, 10, "the first turn")
        feed.put([1])  # no wake yet: nothing turns the loop
        feed.wake = pipeline.wake
        feed.put([2])
        wait_for(lambda: taker.batches, 10, "the values, long before the parked timeout")
        assert taker.batches == [[1, 2]]
    finally:
        pipeline.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_dry_run_json_decodes_an_update_closed_after_a_reload_with_its_own_schema(
    tmp_path: Path, channel: str
) -> None:
    # A long max_age keeps the update open until the reload closes it: it was encoded with
    # the old schema and must be shown with that one, not the new one.
    bus = {"name": "pt", "interface": "virtual", "channel": channel, "dbc": ["car.dbc"], "fd": True}
    (tmp_path / "car.dbc").write_text(SPEED_FD_DBC)
    cfg = write_config(tmp_path / "agent.toml", [bus], extra="[updates]\nmax_age = 60.0\n")
    with (
        Running(cfg) as run,
        can.Bus(interface="virtual", channel=channel, ignore_config=True) as car,
    ):
        wait_for(lambda: run.agent.pipeline.source_states()["pt"] == "up", what="bus up")
        old = run.agent.catalog.schema.id
        speed = bytes([0x10, 0x27, 0, 0, 0, 0, 0, 0])
        car.send(can.Message(arbitration_id=0x100, data=speed, is_extended_id=False))
        wait_for(lambda: run.agent.pipeline.stats.decoded == 1, what="frame decoded")
        cfg.write_text(cfg.read_text() + '\n[[signal]]\nmatch = "Engine.Speed"\n')
        assert run.agent.reload()
        assert run.agent.catalog.schema.id != old
        wait_for(lambda: run.samples(), what="the old update shown")
    assert run.samples()[0][1:] == ("Engine.Speed", 100.0)
    assert run.updates[0]["schema"] == old
    assert run.result.exit_code == 0
