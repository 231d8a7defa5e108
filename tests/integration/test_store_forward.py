"""Store and forward, end to end: the real ``spime-agent run`` (a subprocess) replaying demo
drives into a real mosquitto, with the broker stopped, the agent killed or stopped, and the
SQLite outbox inspected from outside between runs.

What is proven: nothing the outbox committed is lost, whatever happens to the broker or the
agent; duplicates stay bounded by the in-flight window; a finite replay exits 0 only once every
update was acknowledged; a drain timeout keeps the rest for the next run; SIGTERM ends quickly
with a retained offline status.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, free_port, wait_until
from tests.support.data import make_demo_drive
from tests.support.e2e import (
    AgentProcess,
    DataCollector,
    Key,
    replay_config,
    retained_status,
    stored_keys,
)

WAIT = 60.0  # generous: a loaded 2-core machine
MAX_INFLIGHT = 20


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory, demo_drive: Path) -> dict[int, Path]:
    """Demo drives by duration in seconds."""
    d = tmp_path_factory.mktemp("drives")
    return {
        12: make_demo_drive(d / "drive12.log", 12),
        30: make_demo_drive(d / "drive30.log", 30),
        60: demo_drive,
    }


def rows_in(outbox: Path) -> int:
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30.0)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        conn.close()


def keys_of(boot: str, n: int) -> list[Key]:
    return [(boot, s) for s in range(1, n + 1)]


def finished(agent: AgentProcess, timeout: float = WAIT) -> tuple[int, str, int]:
    """Wait for the agent to exit; return (exit code, boot, updates produced)."""
    rc = agent.wait(timeout)
    boot, n = agent.boot(), agent.updates()
    assert boot is not None and n is not None, agent.log()
    return rc, boot, n


def test_finite_replay_exits_only_when_everything_was_acknowledged(
    tmp_path: Path, broker: Mosquitto, drives: dict[int, Path]
) -> None:
    cfg = replay_config(tmp_path / "agent.toml", log=drives[30], port=broker.port)
    with DataCollector(broker) as data, AgentProcess(cfg, log_path=tmp_path / "a.log") as agent:
        rc, boot, n = finished(agent)
        assert rc == 0, agent.log()
        assert "every update was acknowledged by the broker" in agent.log()
        # Acknowledged rows are deleted before the exit: the outbox is empty now.
        assert rows_in(tmp_path / "outbox.db") == 0
        assert n >= 50
        assert data.wait_all(set(keys_of(boot, n)), WAIT), f"missing: {n - len(data.seqs(boot))}"
    assert {b for b, _ in data.received()} == {boot}
    assert data.seqs(boot) == set(range(1, n + 1))


def test_broker_outage_mid_drive_loses_nothing_and_keeps_order(
    tmp_path: Path, broker: Mosquitto, drives: dict[int, Path]
) -> None:
    # 30 s of driving at 3.3x: about 9 s of publishing, with the broker away for part of it.
    cfg = replay_config(
        tmp_path / "agent.toml",
        log=drives[30],
        port=broker.port,
        speed=3.3,
        mqtt=f"max_inflight = {MAX_INFLIGHT}",
    )
    box = tmp_path / "outbox.db"
    with DataCollector(broker, client_id="sub-data") as data:
        with AgentProcess(cfg, log_path=tmp_path / "a.log") as agent:
            assert data.wait_count(5, timeout=WAIT), agent.log()
            # The broker hangs, then dies: what the agent publishes meanwhile sits unread in the
            # broker's socket, is never acknowledged, and is lost with it. Only the outbox can
            # bring those updates back.
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            # Rows pile up in the outbox; a full in-flight window went into the void.
            grown = wait_until(lambda: rows_in(box) >= MAX_INFLIGHT + 5, WAIT)
            broker.kill()
            assert grown, agent.log()
            assert wait_until(lambda: not data.sub.wait_subscribed(0), WAIT)
            assert agent.wait_log("MQTT link down", WAIT), agent.log()
            assert agent.proc.poll() is None, "the agent must wait for the broker"
            # Back on the same port, first for the subscriber only (the agent's client id, its
            # VIN, is refused) so nothing the agent sends after the restart can slip past it.
            broker.clientid_prefixes = "sub-"
            broker.start()
            assert data.sub.wait_subscribed(WAIT)
            broker.clientid_prefixes = None
            broker.reload()
            rc, boot, n = finished(agent)
            assert rc == 0, agent.log()
        assert "after an outage" in agent.log()
        assert rows_in(box) == 0
        assert data.wait_all(set(keys_of(boot, n)), WAIT)
        # At least once; after de-duplication, in order and without a gap.
        assert data.first_seen() == keys_of(boot, n)


def test_sigkill_at_random_moments_loses_no_committed_update(
    tmp_path: Path, broker: Mosquitto, drives: dict[int, Path]
) -> None:
    box = tmp_path / "outbox.db"
    # Publishing slower than the drive produces keeps a backlog in the outbox, so that most
    # kills leave committed rows behind for the next run.
    slow = replay_config(
        tmp_path / "slow.toml",
        log=drives[12],
        port=broker.port,
        speed=4.0,
        max_age=0.1,
        outbox=box,
        mqtt=f"drain_rate = 10.0\nmax_inflight = {MAX_INFLIGHT}",
    )
    full = replay_config(
        tmp_path / "full.toml", log=drives[12], port=broker.port, speed=0.0, outbox=box
    )
    rng = random.Random(7)
    committed: set[Key] = set()
    kills = 0
    with DataCollector(broker) as data:
        for i in range(8):
            with AgentProcess(slow, log_path=tmp_path / f"kill{i}.log") as agent:
                assert agent.wait_log("MQTT connected", WAIT), agent.log()
                time.sleep(rng.uniform(0.2, 2.0))  # the random moment of the kill, not a wait
                if agent.proc.poll() is None:
                    kills += 1
                agent.kill()
            committed.update(stored_keys(box))
        assert kills >= 4, "the agent should still be publishing when it is killed"
        assert committed, "no kill left a committed row behind: the test proves nothing"
        with AgentProcess(full, log_path=tmp_path / "final.log") as agent:
            rc, boot, n = finished(agent)
            assert rc == 0, agent.log()
        assert rows_in(box) == 0
        assert data.wait_all(committed | set(keys_of(boot, n)), WAIT)
        received = data.received()
        dups = data.duplicates()
    boots = {b for b, _ in received}
    for b in boots:
        seqs = {s for bb, s in received if bb == b}
        # Commits are in order: what survives of a boot is always its first updates.
        assert seqs == set(range(1, max(seqs) + 1)), f"boot {b}: gap in {sorted(seqs)}"
    # Only updates in flight (published, not yet acknowledged or not yet deleted) come twice.
    assert dups <= MAX_INFLIGHT * kills


def test_drain_timeout_keeps_the_rest_for_the_next_run(
    tmp_path: Path, drives: dict[int, Path]
) -> None:
    port = free_port()  # nothing listens here yet
    cfg = replay_config(tmp_path / "agent.toml", log=drives[30], port=port)
    box = tmp_path / "outbox.db"
    drain = 2.0
    start = time.monotonic()
    with AgentProcess(cfg, "--drain-timeout", str(drain), log_path=tmp_path / "a.log") as first:
        rc, boot1, n1 = finished(first)
    assert rc == 3, first.log()
    assert time.monotonic() - start >= drain
    assert f"drain timeout: {n1} updates not yet acknowledged" in first.log()
    assert "kept in the outbox for the next run" in first.log()
    assert stored_keys(box) == keys_of(boot1, n1)

    broker = Mosquitto(tmp_path / "broker", max_inflight_messages=0, port=port)
    broker.start()
    try:
        with DataCollector(broker) as data:
            with AgentProcess(cfg, log_path=tmp_path / "b.log") as second:
                rc, boot2, n2 = finished(second)
            assert rc == 0, second.log()
            assert boot2 != boot1
            want = keys_of(boot1, n1) + keys_of(boot2, n2)
            assert data.wait_all(set(want), WAIT)
            # The older run's updates first, each run's in order.
            assert data.first_seen() == want
    finally:
        broker.stop()
    assert rows_in(box) == 0


def test_sigterm_ends_a_long_replay_quickly_with_an_offline_status(
    tmp_path: Path, broker: Mosquitto, drives: dict[int, Path]
) -> None:
    cfg = replay_config(tmp_path / "agent.toml", log=drives[60], port=broker.port, speed=1.0)
    box = tmp_path / "outbox.db"
    with DataCollector(broker) as data:
        with AgentProcess(cfg, log_path=tmp_path / "a.log") as agent:
            assert data.wait_count(5, timeout=WAIT), agent.log()
            agent.send(signal.SIGTERM)
            # A 60 s replay at real time: ending within this wait means it stopped early.
            rc, boot, n = finished(agent, timeout=30.0)
        assert rc == 0, agent.log()
        assert "received SIGTERM" in agent.log()
        stored = stored_keys(box)
        assert {b for b, _ in stored} <= {boot}
        # Every update produced is either received or still in the outbox: nothing lost.
        expected = set(keys_of(boot, n))
        sent = expected - set(stored)
        assert data.wait_all(sent, WAIT)
        assert set(data.received()) | set(stored) == expected
    status = retained_status(broker)
    assert (status["state"], status["reason"], status["boot"]) == ("offline", "shutdown", boot)
