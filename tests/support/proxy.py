"""Test support: a TCP proxy on a free loopback port in front of a real broker, which can stop
forwarding without closing anything, the way a cellular link dies without a FIN.

``blackhole()`` freezes every connection open now: nothing is forwarded in either direction
again and no socket is closed (the peer's writes pile up in kernel buffers). Connections made
afterwards are forwarded normally, like a link that came back. ``hold()`` accepts new
connections but forwards nothing until ``release()``: a connection attempt in progress.
``refuse_mqtt5``: a client whose first packet is an MQTT 5 CONNECT gets the MQTT 3.1.1 answer of
a 3.1.1-only broker (CONNACK "unacceptable protocol version") and is closed; any other client is
forwarded. ``drop_after_connack`` (settable at any time, read when a connection is accepted):
the broker's first answer (its CONNACK) is forwarded, then both sides are closed, the way a
broker that accepts and then drops every connection looks to the client. ``accept_times``: the
monotonic time of each connection accepted. Nothing here speaks MQTT beyond reading that first
packet's protocol level.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

from tests.support.broker import free_port

_POLL = 0.05


@dataclass
class _Conn:
    client: socket.socket
    accepted_at: float
    drop_after_connack: bool
    frozen: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, refuse_mqtt5: bool = False) -> None:
        self.target = (target_host, target_port)
        self.refuse_mqtt5 = refuse_mqtt5
        self.drop_after_connack = False
        self.host = "127.0.0.1"
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._released = threading.Event()
        self._released.set()
        self._stop = threading.Event()
        self._refused = 0
        self._listener = socket.create_server((self.host, self.port))
        self._listener.settimeout(_POLL)
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._thread.start()

    # ---- control ------------------------------------------------------------------------------

    def blackhole(self) -> None:
        with self._lock:
            for c in self._conns:
                c.frozen.set()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._conns)

    @property
    def accept_times(self) -> list[float]:
        with self._lock:
            return [c.accepted_at for c in self._conns]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._conns if not c.closed.is_set())

    def first_closed(self) -> bool:
        with self._lock:
            return bool(self._conns) and self._conns[0].closed.is_set()

    @property
    def refused_mqtt5(self) -> int:
        with self._lock:
            return self._refused

    def close(self) -> None:
        self._stop.set()
        self._released.set()
        self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- forwarding ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = _Conn(sock, time.monotonic(), self.drop_after_connack)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: _Conn) -> None:
        upstream: socket.socket | None = None
        try:
            while not self._released.wait(_POLL):
                if self._stop.is_set():
                    return
            first = b""
            if self.refuse_mqtt5:
                first = self._first_packet_head(conn.client)
                if first[-1:] == b"\x05":
                    conn.client.sendall(b"\x20\x02\x00\x01")  # 3.1.1 CONNACK, code 1
                    with self._lock:
                        self._refused += 1
                    return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.sendall(first)
            self._pipe(conn, upstream)
        except OSError:
            return
        finally:
            if not conn.frozen.is_set() or self._stop.is_set():
                conn.client.close()
                if upstream is not None:
                    upstream.close()
                conn.closed.set()

    @staticmethod
    def _first_packet_head(sock: socket.socket) -> bytes:
        """The CONNECT's bytes up to its protocol level (fixed header, length, "MQTT", level)."""
        data = b""
        need = 2
        while len(data) < need:
            chunk = sock.recv(need - len(data))
            if not chunk:
                raise OSError("closed before CONNECT")
            data += chunk
            if len(data) >= 2 and need == 2:
                i = 1
                while data[i] & 0x80 and i < len(data) - 1:
                    i += 1
                if data[i] & 0x80:
                    need = len(data) + 1
                    continue
                need = i + 1 + 2 + 4 + 1  # protocol name length, "MQTT", level
        return data

    def _pipe(self, conn: _Conn, upstream: socket.socket) -> None:
        peers = {conn.client: upstream, upstream: conn.client}
        while not self._stop.is_set():
            if conn.frozen.is_set():
                # A dead link: keep both sockets open, forward nothing, until the proxy closes.
                self._stop.wait()
                return
            readable, _, _ = select.select(list(peers), [], [], _POLL)
            for s in readable:
                if conn.frozen.is_set():
                    break
                data = s.recv(65536)
                if not data:
                    return
                peers[s].sendall(data)
                if s is upstream and conn.drop_after_connack:
                    # The client sends nothing before the CONNACK: this chunk is just that.
                    return
