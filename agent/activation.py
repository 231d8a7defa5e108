"""Dealer activation: `spime-agent activate` turns the integrator's base config into the car's.

Takes the vehicle's own settings (VIN, primary SIM, broker, TLS material, the owner's consent)
from flags, or asks for the missing ones on a terminal, checks all of them before writing
anything, and writes ``--config`` = ``--base`` + [vehicle] vin + [mqtt] host/port/tls +
[modems] primary + [consent] granted + [privacy] zones (``--privacy-zone``, when given). The
values are validated by the config models that `spime-agent check` uses (agent.config: VIN and
its check digit, host, port, consent categories, zone ranges), on the very text that will be
written, so the two never disagree; a model error about a value the dealer gave is named by its
flag (``--port: ...``). Then: the TLS files
(agent.tlscheck: parse, key matches certificate, nothing expired, loadable by the uplink), the
final config passes ``agent.daemon.prepare`` (DBCs, signals), the chosen SIM is present and
ready (one probe of every modem), and the broker completes a TLS handshake and answers an MQTT
CONNECT when it is reachable (``--offline`` skips that). Problems come out one line each, with
a non-zero exit, and nothing is written.

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
import copy
import os
import pwd
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import tomli_w
from pydantic import ValidationError

from agent.atomicfile import write_atomic
from agent.brokerprobe import check_broker
from agent.config import (
    COARSE_LOCATION,
    GRANTABLE,
    Config,
    TlsConfig,
    error_message,
    field_path,
)
from agent.errors import AgentError
from agent.tlscheck import tls_problems
from agent.vin import uses_check_digit

if TYPE_CHECKING:  # the catalog pulls in cantools: the CLI imports this module for its flags
    from agent.catalog import Catalog

DEFAULT_BASE = Path("/etc/spime-agent/base.toml")
DEFAULT_CONFIG = Path("/etc/spime-agent/agent.toml")
SERVICE_USER = "spime-agent"
COARSE = COARSE_LOCATION
DEFAULT_PORT = 8883
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

HEADER = (
    "# Written by `spime-agent activate` from {base}.\n"
    "# Change the base or the vehicle's settings and activate again (with --force);\n"
    "# hand edits are kept only until the next activation.\n"
)


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
    p.add_argument("--port", help=f"MQTT broker TLS port (default {DEFAULT_PORT})")
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
    p.add_argument(
        "--command-key",
        type=Path,
        help="the fleet's Ed25519 public command key (PEM): enables signed remote commands",
    )
    p.add_argument(
        "--allow-remote-consent",
        action="store_true",
        help="let the backend grant consent categories too (revoking is always allowed)",
    )
    p.add_argument(
        "--privacy-zone",
        action="append",
        metavar="NAME=LAT,LON,RADIUS",
        help="a place where no position is stored or sent (degrees, metres); repeatable",
    )
    p.add_argument("--base", type=Path, default=DEFAULT_BASE, help=f"default {DEFAULT_BASE}")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    p.add_argument("--offline", action="store_true", help="do not contact the broker")
    p.add_argument("--force", action="store_true", help="change an activated vehicle")
    p.add_argument("--dry-run", action="store_true", help="show the config, write nothing")


@dataclass(frozen=True)
class Choices:
    """The vehicle's settings as the dealer gave them (None: missing); validated later, by the
    config models, once they are in the config text."""

    vin: str | None
    primary: str | None
    host: str | None
    port: int | str | None
    ca: Path | None
    cert: Path | None
    key: Path | None
    granted: list[str] | None
    command_key: Path | None = None  # [remote] command_key; None: no remote commands
    allow_remote_consent: bool = False
    zones: list[dict[str, Any]] | None = None  # [privacy] zones; None: the base's


def parse_zones(texts: list[str] | None) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """``NAME=LAT,LON,RADIUS`` of each ``--privacy-zone`` as [privacy] zone tables, and syntax
    problems. Ranges and names are the config model's to check."""
    if texts is None:
        return None, []
    zones, problems = [], []
    for text in texts:
        name, sep, rest = text.partition("=")
        parts = rest.split(",")
        try:
            lat, lon, radius = (float(p) for p in parts)
        except ValueError:  # not three numbers
            sep = ""
        if not sep or not name.strip():
            problems.append(
                f"--privacy-zone {text!r}: expected NAME=LAT,LON,RADIUS "
                "(degrees, degrees, metres), e.g. home=48.137,11.575,300"
            )
            continue
        zones.append({"name": name.strip(), "lat": lat, "lon": lon, "radius": radius})
    return zones, problems


def _ask(out: TextIO, question: str, default: str | None) -> str | None:
    out.write(f"{question}{f' [{default}]' if default else ''}: ")
    out.flush()
    try:
        answer = input().strip()
    except EOFError:
        answer = ""
    return answer or default


def parse_consent(text: str, coarse: bool) -> tuple[list[str], list[str]]:
    """The categories the flag names (known ones in canonical order), and syntax problems.
    Whether the categories exist and go together is the config model's to say."""
    items = list(dict.fromkeys(c.strip().lower() for c in text.split(",") if c.strip()))
    problems = []
    if "none" in items:
        if len(items) > 1:
            problems.append("--consent: none cannot be combined with categories")
        items = []
    chosen = [*items, COARSE] if coarse and COARSE not in items else items
    known = [c for c in GRANTABLE if c in chosen]
    return known + [c for c in chosen if c not in GRANTABLE], problems


def _port(text: str) -> int | str:
    # Digits become an integer; anything else goes to the model as written, which refuses it.
    return int(text) if text.strip().isdigit() else text


def gather(
    args: argparse.Namespace, out: TextIO, stdin_is_tty: bool, modem_names: list[str]
) -> tuple[Choices, list[str]]:
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
    port = get("port", "MQTT broker port", str(DEFAULT_PORT), batch_default=True)
    ca, cert, key = (
        Path(f).expanduser().absolute() if f else None
        for f in (
            get("ca", "CA certificate file"),
            get("cert", "Client certificate file"),
            get("key", "Client key file"),
        )
    )
    consent_text = get(
        "consent", f"Owner's consent ({', '.join(GRANTABLE)}; comma-separated, or none)", "none"
    )
    granted = None
    if consent_text is not None:
        granted, consent_problems = parse_consent(consent_text, args.coarse_location)
        problems += consent_problems
    port_value = _port(port) if port is not None else None
    command_key = None
    if args.command_key is not None:
        from agent.control.envelope import load_public_key

        command_key = Path(args.command_key).expanduser().absolute()
        try:
            load_public_key(command_key)
        except AgentError as err:
            problems += [f"--command-key {p}" for p in err.problems]
    elif args.allow_remote_consent:
        problems.append("--allow-remote-consent: needs --command-key (no remote commands without)")
    allow = bool(args.allow_remote_consent)
    zones, zone_problems = parse_zones(getattr(args, "privacy_zone", None))
    problems += zone_problems
    return Choices(
        vin, primary, host, port_value, ca, cert, key, granted, command_key, allow, zones
    ), problems


# The config fields the dealer's flags set, for naming a model error by its flag.
_FLAGS = {
    "vehicle.vin": "--vin",
    "mqtt.host": "--host",
    "mqtt.port": "--port",
    "mqtt.tls.ca": "--ca",
    "mqtt.tls.cert": "--cert",
    "mqtt.tls.key": "--key",
    "consent.granted": "--consent",
    "modems.primary": "--primary",
}


def validate(
    data: dict[str, Any], c: Choices, config_dir: Path, base_path: Path
) -> tuple[Config | None, list[str]]:
    """The final config through the same models as `check`; problems named by flag where the
    dealer gave the value, by the base's field otherwise. Fields the dealer left out were
    already reported as missing."""
    try:
        return Config.model_validate(data, context={"base": config_dir}), []
    except ValidationError as err:
        missing = {
            f for f, v in zip(_FLAGS, (c.vin, c.host, c.port, c.ca, c.cert, c.key,
                                       c.granted, c.primary), strict=True) if v is None
        }  # fmt: skip
        problems = []
        for e in err.errors():
            where = field_path(e["loc"])
            field = where.split("[")[0]
            if field in missing:
                continue
            if field.startswith("privacy.zones") and c.zones is not None:
                problems.append(f"--privacy-zone {_zone_error(where, c.zones)}: {error_message(e)}")
                continue
            if field in _FLAGS:
                problems.append(f"{_FLAGS[field]}: {error_message(e)}")
            else:
                problems.append(f"{base_path}: {where}: {error_message(e)}")
        return None, problems


def _zone_error(where: str, zones: list[dict[str, Any]]) -> str:
    """``privacy.zones[1].lat`` as the dealer wrote it: ``home lat``."""
    index, _, key = where.removeprefix("privacy.zones").partition(".")
    try:
        name = zones[int(index.strip("[]"))]["name"]
    except (ValueError, IndexError):
        return where
    return f"{name} {key}".strip()


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
    if c.vin is not None:
        vehicle["vin"] = c.vin.strip().upper()
    mqtt = _table(data, "mqtt")
    tls = _table(mqtt, "tls")
    files = {k: str(v) for k, v in (("ca", c.ca), ("cert", c.cert), ("key", c.key)) if v}
    given = {k: v for k, v in (("host", c.host), ("port", c.port)) if v is not None}
    data["mqtt"] = {**mqtt, **given, "tls": {**tls, **files}}
    if c.primary is not None:
        modems = _table(data, "modems")
        data["modems"] = {**modems, "primary": c.primary}
    consent = _table(data, "consent")
    data["consent"] = {
        "granted": list(c.granted or ()),
        **{k: v for k, v in consent.items() if k != "granted"},
    }
    if c.zones is not None:
        data["privacy"] = {**_table(data, "privacy"), "zones": c.zones}
    if c.command_key is not None:
        data["remote"] = {
            "command_key": str(c.command_key),
            "allow_remote_consent": c.allow_remote_consent,
        }
    return {"vehicle": vehicle, **data}


def config_text(data: dict[str, Any], base: Path) -> str:
    """The config file as written: a header saying where it came from, then the TOML."""
    return HEADER.format(base=base) + "\n" + tomli_w.dumps(data)


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
def backup_path(config: Path) -> Path:
    return config.with_name(config.name + ".bak")


# -- the command -----------------------------------------------------------------------------
def _summary(
    cfg: Config, catalog: Catalog, primary: str | None, sim_line: str, notes: list[str]
) -> list[str]:
    assert cfg.mqtt is not None and cfg.consent is not None
    m, tls, vin = cfg.mqtt, cfg.mqtt.tls_config, cfg.vehicle.vin
    assert tls is not None
    lines = [
        f"vehicle {vin}"
        + ("" if uses_check_digit(vin) else " (check digit not used in its region)"),
        f"broker {m.host}:{m.port} over TLS (CA {tls.ca}, certificate {tls.cert})",
    ]
    lines += [f"  {n}" for n in notes]
    if sim_line:
        lines.append(f"primary SIM {sim_line}")
    elif cfg.modem:
        lines.append(f"primary SIM {primary}")
    else:
        lines.append("no modems configured: the car uses the system's network")
    lines.append(f"consent granted: {', '.join(cfg.consent.granted) or 'nothing'}")
    counts = Counter((s.category or "uncategorized", s.coarse) for s in catalog.selected)
    sent = ", ".join(
        f"{cat} {n}" + (f" (coarse, {cfg.consent.coarse_grid:g}-degree grid)" if coarse else "")
        for (cat, coarse), n in sorted(counts.items())
    )
    lines.append(f"the car will send {len(catalog.selected)} signals: {sent or 'none'}")
    if cfg.privacy.zones:
        zones = ", ".join(f"{z.name} ({z.radius:g} m)" for z in cfg.privacy.zones)
        lines.append(f"privacy zones: {zones}")
    from agent.gnss_wiring import describe

    gnss = describe(cfg, catalog)
    if gnss is not None:
        lines.append(gnss)
    from agent.canposition import describe as describe_position

    position = describe_position(cfg, catalog)
    if position is not None:
        lines.append(position)
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
    elif config_path.is_dir():
        problems.append(f"--config {config_path}: is a folder; give the config file's path")
    if base is None:
        return fail(problems)

    data = build_config(base, choices, base_path.parent, config_path.parent)
    try:
        text = config_text(data, base_path)
    except (TypeError, ValueError) as e:  # tomli-w refuses what TOML cannot hold
        return fail([*problems, f"{base_path}: cannot write as TOML: {e}"])
    # Validate what will be written, exactly as `check` will read it.
    cfg, model_problems = validate(
        tomllib.loads(text), choices, config_path.absolute().parent, base_path
    )
    problems += model_problems
    if None not in (choices.ca, choices.cert, choices.key):
        assert choices.ca is not None and choices.cert is not None and choices.key is not None
        problems += tls_problems(
            TlsConfig(ca=choices.ca, cert=choices.cert, key=choices.key),
            {"ca": "--ca", "cert": "--cert", "key": "--key"},
        )
    if problems or cfg is None:
        return fail(problems)
    # Problems are named after the base: that is the file the integrator fixes.
    cfg = cfg.model_copy(update={"source": base_path})
    try:
        catalog = prepare(cfg)
    except AgentError as e:
        return fail(list(e.problems))

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

    summary = _summary(cfg, catalog, choices.primary, sim_line, notes)
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
            if path is not None and not _readable_by(path, user):
                err.write(f"warning: {what} {path}: user {SERVICE_USER} cannot read it\n")
    had_file = config_path.exists()
    try:
        if had_file:
            write_atomic(
                backup_path(config_path), config_path.read_bytes(), mode=0o600, owner=owner
            )
        write_atomic(config_path, text.encode(), mode=0o600, owner=owner)
    except OSError as e:
        err.write(f"--config {config_path}: cannot write: {e.strerror or e}\n")
        return EXIT_FAILED
    out.write("\n".join(summary) + "\n")
    kept = f" (previous kept as {backup_path(config_path)})" if had_file else ""
    out.write(f"activated: wrote {config_path}{kept}\n")
    out.write(f"next: systemctl enable --now {SERVICE_USER} (or systemctl reload {SERVICE_USER})\n")
    return EXIT_OK
