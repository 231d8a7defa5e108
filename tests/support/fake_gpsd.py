"""A fake gpsd for the tests: listens on a free port and speaks gpsd's JSON protocol.

On each connection it sends the ``VERSION`` banner; a ``?WATCH={...}`` request is answered with
``DEVICES`` and ``WATCH`` and switches the stream on (``"enable":false`` switches it off again;
a client that closes its connection stops watching too: ``watching`` counts the others). The
test then sends reports (``tpv``, ``sky``, raw lines such as garbage) to every watching client,
or falls silent, or closes the connections (``drop``) or stops listening (``close``). Each
client is served by its own thread; nothing is timed here, the test decides what happens when.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import threading
from typing import Any

DEVICE = "/dev/ttyFAKE0"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def tpv(
    second: int,
    lat: float | None,
    lon: float | None,
    *,
    mode: int = 3,
    speed: float = 13.9,
    **extra: Any,
) -> dict[str, Any]:
    """A TPV report at 2026-01-01 00:00:00 UTC + ``second``; None lat/lon leaves them out."""
    when = (T0 + dt.timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    doc: dict[str, Any] = {"class": "TPV", "device": DEVICE, "mode": mode, "time": when}
    if lat is not None and lon is not None:
        doc.update(lat=lat, lon=lon, altMSL=520.0, alt=520.0, track=12.5, speed=speed)
        doc.update(eph=4.2, epx=3.0, epy=3.0)
    doc.update(extra)
    return doc


def sky(hdop: float = 0.9, used: int = 9) -> dict[str, Any]:
    sats = [{"PRN": i + 1, "ss": 40, "used": i < used} for i in range(used + 3)]
    return {"class": "SKY", "device": DEVICE, "hdop": hdop, "satellites": sats}


class FakeGpsd:
    """``with FakeGpsd() as gpsd: GpsdSource("127.0.0.1", gpsd.port)``."""

    def __init__(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._srv.getsockname()[1]
        self._srv.settimeout(0.05)  # accept() wakes up to see close()
        self._lock = threading.Lock()
        self._watching: list[socket.socket] = []
        self._all: list[socket.socket] = []
        self.connections = 0
        self.watches: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fake-gpsd", daemon=True)

    def __enter__(self) -> FakeGpsd:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening and close every connection: gpsd has gone away."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._srv.close()
        self.drop()
        self._thread.join(5)

    @property
    def watching(self) -> int:
        with self._lock:
            return len(self._watching)

    def send(self, *reports: dict[str, Any] | bytes) -> None:
        """Send reports (dicts as JSON lines, bytes as they are) to every watching client."""
        data = b"".join(
            r if isinstance(r, bytes) else json.dumps(r).encode() + b"\r\n" for r in reports
        )
        with self._lock:
            clients = list(self._watching)
        for c in clients:
            with contextlib.suppress(OSError):
                c.sendall(data)

    def drop(self) -> None:
        """Close the connections (gpsd restarted); the listener stays."""
        with self._lock:
            clients, self._all, self._watching = self._all, [], []
        for c in clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self.connections += 1
                self._all.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        banner = {"class": "VERSION", "release": "3.25", "rev": "3.25", "proto_major": 3}
        try:
            conn.sendall(json.dumps(banner).encode() + b"\r\n")
            buf = b""
            while not self._stop.is_set():
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._request(conn, line.strip().rstrip(b";"))
        except OSError:
            pass
        with self._lock:
            if conn in self._watching:
                self._watching.remove(conn)

    def _request(self, conn: socket.socket, line: bytes) -> None:
        if not line.startswith(b"?WATCH="):
            return
        watch = json.loads(line[len(b"?WATCH=") :])
        enable = watch.get("enable", True)
        devices = {"class": "DEVICES", "devices": [{"class": "DEVICE", "path": DEVICE}]}
        answer = {"class": "WATCH", "enable": enable, "json": enable, "nmea": False}
        conn.sendall(json.dumps(devices).encode() + b"\r\n" + json.dumps(answer).encode() + b"\r\n")
        with self._lock:
            self.watches.append(watch)
            if not enable:
                if conn in self._watching:
                    self._watching.remove(conn)
            elif conn in self._all and conn not in self._watching:
                self._watching.append(conn)
