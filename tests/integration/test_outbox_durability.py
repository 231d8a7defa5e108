"""Outbox durability for real: corrupt files, a full filesystem, and SIGKILL at random moments."""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox, OutboxError
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15.0


def make(path: Path, **kw: object) -> Outbox:
    return Outbox(OutboxConfig(path=path, **kw))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- corruption


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is no database " + os.urandom(8192))
    Path(f"{path}-wal").write_bytes(os.urandom(4096))


def _filled(path: Path) -> None:
    with make(path, commit_interval=600) as ob:
        for i in range(300):
            ob.put(i.to_bytes(2, "big") * 500)
        ob.flush()


def _truncated(path: Path) -> None:
    _filled(path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _scribbled(path: Path) -> None:
    _filled(path)
    with path.open("r+b") as f:  # b-tree pages in the middle overwritten, size unchanged
        f.seek(4096 * 3)
        f.write(os.urandom(4096 * 20))


@pytest.mark.parametrize("damage", [_garbage, _truncated, _scribbled])
def test_corrupt_file_is_moved_aside_and_a_fresh_outbox_works(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = tmp_path / "outbox.db"
    damage(path)
    damaged = path.read_bytes()
    wal = Path(f"{path}-wal")
    damaged_wal = wal.read_bytes() if wal.exists() else None

    with make(path, commit_interval=600) as ob:
        (moved,) = ob.stats().corrupt_moved
        assert re.fullmatch(r"outbox\.db\.corrupt-\d{8}T\d{6}Z", Path(moved).name)
        assert Path(moved).read_bytes() == damaged  # kept for inspection, never dropped
        if damaged_wal is not None:  # the -wal goes along with its database
            assert Path(f"{moved}-wal").read_bytes() == damaged_wal
        assert ob.stats().rows == 0
        ob.put(b"fresh", "event")
        ob.flush()
        (entry,) = ob.next_batch(10)
        assert entry.payload == b"fresh"
        # Ids of the lost file are unknown: the fresh sequence starts above any it could hold.
        assert entry.id > 1_000_000_000_000

    with make(path) as ob:  # the fresh file is healthy on the next start
        assert ob.stats().corrupt_moved == ()
        assert [e.payload for e in ob.next_batch(10)] == [b"fresh"]


def test_unopenable_path_is_an_error_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "adir"
    path.mkdir()
    with pytest.raises(OutboxError, match="adir"):
        make(path).open()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]


# ---------------------------------------------------------------------------------- disk full


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_disk_full_keeps_updates_in_memory_and_commits_when_space_returns(
    tiny_fs: Path,
) -> None:
    path = tiny_fs / "outbox.db"
    filler = tiny_fs / "filler"
    with make(path, commit_interval=0.3, memory_bytes=64 * 1024) as ob:
        for i in range(5):
            ob.put(b"before%d" % i)
        ob.flush()
        assert ob.stats().rows == 5

        _fill(filler)
        ob.put(b"E-during", "event")
        for i in range(40):  # ~82 KB: more than the memory buffer holds
            ob.put(b"T%02d" % i + b"." * 2000)
        ob.flush()
        s = ob.stats()
        assert s.disk_full and s.write_error is not None
        assert s.memory_bytes <= 64 * 1024
        assert s.memory_dropped > 0
        kept = s.memory_rows
        # Only committed rows go to the uplink; the buffered ones wait for the disk.
        assert [e.payload for e in ob.next_batch(100)] == [b"before%d" % i for i in range(5)]

        filler.unlink()
        # No flush: the committer retries on its own once the window passes.
        assert wait_until(lambda: ob.stats().memory_rows == 0, WAIT)
        s = ob.stats()
        assert not s.disk_full and s.write_error is None
        assert s.rows == 5 + kept
        got = [e.payload[:8] for e in ob.next_batch(100)]
        assert got[0] == b"E-during"  # telemetry was dropped first, the event survived
        assert got[1:6] == [b"before%d" % i for i in range(5)]
        newest = [b"T%02d" % i for i in range(40)][-(kept - 1) :]
        assert [g[:3] for g in got[6:]] == newest


def test_disk_full_flush_retries_and_acks_survive(tiny_fs: Path) -> None:
    path = tiny_fs / "outbox.db"
    filler = tiny_fs / "filler"
    with make(path, commit_interval=600) as ob:
        for i in range(20):
            ob.put(b"r%02d" % i + b"." * 3000)
        ob.flush()
        _fill(filler)
        batch = ob.next_batch(5)
        ob.ack(e.id for e in batch)
        ob.put(b"late" + b"." * 3000)
        ob.flush()
        assert ob.stats().disk_full
        # Acked rows stay hidden while their delete waits for the disk.
        assert [e.payload[:3] for e in ob.next_batch(100)] == [b"r%02d" % i for i in range(5, 20)]
        filler.unlink()
        ob.flush()
        s = ob.stats()
        assert (s.disk_full, s.acked, s.rows, s.memory_rows) == (False, 5, 16, 0)
    with make(path) as ob:
        payloads = [e.payload[:4] for e in ob.next_batch(100)]
        assert payloads[-1] == b"late" and len(payloads) == 16


# --------------------------------------------------------------------------------- SIGKILL


def _account(line: str, committed: set[str], acked: set[str]) -> int:
    """Record one report of the child; returns 1 for a commit report."""
    if not line.endswith("\n"):
        return 0  # cut off by the kill: not a report
    kind, *markers = line.split()
    if kind == "acked":
        acked.update(markers)
        return 0
    run, last = markers[0].split(":")
    committed.update(f"{run}:{i}" for i in range(int(last) + 1))
    return 1


def test_rows_reported_committed_survive_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    path = tmp_path / "outbox.db"
    committed: set[str] = set()
    acked: set[str] = set()
    max_id = 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for run in range(20):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.support.outbox_child", str(path), str(run)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        kill_after = rng.randint(1, 40)
        seen = 0

        try:
            for line in child.stdout:
                seen += _account(line, committed, acked)
                if seen >= kill_after:
                    break
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(WAIT)
        # The child ran on while we read: what it reported before dying counts too.
        for line in child.stdout:
            _account(line, committed, acked)
        child.stdout.close()
        assert seen >= kill_after, f"child ended early (seed {seed}, run {run})"

        with make(path) as ob:
            assert ob.stats().corrupt_moved == ()
            rows = list(ob.iter_rows())
        markers = [e.payload.split(b".")[0].decode() for e in rows]
        assert len(markers) == len(set(markers)), f"duplicate rows (seed {seed}, run {run})"
        missing = committed - acked - set(markers)
        assert not missing, f"lost committed rows {sorted(missing)[:5]} (seed {seed}, run {run})"
        new_ids = [e.id for e in rows if e.payload.startswith(f"{run}:".encode())]
        assert all(i > max_id for i in new_ids), f"id reused (seed {seed}, run {run})"
        max_id = max([max_id, *(e.id for e in rows)])


# ------------------------------------------------------------------ crash between ack and delete

_ACKING_CHILD = """
import sys
from pathlib import Path
from agent.config import OutboxConfig
from agent.outbox import Outbox

ob = Outbox(OutboxConfig(path=Path(sys.argv[1]), commit_interval=600))
ob.open()
print("open", flush=True)
sys.stdin.readline()  # the parent now holds the file's write lock
rows = ob.next_batch(100)
acked = rows[:8] + rows[9:20]
ob.ack(e.id for e in acked)
left = ob.next_batch(100)
print("acked", " ".join(str(e.id) for e in acked), flush=True)
print("hidden", int([e.id for e in left] == [e.id for e in rows if e not in acked]),
      ob.stats().acked, flush=True)
sys.stdin.readline()  # killed here
"""


def test_rows_acked_but_not_deleted_at_a_crash_are_kept_and_sent_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with make(path, commit_interval=600) as ob:
        for i in range(30):
            ob.put(f"update {i}".encode())
        ob.flush()
        before = [(e.id, e.payload) for e in ob.next_batch(100)]
    child = subprocess.Popen(
        [sys.executable, "-c", _ACKING_CHILD, str(path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    lock = sqlite3.connect(path, isolation_level=None, timeout=WAIT)
    try:
        assert child.stdout.readline().split() == ["open"]
        # The child's commit thread cannot delete the acked rows while this lock is held: the
        # kill lands between the acks and their deletion for certain.
        lock.execute("BEGIN IMMEDIATE")
        child.stdin.write("go\n")
        child.stdin.flush()
        acked = [int(i) for i in child.stdout.readline().split()[1:]]
        assert len(acked) == 19
        assert child.stdout.readline().split() == ["hidden", "1", "0"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(WAIT)
        child.stdin.close()
        child.stdout.close()
        lock.close()
    with make(path, commit_interval=600) as ob:
        after = [(e.id, e.payload) for e in ob.next_batch(100)]
        # Every acked row is there again, with its id and bytes: sent again, a duplicate of
        # the same update (the same boot and seq), not new data.
        assert after == before
        ob.ack(acked)
        ob.flush()
        assert [e.id for e in ob.next_batch(100)] == [i for i, _ in before if i not in acked]
