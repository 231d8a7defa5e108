"""Bounded line framing for receiver streams: chunks of bytes in, whole lines out.

Lines end in LF (a CR before it is the reader's to strip); a chunk may end mid-line (the rest is
kept for the next chunk). A line longer than ``limit`` bytes is dropped up to its end and
counted, so a peer that never sends LF cannot grow the buffer. It does not decode or parse.
"""

from __future__ import annotations


class LineFramer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.overlong = 0  # lines dropped for their length
        self._buf = bytearray()
        self._skipping = False

    def clear(self) -> None:
        """Forget a partial line (the stream restarted)."""
        self._buf.clear()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        """The lines ``data`` completed, without their LF."""
        out: list[bytes] = []
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.limit:
                    if not self._skipping:
                        self.overlong += 1
                    self._skipping = True
                    self._buf.clear()
                return out
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._skipping:
                self._skipping = False
            elif len(line) > self.limit:
                self.overlong += 1
            else:
                out.append(line)
