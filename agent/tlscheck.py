"""Checks of TLS material and of the broker, for `check` and activation.

The certificate part reads the CA file, the client certificate and its private key with
``cryptography`` (PEM, or DER where the agent cannot use it, to say so), checks validity dates
and that the key belongs to the certificate, and then builds the same ``ssl`` context the
uplink builds, so what passes here is what ``run`` loads. Every problem is one line naming the
file as the caller labels it (``mqtt.tls.cert`` in a config, ``--cert`` in activation). The
broker part probes a broker with a TLS handshake and an MQTT CONNECT, so the dealer learns
before anything is written whether the car will be able to connect. It does not write configs
(agent.activation) nor publish (agent.uplink).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from agent.config import Config, TlsConfig
from agent.errors import AgentError

BROKER_TIMEOUT = 10.0


# -- TLS material ----------------------------------------------------------------------------
_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: Path, label: str, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as err:
        problems.append(f"{label} {path}: cannot read: {err.strerror or err}")
        return None


def _certificates(path: Path, label: str, data: bytes) -> tuple[list[x509.Certificate], str]:
    """The certificates of a PEM file, or a problem; DER is recognised only to name it."""
    if b"-----BEGIN" not in data:
        try:
            x509.load_der_x509_certificate(data)
        except ValueError:
            return [], f"{label} {path}: no PEM certificate in the file"
        return [], (
            f"{label} {path}: a DER certificate; the agent reads PEM "
            f"(convert: openssl x509 -inform der -in {path} -out {path.stem}.pem)"
        )
    try:
        return x509.load_pem_x509_certificates(data), ""
    except ValueError as err:
        return [], f"{label} {path}: cannot parse: {err}"


def _dates(certs: list[x509.Certificate], path: Path, label: str, now: dt.datetime) -> list[str]:
    problems = []
    for n, cert in enumerate(certs, 1):
        which = f"{label} {path}" + (f" (certificate {n})" if len(certs) > 1 else "")
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not_after < now:
            problems.append(f"{which}: expired on {not_after:%Y-%m-%d %H:%M} UTC")
        elif not_before > now:
            problems.append(
                f"{which}: not valid before {not_before:%Y-%m-%d %H:%M} UTC (check the clock)"
            )
    return problems


def _private_key(path: Path, label: str, data: bytes) -> tuple[bytes | None, str]:
    """The DER public key of a PEM private key, or a problem."""
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        return None, f"{label} {path}: no PEM private key in the file"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        return None, f"{label} {path}: the key is encrypted; the agent needs it unencrypted"
    except (ValueError, UnsupportedAlgorithm) as err:
        return None, f"{label} {path}: cannot parse the private key: {err}"
    return key.public_key().public_bytes(*_PUBLIC), ""


TLS_FIELDS = ("ca", "cert", "key")


def config_tls_problems(cfg: Config, now: dt.datetime | None = None) -> list[str]:
    """:func:`tls_problems` for a loaded config's ``[mqtt] tls``, named by config field."""
    tls = cfg.mqtt.tls_config if cfg.mqtt is not None else None
    if tls is None:
        return []
    source = str(cfg.source or "config")
    return tls_problems(tls, {f: f"{source}: mqtt.tls.{f}" for f in TLS_FIELDS}, now)


def tls_problems(
    tls: TlsConfig, labels: Mapping[str, str], now: dt.datetime | None = None
) -> list[str]:
    """Every problem with the CA file, the client certificate and its key, each line starting
    with the file's label and path. Empty when the uplink will load them."""
    from agent.mqttclient import tls_context

    now = now or dt.datetime.now(dt.UTC)
    problems: list[str] = []
    if tls.ca is not None and (data := _read(tls.ca, labels["ca"], problems)) is not None:
        certs, problem = _certificates(tls.ca, labels["ca"], data)
        problems += [problem] if problem else _dates(certs, tls.ca, labels["ca"], now)
    cert: x509.Certificate | None = None
    if tls.cert is not None and (data := _read(tls.cert, labels["cert"], problems)) is not None:
        certs, problem = _certificates(tls.cert, labels["cert"], data)
        problems += [problem] if problem else _dates(certs, tls.cert, labels["cert"], now)
        cert = certs[0] if certs else None
    public: bytes | None = None
    if tls.key is not None and (data := _read(tls.key, labels["key"], problems)) is not None:
        public, problem = _private_key(tls.key, labels["key"], data)
        problems += [problem] if problem else []
    if (
        cert is not None
        and public is not None
        and cert.public_key().public_bytes(*_PUBLIC) != public
    ):
        problems.append(f"{labels['key']} {tls.key}: does not match the certificate {tls.cert}")
    if not problems:
        # What the files hold is fine; the uplink's own loader must agree (e.g. a key type
        # this OpenSSL does not take).
        try:
            tls_context(tls)
        except AgentError as err:
            problems += err.problems
    return problems


# -- the broker ------------------------------------------------------------------------------
_CONNACK = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


def _mqtt_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session (leaves no state on the broker)."""
    flags = 0x02
    payload = _mqtt_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _mqtt_string(username)
        if password is not None:
            flags |= 0x40
            payload += _mqtt_string(password)
    body = _mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + payload
    n, length = len(body), bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x10]) + bytes(length) + body


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


def _why(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


@dataclass(frozen=True)
class BrokerCheck:
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def check_broker(cfg: Config, timeout: float = BROKER_TIMEOUT) -> BrokerCheck:
    """TLS handshake plus one MQTT CONNECT with the config's TLS material.

    An unreachable broker (DNS, TCP) is a note, not a problem: a car may be activated where it
    has no network yet. A failed handshake or a refused certificate is a problem.
    """
    assert cfg.mqtt is not None
    m = cfg.mqtt
    tls = m.tls_config
    where = f"{m.host}:{m.port}"
    assert tls is not None and tls.cert is not None and tls.key is not None
    ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    ctx.check_hostname = tls.check_hostname
    try:
        raw = socket.create_connection((m.host, m.port), timeout=timeout)
    except OSError as err:
        return BrokerCheck(
            notes=(f"broker {where} not reachable now ({_why(err)}): TLS not checked",)
        )
    # A distinct client id: the car's own id would take over a running agent's session.
    client_id = f"{m.client_id or cfg.vehicle.vin}-activate"
    handshaken = False
    try:
        with raw, ctx.wrap_socket(raw, server_hostname=m.host) as s:
            handshaken = True
            # With TLS 1.3 the server checks our certificate after the client's side of the
            # handshake is done: a refusal shows only as an alert (or a reset) on the first read.
            s.sendall(_connect_packet(client_id, m.username, m.password))
            ack = _recv_exact(s, 4)
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")
    except ssl.SSLCertVerificationError as err:
        return BrokerCheck(
            (f"broker {where}: its certificate is not trusted with --ca: {err.verify_message}",)
        )
    except (ssl.SSLError, OSError) as err:
        reason = str(err.reason or err) if isinstance(err, ssl.SSLError) else _why(err)
        # TLS 1.2 refuses a client certificate inside the handshake, with an alert.
        cert_alert = "ALERT" in reason and any(w in reason for w in ("CA", "CERTIFICATE"))
        if handshaken or cert_alert:
            return BrokerCheck(
                (
                    f"broker {where}: ended the connection after the TLS handshake ({reason}): "
                    f"it does not accept the client certificate {tls.cert}",
                )
            )
        return BrokerCheck((f"broker {where}: TLS handshake failed: {reason}",))
    if ack[0] != 0x20:
        return BrokerCheck((f"broker {where}: did not answer as an MQTT broker",))
    if ack[3] != 0:
        text = _CONNACK.get(ack[3], f"code {ack[3]}")
        return BrokerCheck(
            notes=(
                f"broker {where}: TLS OK, but a test connection as {client_id} was refused "
                f"({text}); the agent connects as {m.client_id or cfg.vehicle.vin}",
            )
        )
    return BrokerCheck(notes=(f"broker {where}: TLS handshake and MQTT connection OK",))
