"""Dealer activation: `spime-agent activate` turns the integrator's base config into the car's.

Takes the vehicle's own settings (VIN, primary SIM, broker, TLS material, the owner's consent)
from flags, or asks for the missing ones on a terminal, checks all of them before writing
anything, and writes ``--config`` = ``--base`` + [vehicle] vin + [mqtt] host/port/tls +
[modems] primary + [consent] granted. Checks: the VIN (agent.vin), the consent categories, the
TLS files (CA parses; client certificate and key parse and match; nothing expired), the final
config loads and passes ``agent.daemon.prepare`` (DBCs, signals), the chosen SIM is present and
ready (one probe of every modem), and the broker completes a TLS handshake and answers an MQTT
CONNECT when it is reachable (``--offline`` skips that). Problems come out one line each, with a
non-zero exit, and nothing is written.

Writing: temporary file in the config's folder, fsync, rename, fsync of the folder; mode 0600,
owned by the ``spime-agent`` user when run as root and that user exists; the previous file kept
as ``<config>.bak``. A vehicle counts as activated when the config exists and has a [vehicle]
table: changing it needs ``--force``; the same settings again change nothing (exit 0). TLS files
are referenced by their absolute paths, not copied: the dealer (or the provisioning tool) puts
them where they stay and where the service user can read them. Relative paths in the base (DBC
files, logs, outbox, status) are made absolute when the config goes to another folder.

Consent is only recorded here; the data path enforces it. Enabling and starting the service is
left to the dealer (the summary prints the command).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import datetime as dt
import math
import os
import pwd
import re
import socket
import ssl
import struct
import tempfile
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from agent.config import COARSE_LOCATION, CONSENT_CATEGORIES, Config, parse_config
from agent.errors import AgentError
from agent.vin import normalize, uses_check_digit, vin_problems

if TYPE_CHECKING:  # the catalog pulls in cantools: the CLI imports this module for its flags
    from agent.catalog import Catalog

DEFAULT_BASE = Path("/etc/spime-agent/base.toml")
DEFAULT_CONFIG = Path("/etc/spime-agent/agent.toml")
SERVICE_USER = "spime-agent"
COARSE = COARSE_LOCATION
GRANTABLE = (*CONSENT_CATEGORIES, COARSE)
DEFAULT_PORT = 8883
BROKER_TIMEOUT = 10.0
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

HEADER = (
    "# Written by `spime-agent activate` from {base}.\n"
    "# Change the base or the vehicle's settings and activate again (with --force);\n"
    "# hand edits are kept only until the next activation.\n"
)


# -- TOML writing ----------------------------------------------------------------------------
# The standard library reads TOML but cannot write it. This covers what configs hold: tables,
# arrays of tables, strings, integers, floats, booleans and arrays (inline tables inside them).

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else toml_string(k)


def _value(v: Any) -> str:
    # bool before int: bool is an int subclass.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, Path):
        return toml_string(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise ValueError(f"cannot write a {type(v).__name__} value as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _emit(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    for k, v in table.items():
        if not isinstance(v, Mapping) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if isinstance(v, Mapping):
            sub = (*path, _key(k))
            lines += ["", f"[{'.'.join(sub)}]"]
            _emit(lines, sub, v)
    for k, v in table.items():
        if _is_table_array(v):
            sub = (*path, _key(k))
            for item in v:
                lines += ["", f"[[{'.'.join(sub)}]]"]
                _emit(lines, sub, item)


def dumps_toml(data: Mapping[str, Any]) -> str:
    """TOML text for ``data``; ``tomllib.loads`` of it gives ``data`` back."""
    lines: list[str] = []
    _emit(lines, (), data)
    return "\n".join(lines).lstrip("\n") + "\n"


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


def _readable_by(path: Path, user: pwd.struct_passwd) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & 0o400)
    if st.st_gid in groups:
        return bool(st.st_mode & 0o040)
    return bool(st.st_mode & 0o004)


def _service_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None


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


# -- SIMs ------------------------------------------------------------------------------------
def sim_check(cfg: Config, primary: str) -> tuple[list[str], str]:
    """Probe the modems once; problems with the chosen SIM, and a line describing it."""
    from agent.modem.command import modems_report

    names = [m.name for m in cfg.modem]
    report = modems_report(cfg)
    by_name = {r.name: r for r in report.reports}
    rep = by_name.get(primary) or next((r for r in report.reports if r.iccid == primary), None)
    if rep is None:
        seen = ", ".join(
            f"{r.name} {r.iccid or ('no SIM' if r.responding else 'not answering')}"
            for r in report.reports
        )
        return [f"--primary {primary}: no modem named so and no SIM with that ICCID ({seen})"], ""
    label = f"{rep.name} (ICCID {rep.iccid or '?'}, port {rep.port})"
    if not rep.responding:
        return [f"--primary {primary}: modem {rep.name} does not answer: {rep.error}"], label
    mc = cfg.modem[names.index(rep.name)]
    if rep.sim == "pin" and mc.pin:
        return [], f"{label}: PIN-locked, the agent enters the configured PIN"
    if rep.sim != "ready":
        return [f"--primary {primary}: the SIM in {rep.name} is not ready: {rep.sim}"], label
    sig = f", {rep.signal_dbm:g} dBm" if rep.signal_dbm is not None else ""
    return [], f"{label}: SIM ready, {rep.registration}{sig}"


# -- inputs ----------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vin", help="the vehicle's 17-character VIN")
    p.add_argument("--primary", help="the primary SIM: a [[modem]] name of the base, or an ICCID")
    p.add_argument("--host", help="MQTT broker host name")
    p.add_argument("--port", type=int, help=f"MQTT broker TLS port (default {DEFAULT_PORT})")
    p.add_argument("--ca", type=Path, help="CA certificate(s) that signed the broker's certificate")
    p.add_argument("--cert", type=Path, help="the car's client certificate (PEM)")
    p.add_argument("--key", type=Path, help="the client certificate's private key (PEM)")
    p.add_argument(
        "--consent",
        help=f"owner's consent: comma-separated of {', '.join(GRANTABLE)}, or none",
    )
    p.add_argument(
        "--coarse-location",
        action="store_true",
        help="grant location only at reduced precision ([consent] coarse_grid degrees)",
    )
    p.add_argument("--base", type=Path, default=DEFAULT_BASE, help=f"default {DEFAULT_BASE}")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    p.add_argument("--offline", action="store_true", help="do not contact the broker")
    p.add_argument("--force", action="store_true", help="change an activated vehicle")
    p.add_argument("--dry-run", action="store_true", help="show the config, write nothing")


@dataclass(frozen=True)
class Choices:
    vin: str
    primary: str | None
    host: str
    port: int
    ca: Path
    cert: Path
    key: Path
    granted: tuple[str, ...]


def _ask(out: TextIO, question: str, default: str | None) -> str | None:
    out.write(f"{question}{f' [{default}]' if default else ''}: ")
    out.flush()
    try:
        answer = input().strip()
    except EOFError:
        answer = ""
    return answer or default


def parse_consent(text: str, coarse: bool) -> tuple[tuple[str, ...], list[str]]:
    """Granted categories in canonical order, and problems."""
    items = [c.strip().lower() for c in text.split(",") if c.strip()]
    problems = []
    if "none" in items:
        if len(items) > 1:
            problems.append("--consent: none cannot be combined with categories")
        items = []
    bad = [c for c in items if c not in GRANTABLE]
    if bad:
        problems.append(
            f"--consent: unknown categories {', '.join(bad)} (choose from {', '.join(GRANTABLE)}"
            ", or none)"
        )
    chosen = set(items) | ({COARSE} if coarse else set())
    if {"location", COARSE} <= chosen:
        problems.append("--consent: grant either location or coarse location, not both")
    return tuple(c for c in GRANTABLE if c in chosen), problems


def gather(
    args: argparse.Namespace, out: TextIO, stdin_is_tty: bool, modem_names: list[str]
) -> tuple[Choices | None, list[str]]:
    """Flags first; on a terminal, ask for the missing ones; else each missing one is a problem."""
    problems: list[str] = []

    def get(
        flag: str, question: str, default: str | None = None, batch_default: bool = False
    ) -> str | None:
        # Only a technical default (the port) is taken silently; the vehicle's identity, its
        # SIM and the owner's consent are always an explicit choice.
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            return str(value)
        if stdin_is_tty:
            answer = _ask(out, question, default)
            if answer:
                return answer
        elif batch_default and default is not None:
            return default
        problems.append(
            f"missing --{flag}" + ("" if stdin_is_tty else " (stdin is not a terminal)")
        )
        return None

    vin = get("vin", "Vehicle VIN")
    primary = None
    if modem_names:
        primary = get(
            "primary", f"Primary SIM ({', '.join(modem_names)} or an ICCID)", modem_names[0]
        )
    elif args.primary is not None:
        problems.append(f"--primary {args.primary}: the base config has no [[modem]]")
    host = get("host", "MQTT broker host")
    port_text = get("port", "MQTT broker port", str(DEFAULT_PORT), batch_default=True)
    ca = get("ca", "CA certificate file")
    cert = get("cert", "Client certificate file")
    key = get("key", "Client key file")
    consent_text = get(
        "consent", f"Owner's consent ({', '.join(GRANTABLE)}; comma-separated, or none)", "none"
    )

    if vin is not None:
        vin = normalize(vin)
        problems += vin_problems(vin)
    port = 0
    if port_text is not None:
        try:
            port = int(port_text)
            if not 1 <= port <= 65535:
                raise ValueError
        except ValueError:
            problems.append(f"--port {port_text}: not a port number (1-65535)")
    if host is not None and (not host or "://" in host or any(c.isspace() for c in host)):
        problems.append(f"--host {host!r}: a host name or address only (no scheme, no spaces)")
    granted: tuple[str, ...] = ()
    if consent_text is not None:
        granted, consent_problems = parse_consent(consent_text, args.coarse_location)
        problems += consent_problems
    files = [Path(f).expanduser().absolute() for f in (ca, cert, key) if f]
    if len(files) == 3:
        problems += tls_problems(files[0], files[1], files[2])
    if problems or vin is None or host is None or len(files) != 3 or consent_text is None:
        return None, problems
    ca_path, cert_path, key_path = files
    return Choices(vin, primary, host, port, ca_path, cert_path, key_path, granted), []


# -- building the config ---------------------------------------------------------------------
def _absolute(value: Any, base_dir: Path) -> Any:
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return str(base_dir / value)
    return value


def _rebase_paths(data: dict[str, Any], base_dir: Path) -> None:
    """Make the base's relative paths absolute (they were relative to the base's folder)."""
    for bus in data.get("bus", []) if isinstance(data.get("bus"), list) else []:
        if isinstance(bus, dict):
            if isinstance(bus.get("dbc"), list):
                bus["dbc"] = [_absolute(p, base_dir) for p in bus["dbc"]]
            if "log" in bus:
                bus["log"] = _absolute(bus["log"], base_dir)
    for table in ("outbox", "status"):
        section = data.get(table)
        if isinstance(section, dict) and "path" in section:
            section["path"] = _absolute(section["path"], base_dir)


def _table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return dict(value) if isinstance(value, dict) else {}


def build_config(
    base: dict[str, Any], c: Choices, base_dir: Path, config_dir: Path
) -> dict[str, Any]:
    """The final config's data: the base with the vehicle's settings put in."""
    data = copy.deepcopy(base)
    if base_dir.resolve() != config_dir.resolve():
        _rebase_paths(data, base_dir)
    vehicle = data.pop("vehicle", None)
    vehicle = dict(vehicle) if isinstance(vehicle, dict) else {}
    vehicle["vin"] = c.vin
    mqtt = _table(data, "mqtt")
    tls = _table(mqtt, "tls")
    data["mqtt"] = {
        **mqtt,
        "host": c.host,
        "port": c.port,
        "tls": {**tls, "ca": str(c.ca), "cert": str(c.cert), "key": str(c.key)},
    }
    if c.primary is not None:
        modems = _table(data, "modems")
        data["modems"] = {**modems, "primary": c.primary}
    consent = _table(data, "consent")
    data["consent"] = {
        "granted": list(c.granted),
        **{k: v for k, v in consent.items() if k != "granted"},
    }
    return {"vehicle": vehicle, **data}


def _load_base(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")), []
    except FileNotFoundError:
        return None, [f"--base {path}: no such file (the integrator's base config)"]
    except OSError as err:
        return None, [f"--base {path}: cannot read: {err.strerror or err}"]
    except UnicodeDecodeError as err:
        return None, [f"--base {path}: not UTF-8 text (byte {err.start})"]
    except tomllib.TOMLDecodeError as err:
        return None, [f"--base {path}: TOML syntax error: {err}"]


def _existing(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(parsed current config or None, a problem reading it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"--config {path}: exists but cannot be read ({err}); --force replaces it"
    try:
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as err:
        return None, f"--config {path}: exists but is not valid TOML ({err}); --force replaces it"


# -- writing ---------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data`` so that a power cut leaves the old or the new file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def backup_path(config: Path) -> Path:
    return config.with_name(config.name + ".bak")


# -- the command -----------------------------------------------------------------------------
def _summary(
    cfg: Config, catalog: Catalog, c: Choices, sim_line: str, notes: list[str]
) -> list[str]:
    assert cfg.mqtt is not None and cfg.consent is not None
    lines = [
        f"vehicle {c.vin}"
        + ("" if uses_check_digit(c.vin) else " (check digit not used in its region)"),
        f"broker {c.host}:{c.port} over TLS (CA {c.ca}, certificate {c.cert})",
    ]
    lines += [f"  {n}" for n in notes]
    if sim_line:
        lines.append(f"primary SIM {sim_line}")
    elif cfg.modem:
        lines.append(f"primary SIM {c.primary}")
    else:
        lines.append("no modems configured: the car uses the system's network")
    lines.append(f"consent granted: {', '.join(c.granted) or 'nothing'}")
    counts = Counter((s.category or "uncategorized", s.coarse) for s in catalog.selected)
    sent = ", ".join(
        f"{cat} {n}" + (f" (coarse, {cfg.consent.coarse_grid:g}-degree grid)" if coarse else "")
        for (cat, coarse), n in sorted(counts.items())
    )
    lines.append(f"the car will send {len(catalog.selected)} signals: {sent or 'none'}")
    if catalog.excluded:
        held = ", ".join(f"{why}: {n}" for why, n in sorted(catalog.excluded.items()))
        lines.append(f"not sent: {held}")
    return lines


def run_activate(args: argparse.Namespace, out: TextIO, err: TextIO, stdin_is_tty: bool) -> int:
    """`spime-agent activate`: 0 activated (or already so), 2 invalid input or refused."""
    from agent.daemon import prepare

    def fail(problems: list[str]) -> int:
        for p in problems:
            err.write(p + "\n")
        err.write("activation: nothing written\n")
        return EXIT_INVALID

    config_path: Path = args.config
    base_path: Path = args.base
    base, problems = _load_base(base_path)
    modem_names = [str(m.get("name")) for m in (base or {}).get("modem", []) if isinstance(m, dict)]
    choices, input_problems = gather(args, out, stdin_is_tty, modem_names)
    problems += input_problems
    if not config_path.parent.is_dir():
        problems.append(f"--config {config_path}: folder {config_path.parent} does not exist")
    if problems or base is None or choices is None:
        return fail(problems)

    try:
        data = build_config(base, choices, base_path.parent, config_path.parent)
        text = HEADER.format(base=base_path) + "\n" + dumps_toml(data)
        # Problems are named after the base: that is the file the integrator fixes.
        cfg = parse_config(
            tomllib.loads(text), base=config_path.absolute().parent, source=str(base_path)
        ).model_copy(update={"source": base_path})
        catalog = prepare(cfg)
    except (AgentError, ValueError) as e:
        problems = list(e.problems) if isinstance(e, AgentError) else [f"{base_path}: {e}"]
        return fail(problems)

    sim_line = ""
    if choices.primary is not None:
        sim_problems, sim_line = sim_check(cfg, choices.primary)
        problems += sim_problems
    notes: list[str] = []
    if args.offline:
        notes.append("--offline: the broker was not contacted")
    elif not problems:
        broker = check_broker(cfg)
        problems += broker.problems
        notes += broker.notes

    current, current_problem = _existing(config_path)
    same = current is not None and current == tomllib.loads(text)
    if current_problem and not args.force:
        problems.append(current_problem)
    elif current is not None and "vehicle" in current and not same and not args.force:
        vin = current["vehicle"].get("vin", "?") if isinstance(current["vehicle"], dict) else "?"
        problems.append(
            f"--config {config_path}: vehicle {vin} is already activated with other settings; "
            "use --force to change them"
        )
    if problems:
        return fail(problems)

    summary = _summary(cfg, catalog, choices, sim_line, notes)
    if args.dry_run:
        out.write(text + "\n" + "\n".join(summary) + "\n")
        out.write(f"dry run: {config_path} not written\n")
        return EXIT_OK
    if same:
        out.write("\n".join(summary) + "\n")
        out.write(f"already activated with these settings: {config_path} unchanged\n")
        return EXIT_OK

    user = _service_user()
    owner = (user.pw_uid, user.pw_gid) if user is not None and os.geteuid() == 0 else None
    if user is not None:
        for what, path in (("--ca", choices.ca), ("--cert", choices.cert), ("--key", choices.key)):
            if not _readable_by(path, user):
                err.write(f"warning: {what} {path}: user {SERVICE_USER} cannot read it\n")
    had_file = config_path.exists()
    try:
        if had_file:
            write_atomic(backup_path(config_path), config_path.read_bytes(), 0o600, owner)
        write_atomic(config_path, text.encode(), 0o600, owner)
    except OSError as e:
        err.write(f"--config {config_path}: cannot write: {e.strerror or e}\n")
        return EXIT_FAILED
    out.write("\n".join(summary) + "\n")
    kept = f" (previous kept as {backup_path(config_path)})" if had_file else ""
    out.write(f"activated: wrote {config_path}{kept}\n")
    out.write(f"next: systemctl enable --now {SERVICE_USER} (or systemctl reload {SERVICE_USER})\n")
    return EXIT_OK
