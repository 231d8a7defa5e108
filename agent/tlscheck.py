"""Checks of TLS material and of the broker, for activation.

Parses PEM/DER certificates with the standard library (validity dates, key match through
ssl), and probes a broker with a TLS handshake and a minimal MQTT CONNECT, so the dealer learns
before anything is written whether the car will be able to connect. It does not write configs
(agent.activation) nor publish (agent.uplink).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import re
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

from agent.config import Config

BROKER_TIMEOUT = 10.0


# -- TLS material ----------------------------------------------------------------------------
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.S)


def _pem_blocks(data: bytes, kind: str) -> list[bytes]:
    return [
        base64.b64decode(m.group(2)) for m in _PEM.finditer(data) if m.group(1) == kind.encode()
    ]


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``i``."""
    tag, first = der[i], der[i + 1]
    if first < 0x80:
        start, length = i + 2, first
    else:
        n = first & 0x7F
        start, length = i + 2 + n, int.from_bytes(der[i + 2 : i + 2 + n], "big")
    if start + length > len(der):
        raise ValueError("truncated DER")
    return tag, start, start + length


def _der_time(tag: int, raw: bytes) -> dt.datetime:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime: two-digit year, 50-99 are 19xx (RFC 5280)
        yy = int(text[:2])
        text = f"{1900 + yy if yy >= 50 else 2000 + yy}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime
        raise ValueError("not a time")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)


def certificate_validity(der: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter) of an X.509 certificate in DER; ValueError if it is not one."""
    try:
        _, cert, _ = _tlv(der, 0)
        tag, i, tbs_end = _tlv(der, cert)
        if tag != 0x30:
            raise ValueError("not a certificate")
        if der[i] == 0xA0:  # explicit version
            i = _tlv(der, i)[2]
        for _ in range(3):  # serial, signature algorithm, issuer
            i = _tlv(der, i)[2]
        tag, i, _ = _tlv(der, i)
        if tag != 0x30:
            raise ValueError("no validity")
        t1, s1, e1 = _tlv(der, i)
        t2, s2, e2 = _tlv(der, e1)
        return _der_time(t1, der[s1:e1]), _der_time(t2, der[s2:e2])
    except (IndexError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed certificate ({err})") from None


def _read(path: Path, what: str, problems: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as err:
        problems.append(f"{what} {path}: cannot read: {err.strerror or err}")
        return None


def _check_certs(path: Path, what: str, data: bytes, now: dt.datetime) -> list[str]:
    blocks = _pem_blocks(data, "CERTIFICATE")
    if not blocks:
        return [f"{what} {path}: no PEM certificate in the file"]
    problems = []
    for n, der in enumerate(blocks, 1):
        which = f"{what} {path}" + (f" (certificate {n})" if len(blocks) > 1 else "")
        try:
            not_before, not_after = certificate_validity(der)
        except ValueError as err:
            problems.append(f"{which}: cannot parse: {err}")
            continue
        if not_after < now:
            problems.append(f"{which}: expired on {not_after:%Y-%m-%d %H:%M} UTC")
        elif not_before > now:
            problems.append(
                f"{which}: not valid before {not_before:%Y-%m-%d %H:%M} UTC (check the clock)"
            )
    return problems


def tls_problems(ca: Path, cert: Path, key: Path, now: dt.datetime | None = None) -> list[str]:
    """Every problem with the CA file, the client certificate and its key."""
    now = now or dt.datetime.now(dt.UTC)
    problems: list[str] = []
    ca_data = _read(ca, "--ca", problems)
    cert_data = _read(cert, "--cert", problems)
    key_data = _read(key, "--key", problems)
    if ca_data is not None:
        ca_problems = _check_certs(ca, "--ca", ca_data, now)
        if not ca_problems:
            try:
                ssl.create_default_context(cafile=str(ca))
            except ssl.SSLError as err:
                ca_problems.append(f"--ca {ca}: not usable as a CA file: {err.reason or err}")
        problems += ca_problems
    cert_ok = cert_data is not None and not (
        cert_problems := _check_certs(cert, "--cert", cert_data, now)
    )
    if cert_data is not None and not cert_ok:
        problems += cert_problems
    key_ok = False
    if key_data is not None:
        if b"ENCRYPTED" in key_data:
            problems.append(f"--key {key}: the key is encrypted; the agent needs it unencrypted")
        elif not re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", key_data):
            problems.append(f"--key {key}: no PEM private key in the file")
        else:
            key_ok = True
    if cert_ok and key_ok:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except ssl.SSLError as err:
            if "KEY_VALUES_MISMATCH" in str(err) or "key values mismatch" in str(err):
                problems.append(f"--key {key}: does not match the certificate {cert}")
            else:
                problems.append(f"--key {key}: cannot load with {cert}: {err.reason or err}")
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
