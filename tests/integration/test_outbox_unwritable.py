"""An outbox file the agent can read but not write is refused at start by the real CLI.

Before, such a file (in a writable folder) was accepted, every commit then failed and the
updates of the run were lost at exit. Tests run as root, for whom file modes do not stop writes:
there the file is made immutable (``chattr +i``), which stops root too; the test first checks
that a write really fails, so it cannot pass by proving nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.agentrun import cli
from tests.support.broker import free_port
from tests.support.data import make_demo_drive
from tests.support.e2e import replay_config, stored_keys


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        if chattr is None:
            pytest.skip("running as root without chattr: cannot make a file unwritable")
        made = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i refused here: {made.stderr.strip()}")
        undo = [chattr, "-i", str(path)]
    else:
        path.chmod(0o444)
        undo = ["chmod", "0644", str(path)]
    try:
        with pytest.raises(PermissionError):
            path.open("r+b").close()
        yield
    finally:
        subprocess.run(undo, check=True)


def test_read_only_outbox_file_is_refused_at_start_and_keeps_its_rows(tmp_path: Path) -> None:
    box = tmp_path / "outbox.db"
    drive = make_demo_drive(tmp_path / "drive.log", 3)
    # Nothing listens on the port: the first run keeps its updates in the outbox and ends at the
    # drain timeout (exit 3). A second run that accepted the unwritable file would end the same.
    cfg = replay_config(tmp_path / "agent.toml", log=drive, port=free_port(), outbox=box)
    first = cli("run", "--config", str(cfg), "--drain-timeout", "1", timeout=120)
    assert first.returncode == 3, first.stderr
    stored = stored_keys(box)
    assert stored, "the first run stored nothing: the test would prove nothing"

    with unwritable(box):
        r = cli("run", "--config", str(cfg), "--drain-timeout", "1", timeout=120)

    assert r.returncode == 2, r.stderr
    assert f"{box}: outbox file cannot be written" in r.stderr
    assert stored_keys(box) == stored
