"""A recorded log read in a child process, so that reading overlaps the pipeline's processing.

With every bus a replay the pipeline reads the logs in its own thread: its time is python-can's
reading time plus the processing, and a thread beside it cannot help (they share the GIL). A
child process can: ``LogChild`` forks one, which opens the log with agent.canlog (python-can's
own readers, unreadable text lines skipped), shifts the times as configured, and writes the
frames into a pipe as rows (agent.canlog.ROW) in a stream of pickles; the parent reads them
while it processes the previous ones. Forked, the child starts in milliseconds with python-can
loaded (a fresh interpreter importing it takes about 0.1 s of CPU, a sixth of reading the
200,000-frame demo drive); it closes every file the parent holds open, touches none of the
parent's threads' state (no logging, no sys.stderr) and leaves by ``os._exit``.

The pipe bounds what is read ahead (its buffer, enlarged to at most 1 MiB): a child whose parent
does not read blocks on writing. What the child meets is reported to the parent, never logged
by the child: each unreadable line (its number, the error), a log that broke off (after how
many frames, why), a log that cannot be opened (SourceError's lines); the parent reports them as
an in-thread read would. The child ignores SIGINT and SIGTERM: its parent ends it (``close``:
SIGKILL, then it reaps it), and a parent that died ends it too, as its next write fails.

It does not pace a replay or merge logs: the caller does, with the rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import itertools
import os
import pickle
import signal
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

from agent.canlog import ROW, Row, open_log
from agent.errors import SourceError

# Rows per message from the child: fewer, larger pickles cost the parent less per frame. The
# first is small so that the parent starts at once; each next one doubles, up to CHUNK. Every
# size is a multiple of the pipeline's batch (agent.can_source.BATCH), so that slicing the
# messages gives the batches an in-thread read gives.
FIRST_CHUNK = 256
CHUNK = 4096
# The pipe's buffer: what the child may read ahead of the parent (Linux F_SETPIPE_SZ; an
# unprivileged process may ask up to /proc/sys/fs/pipe-max-size, 1 MiB by default).
PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# The buffers of both ends of the pipe (bytes per write and per read system call).
BUFFER = 1 << 16
_PROTOCOL = 5  # bytearray payloads are pickled as they are (no copy through a reduce call)

# File descriptors the forked child closes (all but its pipe and the standard ones).
_MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536

# Unreadable lines as the child reports them: (line number, error type name, error text).
BadLine = tuple[int, str, str]


class LogChild:
    """The parent's side: start the child, read its rows, end it."""

    def __init__(self, path: Path, *, shift: bool) -> None:
        self.path = path
        self.shift = shift
        self.pid = 0
        self.exit_code = 0
        # Why the log broke off (the reader's error text), once the child said so.
        self.error: str | None = None
        # Frames the child read, once it finished.
        self.frames = 0
        self._out: IO[bytes] | None = None

    def open(self) -> None:
        """Start the child and wait until it opened the log; SourceError when it cannot."""
        read_end = write_end = -1
        try:
            read_end, write_end = os.pipe()
            _enlarge(read_end)
            pid = os.fork()
        except OSError as err:  # out of processes or memory
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)
            why = f"{self.path}: cannot start a process to read the log: {err}"
            raise SourceError(why) from None
        if pid == 0:
            _child(read_end, write_end, self.path, self.shift)  # never returns
        os.close(write_end)
        self.pid = pid
        self._out = os.fdopen(read_end, "rb", buffering=BUFFER)
        first = self._read()
        if first[0] == "fail":
            raise SourceError(*first[1])
        if first[0] != "up":
            raise self._died()

    def chunks(self) -> Iterator[tuple[list[Row], list[BadLine]]]:
        """The rows, in lists of up to CHUNK, each with the unreadable lines met since the
        previous one. At the end ``frames`` and ``error`` say how the log ended."""
        while True:
            item = self._read()
            if item[0] == "rows":
                yield item[1], item[2]
            elif item[0] == "end":
                _, self.frames, self.error, bad = item
                if bad:
                    yield [], bad
                return
            else:
                raise self._died()

    def _read(self) -> tuple[Any, ...]:
        assert self._out is not None
        try:
            item = pickle.load(self._out)
        except (EOFError, pickle.UnpicklingError, OSError):
            raise self._died() from None
        if not isinstance(item, tuple) or not item:
            raise self._died()
        return item

    def _died(self) -> SourceError:
        """The child ended without finishing: what to tell the user (how it ended)."""
        code = self._end()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return SourceError(f"{self.path}: the process reading the log {how} before its end")

    def close(self) -> None:
        """End the child (at once if it still runs) and release the pipe; idempotent."""
        self._end()

    def _end(self) -> int:
        """Kill the child if it still runs, reap it; its exit code (negative: a signal)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        pid, self.pid = self.pid, 0
        if not pid:
            return self.exit_code
        # A child that already exited is a zombie until reaped: the signal then does nothing.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        self.exit_code = os.waitstatus_to_exitcode(status)
        return self.exit_code


def _enlarge(fd: int) -> None:
    # A smaller limit (pipe-max-size) or another kernel: the default buffer works too.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)


# -- the child -----------------------------------------------------------------------------


def _shifted(frames: Iterator[Any]) -> Iterator[Any]:
    """The frames, shifted so that the first is stamped now (``time = "now"``)."""
    offset = None
    for msg in frames:
        if offset is None:
            offset = time.time() - msg.timestamp
        if offset:
            msg.timestamp += offset
        yield msg


def serve(path: Path, shift: bool, out: IO[bytes]) -> None:
    """Read the log at ``path`` and write what the parent reads (``LogChild``) to ``out``."""

    def send(item: tuple[Any, ...]) -> None:
        pickle.dump(item, out, _PROTOCOL)

    bad: list[BadLine] = []

    def on_bad(number: int, err: Exception) -> None:
        bad.append((number, type(err).__name__, str(err)))

    try:
        frames, close = open_log(path, on_bad)
    except SourceError as err:
        send(("fail", err.problems))
        return
    send(("up",))
    out.flush()
    messages = _shifted(frames) if shift else frames
    failure: str | None = None
    count = 0
    size = FIRST_CHUNK
    try:
        while failure is None:
            rows: list[Row] = []
            try:
                # A list extended from an iterator keeps what it took before an error: the
                # frames before a log breaks off are still handed on.
                rows.extend(map(ROW, itertools.islice(messages, size)))
            except Exception as err:  # readers raise several types for a log that breaks off
                failure = str(err)
            if rows:
                count += len(rows)
                send(("rows", rows, bad[:]))
                bad.clear()
            if len(rows) < size:
                break
            size = min(2 * size, CHUNK)
    finally:
        close()
    send(("end", count, failure, bad))
    out.flush()


def _child(read_end: int, write_end: int, path: Path, shift: bool) -> NoReturn:
    """The forked child's life: serve the log into ``write_end``, then exit at once (no
    interpreter shutdown: the parent's objects, threads and files are not this process's)."""
    code = 1
    try:
        os.close(read_end)
        # The parent decides when this process ends (a terminal's Ctrl-C or a service stop
        # reaches the whole process group, and the parent's handlers were inherited): a signal
        # here would make a clean stop look like a broken log.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The parent's objects stay out of this process's garbage collections: scanning them
        # would cost time and copy their pages.
        gc.freeze()
        # What the parent holds open (its sockets, its database) is not this process's to keep.
        os.closerange(3, write_end)
        os.closerange(write_end + 1, _MAX_FD)
        with os.fdopen(write_end, "wb", buffering=BUFFER) as out:
            serve(path, shift, out)
        code = 0
    except BrokenPipeError:
        code = 0  # the parent stopped reading: it ended, or is ending this process
    except BaseException:
        # Straight to the file descriptor: the parent's sys.stderr may hold a lock of a thread
        # that does not exist here.
        with contextlib.suppress(OSError):
            os.write(2, traceback.format_exc().encode(errors="replace"))
    finally:
        os._exit(code)
