"""The atomic file helper: content, exact mode, nothing left behind, old file kept on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.atomicfile import replace_symlink, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o640])
def test_writes_content_with_the_exact_mode_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "f.toml"
    old = os.umask(0o077)
    try:
        write_atomic(target, b"a = 1\n", mode=mode)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"a = 1\n"
    assert _mode(target) == mode
    assert _entries(tmp_path) == ["f.toml"]


def test_replaces_an_existing_file_and_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old content that is longer than the new one")
    target.chmod(0o666)
    write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert _entries(tmp_path) == ["secret"]


def test_sets_the_owner(tmp_path: Path) -> None:
    target = tmp_path / "owned"
    write_atomic(target, b"x", mode=0o600, owner=(os.getuid(), os.getgid()))
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_bytes(b"old\n")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes", mode=0o600)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old\n"
    assert _entries(tmp_path) == ["config.toml"]


def test_a_failed_rename_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    # A folder in the way makes the final rename fail, also for root.
    target = tmp_path / "status.json"
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(IsADirectoryError):
        write_atomic(target, b"{}", mode=0o644)
    assert (target / "inside").read_bytes() == b"kept"
    assert _entries(tmp_path) == ["status.json"]


def test_a_missing_folder_is_an_error_not_a_created_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "f", b"x", mode=0o600)
    assert _entries(tmp_path) == []


def test_replace_symlink_points_the_link_at_the_new_target(tmp_path: Path) -> None:
    link = tmp_path / "ttyMODEM"
    replace_symlink(link, "/dev/pts/1")
    assert os.readlink(link) == "/dev/pts/1"
    replace_symlink(link, "/dev/pts/2")
    assert os.readlink(link) == "/dev/pts/2"
    assert _entries(tmp_path) == ["ttyMODEM"]
