"""The ``spime-agent`` command: argument parsing, logging set-up, output and exit codes.

The only module that prints and the only one that configures logging. Exit codes: 0 success,
1 internal error, 2 bad input (config, DBC, schema, update, log file), 3 drain timeout (updates
kept in the outbox for the next run).
"""

from __future__ import annotations

import argparse
import decimal
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import AgentError, ConfigError, InputError

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger("agent")


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n")
    sys.stdout.flush()


def cmd_check(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.daemon import prepare
    from agent.errors import ConfigError
    from agent.tlscheck import config_tls_problems

    cfg = load_config(args.config)
    if args.list:
        return _list_signals(cfg)
    # Load what `run` loads: the TLS files too, and report them with the DBC problems at once.
    tls = config_tls_problems(cfg)
    try:
        catalog = prepare(cfg)
    except ConfigError as err:
        raise ConfigError(*tls, *err.problems) from None
    if tls:
        raise ConfigError(*tls)
    for w in catalog.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"config {args.config}: OK (vin {cfg.vehicle.vin})")
    for bp in catalog.buses:
        b = bp.config
        where = (
            f"replay {b.log} (speed {b.speed or 'max'})"
            if b.is_replay
            else (f"{b.interface} {b.channel}")
        )
        nf = "no kernel filter" if bp.can_filters is None else f"{len(bp.can_filters)} filters"
        sigs = sum(len(m.signals) for m in bp.messages.values())
        print(
            f"  bus {b.name}: {where}; {len(bp.messages)} messages, {sigs} signals selected; {nf}"
        )
    for f in catalog.dbc_files:
        lenient = f" ({len(f.warnings)} defects loaded leniently)" if f.warnings else ""
        print(f"  dbc {f.path}: {len(f.messages)} messages{lenient}")
    if catalog.excluded:
        why = ", ".join(f"{reason} ({n})" for reason, n in sorted(catalog.excluded.items()))
        print(f"  left out by the owner's consent: {why}")
    if cfg.mqtt is not None:
        m, tls_cfg = cfg.mqtt, cfg.mqtt.tls_config
        how = "plain TCP"
        if tls_cfg is not None:
            files = [
                f"{k} {v}" for k, v in (("CA", tls_cfg.ca), ("certificate", tls_cfg.cert)) if v
            ]
            how = f"TLS ({', '.join(files) or 'system CAs'})"
        print(f"  mqtt {m.host}:{m.port}: {how}")
    if cfg.consent is not None:
        print(f"  consent granted: {', '.join(cfg.consent.granted) or 'nothing'}")
    from agent.gnss_wiring import describe

    gnss = describe(cfg, catalog)
    if gnss is not None:
        print(f"  {gnss}")
    from agent.canposition import describe as describe_position

    position = describe_position(cfg, catalog)
    if position is not None:
        print(f"  {position}")
    events = sum(1 for s in catalog.selected if s.policy.event)
    print(
        f"  {catalog.message_count} messages in DBC files, {len(catalog.selected)} signals "
        f"selected ({events} events), schema {catalog.schema.id}"
    )
    return 0


def _list_signals(cfg: Config) -> int:
    """`check --list`: every Message.Signal of the config's buses, one per line; with several
    buses each line names its bus (bus/Message.Signal, as wire names do)."""
    from agent.catalog import load_dbcs, signal_names

    dbcs = load_dbcs(cfg)
    for f in {id(f): f for fs in dbcs.values() for f in fs}.values():
        for w in f.warnings:
            print(f"warning: {w}", file=sys.stderr)
    several = len(cfg.bus) > 1
    for bus, name in signal_names(cfg, dbcs):
        sys.stdout.write(f"{bus}/{name}\n" if several else f"{name}\n")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from agent.atomicfile import write_atomic
    from agent.config import load_config
    from agent.daemon import prepare

    catalog = prepare(load_config(args.config))
    text = catalog.schema.dumps(indent=2) + "\n"
    if args.out:
        try:
            write_atomic(Path(args.out), text.encode(), mode=0o644)
        except OSError as err:
            raise InputError(f"--out {args.out}: cannot write: {err.strerror or err}") from None
    else:
        sys.stdout.write(text)
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from agent.errors import SchemaError
    from agent.spime import Schema, decode_update

    try:
        schema = Schema.from_json(Path(args.schema).read_bytes(), where=args.schema)
    except OSError as err:
        raise SchemaError(f"{args.schema}: cannot read schema: {err.strerror or err}") from None
    if args.file in (None, "-"):
        payload, where = sys.stdin.buffer.read(), "stdin"
    else:
        try:
            payload, where = Path(args.file).read_bytes(), args.file
        except OSError as err:
            raise InputError(f"{args.file}: cannot read: {err.strerror or err}") from None
    try:
        _emit_json(decode_update(payload, schema))
    except AgentError as err:
        raise type(err)(*(f"{where}: {p}" for p in err.problems)) from None
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.daemon import Agent, effective_config, prepare

    base = load_config(args.config)
    cfg = effective_config(base)
    catalog = prepare(cfg)
    for w in catalog.warnings:
        log.warning("%s", w)
    if not args.dry_run and (cfg.mqtt is None or cfg.outbox is None):
        raise ConfigError(
            f"{args.config}: publishing needs [mqtt] and [outbox] sections "
            "(or use --dry-run to print updates instead)"
        )
    agent = Agent(
        cfg,
        catalog,
        dry_run=args.dry_run,
        on_json=_emit_json if args.dry_run else None,
        drain_timeout=args.drain_timeout,
        base_cfg=base,
    )

    def _stop(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        agent.request_stop()

    def _reload(_signum: int, _frame: Any) -> None:
        log.info("received SIGHUP: reloading %s", args.config)
        agent.request_reload()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _reload)
    try:
        result = agent.run()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for p in result.problems:
        print(p, file=sys.stderr)
    return result.exit_code


def _decimals(x: int | float) -> int:
    """Digits after the point of a scale or offset as the DBC writes it (0.1 -> 1, 0.25 -> 2)."""
    if isinstance(x, int) or not math.isfinite(x) or x.is_integer():
        return 0
    exponent = decimal.Decimal(repr(x)).as_tuple().exponent
    return min(-exponent, 12) if isinstance(exponent, int) and exponent < 0 else 0


def _brief_value(value: Any, sig: Any) -> str:
    """A scaled integer signal at the precision its scale and offset imply (0.6, not
    0.6000000000000001); labels, integers and IEEE float signals as they are."""
    if sig is None or sig.kind != "int" or not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    return f"{value:.{max(_decimals(sig.scale), _decimals(sig.offset))}f}"


def _emit_brief(obj: dict[str, Any], schema: Any = None) -> None:
    """One human line per update: who, which, how many samples, and the first few values."""
    samples = obj["samples"]
    by_name = {s.name: s for s in schema.signals} if schema is not None else {}
    head = ", ".join(
        f"{s['signal']}={s.get('nonfinite') or _brief_value(s['value'], by_name.get(s['signal']))}"
        for s in samples[:3]
    )
    more = f", ... (+{len(samples) - 3})" if len(samples) > 3 else ""
    kind = "snapshot" if obj.get("snapshot") else "update"
    if obj.get("trigger"):
        kind = f"capture {obj['trigger']['name']}"
    span = ""
    if samples:
        t0, t1 = samples[0]["t"], samples[-1]["t"]
        span = f" {time.strftime('%H:%M:%S', time.gmtime(t0))}Z +{t1 - t0:.1f}s"
    sys.stdout.write(
        f"{obj['vin']} boot {obj['boot'][:8]} seq {obj['seq']:>5} {kind}: "
        f"{len(samples):>4} samples{span}: {head}{more}\n"
    )
    sys.stdout.flush()


def cmd_modems(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.modem.command import modems_report, render_json, render_table

    cfg = load_config(args.config)
    if not cfg.modem:
        raise ConfigError(f"{args.config}: no [[modem]] entries to probe")
    report = modems_report(cfg)
    sys.stdout.write((render_json(report) if args.json else render_table(report)) + "\n")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    from agent.activation import run_activate

    return run_activate(args, sys.stdout, sys.stderr, sys.stdin.isatty())


def cmd_status(args: argparse.Namespace) -> int:
    from agent.statusfile import run_status

    return run_status(args.file, sys.stdout, args.json)


def cmd_listen(args: argparse.Namespace) -> int:
    from agent.listen import Listener
    from agent.mqttclient import ClientOptions

    opts = ClientOptions.from_args(args)

    def brief(update: dict[str, Any]) -> None:
        _emit_brief(update, listener.schema(update["schema"]))

    listener = Listener(
        opts.host,
        opts.port,
        vin=args.vin,
        prefix=args.prefix,
        tls=opts.tls,
        username=opts.username,
        password=opts.password,
        protocol=opts.protocol,
        on_update=brief if args.brief else _emit_json,
    )

    def _stop(_signum: int, _frame: Any) -> None:
        listener.stop()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        n = listener.run(count=args.count, timeout=args.timeout)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if args.count is not None and n < args.count:
        print(f"listen: {n} of {args.count} updates before the timeout", file=sys.stderr)
        return 1
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent.atomicfile import write_atomic
    from agent.control.envelope import generate_key, key_id, private_pem, public_pem

    out: Path = args.out
    pub = out.with_name(out.name + ".pub")
    existing = [str(p) for p in (out, pub) if p.exists()]
    if existing and not args.force:
        raise InputError(f"--out {out}: {', '.join(existing)} exists; use --force to replace")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    key = generate_key()
    try:
        write_atomic(out, private_pem(key), mode=0o600)
        write_atomic(pub, public_pem(key.public_key()), mode=0o644)
    except OSError as err:
        raise InputError(f"--out {out}: cannot write: {err.strerror or err}") from None
    print(
        f"private key {out} (keep it secret), public key {pub}, key id {key_id(key.public_key())}"
    )
    return 0


EXIT_NO_ANSWER = 3
RETAINED_PLAN_TTL = 90 * 86400.0


def _command_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.action == "plan":
        try:
            doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except OSError as err:
            raise InputError(f"{args.file}: cannot read plan: {err.strerror or err}") from None
        except (UnicodeDecodeError, ValueError) as err:
            raise InputError(f"{args.file}: not a JSON plan: {err}") from None
        if not isinstance(doc, dict):
            raise InputError(f"{args.file}: a plan is a JSON object")
        return {"plan": doc}
    if args.action == "consent":
        out: dict[str, Any] = {}
        if args.revoke:
            out["revoke"] = args.revoke
        if args.grant:
            out["grant"] = args.grant
        if args.add_zone:
            from agent.activation import parse_zones

            zones, problems = parse_zones(args.add_zone)
            if problems:
                raise InputError(problems[0].replace("--privacy-zone", "--add-zone"))
            out["add_zones"] = zones
        if args.remove_zone:
            out["remove_zones"] = args.remove_zone
        if not out:
            raise InputError(
                "consent: name categories with --revoke CAT... and/or --grant CAT..., or zones "
                "with --add-zone NAME=LAT,LON,RADIUS / --remove-zone NAME"
            )
        return out
    return {}


def cmd_command(args: argparse.Namespace) -> int:
    from agent.control.envelope import load_private_key, seal
    from agent.mqttclient import BrokerError, ClientOptions
    from agent.sender import CommandSender

    key = load_private_key(args.key)
    now = int(time.time() * 1000)
    if args.ttl is None:
        # A retained plan is desired state that a car offline for weeks must still accept.
        args.ttl = RETAINED_PLAN_TTL if getattr(args, "retain", False) else 60.0
    expires = now + int(args.ttl * 1000)
    cid, envelope = seal(
        key,
        vin=args.vin,
        command=args.action,
        args=_command_args(args),
        issued=now,
        expires=expires,
    )
    opts = ClientOptions.from_args(args, tls_key="client_key")
    sender = CommandSender(opts, vin=args.vin, prefix=args.prefix)
    try:
        if getattr(args, "retain", False):
            topic = sender.publish_plan(envelope, timeout=args.timeout)
            _emit_json({"id": cid, "status": "published", "topic": topic, "expires": expires})
            return 0
        answer = sender.send(envelope, cid, ttl=args.ttl, timeout=args.timeout)
    except BrokerError as err:
        for line in err.problems:
            print(f"command: {line}", file=sys.stderr)
        return 2  # 1 is the car's refusal: not reaching the broker is another failure
    if answer is None:
        print(f"command {cid}: no answer within {args.timeout:g} s", file=sys.stderr)
        return EXIT_NO_ANSWER
    _emit_json(answer)
    return 0 if answer.get("status") == "ok" else 1


_COMMAND_HELP = "send a signed command to a car and print its answer"


def _add_command_parser(sub: Any) -> None:
    from agent.config import GRANTABLE
    from agent.mqttclient import add_client_arguments

    c = sub.add_parser("command", help=_COMMAND_HELP)
    add_client_arguments(c, tls_key="--client-key")
    c.add_argument("--vin", required=True)
    c.add_argument("--key", required=True, type=Path, help="the fleet's private command key")
    c.add_argument(
        "--ttl",
        type=float,
        default=None,
        help="seconds until the command expires (default 60; 90 days for plan --retain)",
    )
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    c.add_argument("--prefix", default="spime/v1", help="topic prefix")
    acts = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    acts.add_parser("ping", help="the car's status summary")
    acts.add_parser("snapshot", help="a snapshot of every signal now, as an event")
    acts.add_parser("resend", help="the retained schema and status again")
    acts.add_parser("diag", help="the car's diagnostic trouble codes, read now")
    pl = acts.add_parser("plan", help="apply a collection plan (JSON file)")
    pl.add_argument("file", type=Path)
    pl.add_argument(
        "--retain",
        action="store_true",
        help="publish the signed plan retained on <prefix>/<vin>/plan (desired state picked up "
        "at connect) instead of sending it as a command",
    )
    co = acts.add_parser("consent", help="revoke (or, where allowed, grant) consent categories")
    co.add_argument("--revoke", nargs="+", metavar="CAT", choices=GRANTABLE, default=[])
    co.add_argument("--grant", nargs="+", metavar="CAT", choices=GRANTABLE, default=[])
    co.add_argument(
        "--add-zone",
        action="append",
        metavar="NAME=LAT,LON,RADIUS",
        help="add a privacy zone (always allowed: it makes the car more private)",
    )
    co.add_argument(
        "--remove-zone",
        action="append",
        metavar="NAME",
        help="remove a privacy zone (needs allow_remote_consent on the car)",
    )
    c.set_defaults(func=cmd_command)


# Commands whose flags are defined by modules that load paho, cryptography or tomli_w.
_HEAVY_COMMANDS = ("activate", "listen", "command")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command line, the flags of the commands in _HEAVY_COMMANDS
    only when it names them (``run`` starts without loading what they need)."""
    words = None if argv is None else set(argv)

    def wanted(command: str) -> bool:
        return words is None or command in words

    p = argparse.ArgumentParser(
        prog="spime-agent",
        description="MQTT edge agent: CAN frames -> DBC signals -> compact spime updates",
    )
    p.add_argument("--version", action="version", version=f"spime-agent {__version__}")
    p.add_argument(
        "--log-level",
        default=os.environ.get("SPIME_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="validate a config and its DBC files, print a summary")
    c.add_argument("--config", required=True, type=Path)
    c.add_argument(
        "--list",
        action="store_true",
        help="list every Message.Signal of the config's DBC files (for [[signal]] match)",
    )
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="run the agent")
    r.add_argument("--config", required=True, type=Path)
    r.add_argument(
        "--dry-run", action="store_true", help="print updates as JSON lines instead of publishing"
    )
    r.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="S",
        help="with finite replays: give up waiting for broker acknowledgements after S seconds "
        "(exit 3; the rest stays in the outbox)",
    )
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("schema", help="print the spime schema a config produces")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--out", help="write to this file instead of stdout")
    s.set_defaults(func=cmd_schema)

    d = sub.add_parser("decode", help="decode a binary spime update to JSON")
    d.add_argument("--schema", required=True, help="schema JSON file (spime-agent schema)")
    d.add_argument("file", nargs="?", help="update file (default: stdin)")
    d.set_defaults(func=cmd_decode)
    m = sub.add_parser("modems", help="probe the SIM modems once and show which one is chosen")
    m.add_argument("--config", required=True, type=Path)
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(func=cmd_modems)

    a = sub.add_parser("activate", help="dealer activation: write the car's config from the base")
    if wanted("activate"):
        from agent.activation import add_arguments

        add_arguments(a)
    a.set_defaults(func=cmd_activate)

    st = sub.add_parser("status", help="summarise the running agent's status file")
    st.add_argument("--file", type=Path, default=Path("/run/spime-agent/status.json"))
    st.add_argument("--json", action="store_true", help="print the status document")
    st.set_defaults(func=cmd_status)

    li = sub.add_parser("listen", help="subscribe, decode and print updates (backend side)")
    if wanted("listen"):
        from agent.mqttclient import add_client_arguments

        add_client_arguments(li)
        li.add_argument("--vin", help="only this vehicle (default: every vehicle)")
        li.add_argument("--prefix", default="spime/v1", help="topic prefix")
        li.add_argument("--count", type=int, help="exit after this many updates")
        li.add_argument("--timeout", type=float, help="exit after this many seconds")
        li.add_argument("--brief", action="store_true", help="one human line per update, not JSON")
    li.set_defaults(func=cmd_listen)

    kg = sub.add_parser("keygen", help="make an Ed25519 command key pair (fleet side)")
    kg.add_argument("--out", required=True, type=Path, help="private key file; public key .pub")
    kg.add_argument("--force", action="store_true", help="replace existing key files")
    kg.set_defaults(func=cmd_keygen)
    if wanted("command"):
        _add_command_parser(sub)
    else:
        c = sub.add_parser("command", help=_COMMAND_HELP)
        c.set_defaults(func=cmd_command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except AgentError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # A closed pipe (e.g. `| head`) is the reader's choice, not our failure.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
