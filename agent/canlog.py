"""Recorded CAN logs, read with python-can's own readers, and the compact form of a frame.

Which file names python-can reads (its registry and installed reader plugins, plus the gzip
variant of each file-based format), and opening one as an iterator of frames: a line of a text
log that no frame can be read from is skipped and reported, and reading goes on with the next;
a binary log ends at damage. ``ROW`` turns a python-can frame into the tuple the pipeline
processes. It parses no log format itself and has no state: the callers count and report.

Its imports are light on purpose (python-can and the standard library): agent.logchild runs it
in a child process that starts with nothing else loaded.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import operator
import zlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import can

from agent.errors import SourceError

# Lines kept from the start of a text log (its header, before the first frame), so that a
# reader re-created after an unreadable line starts in the same state (base, start time, columns).
_PREAMBLE_MAX = 10_000
# python-can's plugin readers register here (its documented entry-point group).
_READER_PLUGINS = "can.io.message_reader"

# A frame as the pipeline processes it: a tuple of these attributes of a python-can Message,
# in this order. A tuple costs less to hand between processes, and to unpack, than a Message.
ROW_FIELDS = (
    "timestamp",
    "arbitration_id",
    "is_extended_id",
    "is_remote_frame",
    "is_error_frame",
    "data",
)
Row = tuple[float, int, bool, bool, bool, Any]
ROW: Callable[[Any], Row] = operator.attrgetter(*ROW_FIELDS)


def readers() -> dict[str, Any]:
    """python-can's log readers by suffix: its own registry, then installed plugins (loaded only
    when a log of theirs is opened, as python-can does)."""
    known: dict[str, Any] = dict(can.io.player.MESSAGE_READERS)
    for ep in importlib.metadata.entry_points(group=_READER_PLUGINS):
        known.setdefault(ep.name.lower(), ep)
    return known


def gzip_ok(reader: Any) -> bool:
    return isinstance(reader, type) and issubclass(
        reader, (can.io.generic.TextIOMessageReader, can.io.generic.BinaryIOMessageReader)
    )


def log_suffixes() -> list[str]:
    """Every file name ending a replay accepts: what python-can's LogReader reads, and the gzip
    compressed variant of each file-based format (``.asc.gz``, ``.log.gz``, ...)."""
    known = readers()
    return sorted(known) + sorted(f"{s}.gz" for s, r in known.items() if gzip_ok(r))


def split_suffix(path: Path) -> tuple[str, bool]:
    name = path.name.lower()
    gz = name.endswith(".gz")
    return Path(name[:-3] if gz else name).suffix, gz


def readable_suffix(path: Path) -> bool:
    suffix, gz = split_suffix(path)
    reader = readers().get(suffix)
    return reader is not None and (not gz or gzip_ok(reader))


class _Lines:
    """The lines of an open text log, numbered, for python-can's text readers.

    Those readers end at the first line they cannot parse. To go on, a fresh reader is started
    on the rest of the file; it is first handed again the lines before the log's first frame
    (the header), so that it reads the rest as the first reader would have.
    """

    def __init__(self, f: Any) -> None:
        self.f = f
        self.number = 0
        self.header: list[str] = []
        self.in_header = True
        self.broken = False

    def lines(self, replay: list[str]) -> Generator[str, None, None]:
        """Yield ``replay``, then the file's next lines (a generator: readers may close it)."""
        yield from replay
        header = self.header
        lines = enumerate(self.f, self.number + 1)
        try:
            for self.number, line in lines:
                if not self.in_header:
                    yield line
                    break
                header.append(line)
                if len(header) > _PREAMBLE_MAX:
                    # No header is this long: this is a log without frames so far.
                    header.clear()
                    self.in_header = False
                yield line
            # Past the header: nothing more to do per line than to count it.
            for self.number, line in lines:
                yield line
        except (OSError, EOFError, zlib.error):
            # The file itself failed (truncated or corrupt gzip, I/O error): unlike a line a
            # reader cannot parse, nothing after it can be reached.
            self.broken = True
            raise

    def file(self, replay: list[str]) -> _LineFile:
        return _LineFile(self.lines(replay))

    def end_header(self) -> None:
        """A line just gave a frame (or could not be read): it belongs to no header."""
        if self.in_header and self.header:
            self.header.pop()


class _LineFile:
    """Lines as the file object a python-can text reader takes. Having ``read`` and ``write``
    is how python-can 4.4 tells an open file from a path; neither is called."""

    def __init__(self, lines: Generator[str, None, None]) -> None:
        self._lines = lines
        self._next = lines.__next__

    def __iter__(self) -> Generator[str, None, None]:
        # The lines themselves: a reader's loop then runs without a Python call per line.
        return self._lines

    def __next__(self) -> str:
        return self._next()

    def read(self, *_: Any) -> str:
        raise io.UnsupportedOperation("read")

    def write(self, *_: Any) -> int:
        raise io.UnsupportedOperation("write")

    def close(self) -> None:
        self._lines.close()


def text_frames(
    f: Any, reader: Any, on_bad: Callable[[int, Exception], None]
) -> Generator[Any, None, None]:
    """The frames of an open text log, skipping every line the reader cannot parse (each
    reported to ``on_bad`` with its line number). Raises what breaks the file itself."""
    with f:
        src = _Lines(f)
        replay: list[str] = []
        last_bad = -1
        while True:
            try:
                for msg in reader(src.file(replay)):
                    if src.in_header:
                        src.end_header()
                        src.in_header = False
                    yield msg
                return
            except Exception as err:  # readers raise several types for a line they cannot read
                # A failure without a new line read is not a line's fault: skipping cannot help.
                if src.broken or src.number == last_bad:
                    raise
                last_bad = src.number
                on_bad(src.number, err)
            src.end_header()
            replay = list(src.header)


def open_log(
    path: Path, on_bad: Callable[[int, Exception], None]
) -> tuple[Iterator[Any], Callable[[], None]]:
    """The frames of a log and how to close it. A text format skips the lines it cannot read,
    each reported to ``on_bad`` with its line number; a binary format ends at damage. Raises
    SourceError naming the file when it cannot be opened as a log."""
    suffix, gz = split_suffix(path)
    reader = readers().get(suffix)
    if reader is None or (gz and not gzip_ok(reader)):
        raise SourceError(f"{path}: not a log format python-can reads")
    try:
        if isinstance(reader, importlib.metadata.EntryPoint):
            reader = reader.load()
        if issubclass(reader, can.io.generic.TextIOMessageReader):
            # Undecodable bytes become U+FFFD: a binary garbage line is then one unreadable
            # line instead of an error of the whole file.
            # The file is closed by the returned close function (or the frames' end).
            f = (
                gzip.open(path, "rt", encoding="utf-8", errors="replace")  # noqa: SIM115
                if gz
                else path.open(encoding="utf-8", errors="replace")
            )
            frames = text_frames(f, reader, on_bad)

            def close() -> None:
                frames.close()
                f.close()

            return frames, close
        # The reader owns the file it is given and closes it in stop().
        opened = reader(gzip.open(path, "rb")) if gz else reader(str(path))  # noqa: SIM115
    except Exception as err:  # readers and plugins raise several types for a bad file
        raise SourceError(f"{path}: cannot read log: {err}") from None
    return iter(opened), opened.stop
