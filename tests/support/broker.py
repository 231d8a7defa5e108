"""Test support: the one launcher of a real mosquitto broker (free loopback port, readiness
awaited on a condition, kill and restart on the same port for outage tests), TLS material made
with the ``openssl`` CLI, and a small collecting subscriber.

The tests, scripts/bench.py and scripts/demo all start their broker here; the demo (bash) runs it
as ``python -m tests.support.broker --dir D``, which prints the port once the
broker accepts connections and stops it on SIGTERM or SIGINT.

The system mosquitto on 127.0.0.1:1883 is never touched: every broker here gets its own port,
config and folder. Nothing here mocks MQTT; it only starts and stops real processes.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.wait import wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
INSTALL_HINT = "mosquitto is missing: run scripts/setup (apt-get install -y mosquitto)"
SYSTEM_BROKER_PORT = 1883
START_ATTEMPTS = 3  # fresh ports tried when another process took the chosen one first


class BrokerError(RuntimeError):
    """mosquitto is missing, or did not come up (the message says why)."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (never the system broker's 1883)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != SYSTEM_BROKER_PORT:
            return port


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA that signed nothing here: for wrong-CA tests


def openssl(*args: str | Path, cwd: Path) -> None:
    """Run the openssl CLI in ``cwd``; its output is kept from the test's."""
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(crt),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    return crt, key


def _make_leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, crt, extf = (d / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        f"/CN={name}",
        cwd=d,
    )
    extf.write_text(ext)
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "2",
        "-extfile",
        str(extf),
        cwd=d,
    )
    return crt, key


def make_tls_material(directory: Path) -> TlsFiles:
    """Generate a CA, a server certificate for localhost/127.0.0.1, a client certificate, and
    an unrelated second CA, all with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI is missing: apt-get install -y openssl")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(d, "ca")
    server = _make_leaf(
        d,
        "localhost",
        ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client = _make_leaf(d, "client", ca, "extendedKeyUsage=clientAuth\n")
    other = _make_ca(d, "other-ca")
    return TlsFiles(
        ca=ca[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        other_ca=other[0],
    )


@dataclass
class Mosquitto:
    """One mosquitto process with its own config folder; restartable on the same port.

    ``port`` 0 (the default) picks a free port at construction, so it is known before
    ``start``; if another process takes it before mosquitto binds it, the first ``start``
    moves to another free port. ``kill`` (SIGKILL) or ``stop`` (SIGTERM) and then ``start``
    again make an outage on the same port; ``reload`` applies a changed config (SIGHUP).
    """

    directory: Path
    tls: TlsFiles | None = None
    require_certificate: bool = False
    acl: str | None = None
    persistence: bool = False
    max_inflight_messages: int | None = None
    # Only client ids with this prefix may connect (reloadable): holds a publisher off.
    clientid_prefixes: str | None = None
    port: int = 0
    host: str = "127.0.0.1"
    # "all" logs every packet (tests read it); the bench keeps the broker's own cost low.
    # error, notice and information are always logged (start() needs them).
    log_types: tuple[str, ...] = ("all",)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _port_chosen: bool = field(default=False, init=False, repr=False)
    _started_once: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if self.port == 0:
            self.port = free_port()
            self._port_chosen = True

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def stderr_path(self) -> Path:
        return self.directory / "mosquitto.stderr"

    def _write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        # As root, mosquitto would switch to user "mosquitto", which cannot write our folder.
        lines = [
            f"user {getpass.getuser()}",
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.log_path}",
            # start() waits for the "running" notice; mosquitto 2.0 leaves its log file
            # unflushed unless "information" is logged too (checked with 2.0.11).
            *(f"log_type {t}" for t in sorted({*self.log_types, "error", "notice", "information"})),
        ]
        if self.max_inflight_messages is not None:
            lines.append(f"max_inflight_messages {self.max_inflight_messages}")
        if self.clientid_prefixes is not None:
            lines.append(f"clientid_prefixes {self.clientid_prefixes}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        if self.acl is not None:
            acl_file = self.directory / "acl"
            acl_file.write_text(self.acl)
            lines.append(f"acl_file {acl_file}")
        conf = self.directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 30.0) -> None:
        """Start mosquitto and return once it is running and accepts connections on ``port``."""
        if not os.path.exists(MOSQUITTO):
            raise BrokerError(INSTALL_HINT)
        attempts = START_ATTEMPTS if self._port_chosen and not self._started_once else 1
        for attempt in range(1, attempts + 1):
            error = self._start_once(timeout)
            if error is None:
                self._started_once = True
                return
            if "Address already in use" not in error or attempt == attempts:
                raise BrokerError(error)
            self.port = free_port()

    def _start_once(self, timeout: float) -> str | None:
        """One start; None once running, else why not."""
        conf = self._write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.stderr_path, "ab") as err:
            proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err
            )
        self.proc = proc

        # "running" is logged after every listener is bound: a connection accepted before it
        # could come from another process that holds the port.
        def ready() -> bool:
            return proc.poll() is not None or (
                " running" in self._log_since(offset) and self._accepts()
            )

        up = wait_until(ready, timeout)
        if up and proc.poll() is None:
            return None
        self.kill()
        log = self._log_since(offset)[-2000:]
        err_text = self.stderr_path.read_text(errors="replace")[-1000:]
        if not up:
            return f"mosquitto on port {self.port} was not running within {timeout:.0f} s: {log}"
        return f"mosquitto on port {self.port} exited ({proc.returncode}): {err_text}{log}"

    def _end(self, sig: int, timeout: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 10.0)

    def reload(self) -> None:
        """Rewrite the config (e.g. a changed ``acl``) and make mosquitto reload it (SIGHUP)."""
        self._write_config()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A plain-TCP broker on a free loopback port, stopped after the test."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Subscriber:
    """A paho client (MQTT 5) collecting messages from one topic filter into a list.

    It reconnects and subscribes again after a broker restart (quickly when ``reconnect``);
    ``wait_subscribed`` tells when it is subscribed on the current connection.
    """

    def __init__(
        self,
        broker: Mosquitto,
        topic: str,
        qos: int = 1,
        reconnect: bool = False,
        client_id: str = "",
        **tls: object,
    ) -> None:
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if tls:
            self._client.tls_set(**tls)  # type: ignore[arg-type]
        if reconnect:
            self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos)
        self._client.on_disconnect = lambda c, u, f, rc, p: self._subscribed.clear()
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not self._subscribed.wait(15):
            self.close()
            raise RuntimeError(f"subscriber to {topic} was not subscribed in time")

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(
                Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos)
            )

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0) -> bool:
        return wait_until(lambda: predicate(self.messages), timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """Run one broker until SIGTERM or SIGINT: the launcher for scripts/demo (bash)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.broker",
        description="Start a private mosquitto on a free loopback port; print the port once it "
        "accepts connections; stop it on SIGTERM or SIGINT.",
    )
    parser.add_argument("--dir", type=Path, help="folder for its config and log (default: new)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: free)")
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="spime-broker-"))
    broker = Mosquitto(directory, port=args.port)
    try:
        broker.start()
    except BrokerError as err:
        sys.stderr.write(f"broker: {err}\n")
        return 1
    proc = broker.proc
    assert proc is not None
    asked = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        # Only ask here; the main thread's wait below returns once mosquitto has ended.
        asked.set()
        proc.terminate()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.stdout.write(f"{broker.port}\n")
    sys.stdout.flush()
    rc = proc.wait()
    if not asked.is_set():
        sys.stderr.write(f"broker: mosquitto exited by itself ({rc}); see {broker.log_path}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
