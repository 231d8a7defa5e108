"""Atomic, durable file replacement: the one way the agent writes a file that must not tear.

``write_atomic`` replaces a file so that a reader, a crash or a power cut sees either the old
content or the new, never a mixture: the bytes go to a temporary file in the same folder (so
the rename cannot cross file systems), are flushed and fsynced, the temporary file is renamed
over the target, and the folder is fsynced so that the rename itself survives a power cut. The
last step is what makes a written file as durable as a committed outbox row; on a tmpfs (/run)
both fsyncs cost next to nothing, so one guarantee serves every caller.

``replace_symlink`` does the same for a symbolic link, ``fsync_dir`` makes renames in a folder
durable for callers that move files themselves (the outbox moving a corrupt file aside).

This module does not choose paths, modes or owners (callers do) and does not create folders.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make the entries of ``folder`` (renames, new and removed files) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace ``path`` with ``data``: a crash or power cut leaves the old or the new file.

    ``mode`` is set exactly (the umask does not apply; 0o600 for secrets); ``owner`` is an
    optional ``(uid, gid)``. On failure the target is untouched, no temporary file is left
    behind and the OSError propagates.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # Mode and owner are set before the content is written, so a secret is never
            # readable by others, not even for a moment.
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def replace_symlink(link: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Point the symbolic link ``link`` at ``target``, atomically: a reader resolving ``link``
    finds the old target or the new one, never no link at all."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(link.parent)
