"""Test support: a real mosquitto broker on a free loopback port, TLS material made with the
``openssl`` CLI, and a small collecting subscriber.

The system mosquitto on 127.0.0.1:1883 is never touched: every broker here gets its own port,
config and folder. Nothing here mocks MQTT; it only starts and stops real processes.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.wait import wait_until  # noqa: F401  (re-exported for tests)

MOSQUITTO = "/usr/sbin/mosquitto"
INSTALL_HINT = "mosquitto is missing: apt-get install -y mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA that signed nothing here: for wrong-CA tests


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    _openssl(
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
    _openssl(
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
    _openssl(
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
    """One mosquitto process with its own config folder; restartable on the same port."""

    directory: Path
    tls: TlsFiles | None = None
    require_certificate: bool = False
    acl: str | None = None
    persistence: bool = False
    max_inflight_messages: int | None = None
    # Only client ids with this prefix may connect (reloadable): holds a publisher off.
    clientid_prefixes: str | None = None
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

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
            "log_type all",
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

    def start(self, timeout: float = 15.0) -> None:
        if not os.path.exists(MOSQUITTO):
            pytest.skip(INSTALL_HINT)
        conf = self._write_config()
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        proc = self.proc
        if not wait_until(lambda: proc.poll() is not None or self._accepts(), timeout):
            self.kill()
            raise RuntimeError(f"mosquitto on port {self.port} did not accept connections")
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise RuntimeError(f"mosquitto exited ({proc.returncode}): {err}{log[-2000:]}")

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
        if proc.stderr:
            proc.stderr.close()

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
