"""Checks of TLS material, for `check` and activation.

The certificate part reads the CA file, the client certificate and its private key with
``cryptography`` (PEM, or DER where the agent cannot use it, to say so), checks validity dates
and that the key belongs to the certificate, and then builds the same ``ssl`` context the
uplink builds, so what passes here is what ``run`` loads. Every problem is one line naming the
file as the caller labels it (``mqtt.tls.cert`` in a config, ``--cert`` in activation). It
does not probe the broker (agent.brokerprobe), write configs (agent.activation) nor publish
(agent.uplink).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from agent.config import Config, TlsConfig
from agent.errors import AgentError

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
