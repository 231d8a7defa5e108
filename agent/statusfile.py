"""The status file: the running agent's state as one JSON document, for `spime-agent status`.

The status reporter (agent.statusreport) calls ``write_status`` every ``[status] interval``
seconds; the file is replaced through agent.atomicfile, so a reader never sees half a document
(it lives on a tmpfs, /run, where the helper's fsyncs cost next to nothing). ``run_status``
reads it back and prints a summary for humans (or the document itself as JSON) and says when the
file is too old for the agent to be running. What goes into the document is
agent.statusreport's business; this module only adds when it was written and how often.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agent.atomicfile import write_atomic
from agent.errors import AgentError

# The key this module adds to the document: {"written": wall time, "interval": seconds}.
META = "status_file"
DEFAULT_INTERVAL = 5.0
# A file older than this many intervals means the writer stopped.
STALE_INTERVALS = 3.0
EXIT_OK, EXIT_NOT_RUNNING = 0, 1


def write_status(path: Path, doc: Mapping[str, Any], *, interval: float = DEFAULT_INTERVAL) -> None:
    """Replace ``path`` with ``doc`` as JSON (mode 0644), atomically."""
    path = Path(path)
    body = {**doc, META: {"written": round(time.time(), 3), "interval": interval}}
    data = json.dumps(body, ensure_ascii=False, sort_keys=True, default=str).encode() + b"\n"
    write_atomic(path, data, mode=0o644)  # the status is meant for any local user


@dataclass(frozen=True)
class StatusSnapshot:
    doc: dict[str, Any]
    age: float  # seconds since it was written (negative if the clock went back)
    interval: float

    @property
    def stale(self) -> bool:
        return self.age > STALE_INTERVALS * self.interval


def read_status(path: Path, *, now: float | None = None) -> StatusSnapshot:
    """Read the status file; AgentError with one line when it is missing or unreadable."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise AgentError(
            f"{path}: no status file: the agent is not running, or [status] path is not set"
        ) from None
    except OSError as err:
        raise AgentError(f"{path}: cannot read status file: {err.strerror or err}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AgentError(f"{path}: status file is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise AgentError(f"{path}: status file does not hold a JSON object")
    meta = _section(doc, META)
    written = _number(meta.get("written"), mtime)
    interval = _number(meta.get("interval"), DEFAULT_INTERVAL)
    now = time.time() if now is None else now
    return StatusSnapshot(doc, now - written, interval if interval > 0 else DEFAULT_INTERVAL)


def _number(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _section(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def render(snap: StatusSnapshot, *, now: float | None = None) -> list[str]:
    """The human summary, one line per fact; tolerant of missing sections."""
    doc = snap.doc
    now = time.time() if now is None else now
    lines = []
    if snap.stale:
        lines.append(
            f"AGENT SEEMS NOT TO BE RUNNING: status written {_duration(snap.age)} ago "
            f"(expected every {snap.interval:g}s)"
        )
    elif snap.age < -snap.interval:
        lines.append("status written in the future: the clock changed since")
    started = doc.get("started")
    up = f"  up {_duration(now - started)}" if isinstance(started, int | float) else ""
    lines.append(
        f"vehicle {doc.get('vin', '?')}  agent {doc.get('version', '?')}  "
        f"boot {str(doc.get('boot', '?'))[:8]}{up}  status {_duration(snap.age)} old"
    )

    link = _section(doc, "uplink")
    if link:
        err = f" (last error: {link['last_error']})" if link.get("last_error") else ""
        lines.append(
            f"connection: {link.get('state', '?')}{err}; published {link.get('published', 0)}, "
            f"acked {link.get('acked', 0)}, refused {link.get('refused', 0)}, "
            f"in flight {link.get('in_flight', 0)}"
        )
        retries = link.get("retries")
        if isinstance(retries, int) and retries > 0:
            delay = link.get("retry_delay")
            wait = f"; waiting {delay:g} s" if isinstance(delay, int | float) else ""
            lines.append(
                f"  reconnecting: {retries} failed attempt(s) or dropped connection(s) in a row"
                f"{wait}; {link.get('connects', '?')} connects of {link.get('attempts', '?')} "
                "attempts since start"
            )
    else:
        lines.append("connection: not publishing (no uplink)")

    power = _section(doc, "power")
    if power:
        since = power.get("since")
        ago = f" for {_duration(now - since)}" if isinstance(since, int | float) else ""
        volts = power.get("volts")
        battery = f"; battery {volts:.2f} V" if isinstance(volts, int | float) else ""
        lines.append(
            f"power: {power.get('state', '?')}{ago} ({power.get('reason', 'no reason given')})"
            f"{battery}"
        )

    modems = _section(doc, "modems")
    if modems:
        reason = _section(modems, "reason")
        lines.append(
            f"modem: {modems.get('active') or 'none'} ({reason.get('text', 'no reason given')}); "
            f"primary {modems.get('primary') or '-'}"
        )
        for name, m in sorted(_section(modems, "modems").items()):
            if not isinstance(m, dict):
                continue
            rep = _section(m, "report")
            state = (
                "usable" if m.get("usable") else _section(m, "problem").get("text", "not usable")
            )
            sig = rep.get("signal_dbm")
            lines.append(
                f"  {name}: {state}; SIM {rep.get('sim', '?')}, {rep.get('registration', '?')}"
                + (f", {sig:g} dBm" if isinstance(sig, int | float) else "")
            )

    box = _section(doc, "outbox")
    if box:
        oldest = box.get("oldest_age")
        age = "-" if not isinstance(oldest, int | float) else _duration(oldest)
        lines.append(
            f"outbox: {box.get('rows', 0)} updates, {box.get('bytes', 0)} bytes, oldest {age}; "
            f"evicted {box.get('evicted_telemetry', 0)} telemetry / "
            f"{box.get('evicted_event', 0)} event, expired {box.get('expired', 0)}"
            + (", DISK FULL" if box.get("disk_full") else "")
        )

    pipe = _section(doc, "pipeline")
    if pipe:
        shown = ", ".join(
            f"{k.replace('_', ' ')} {v}"
            for k, v in pipe.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        )
        lines.append(f"counters: {shown}")

    consent = _section(doc, "consent")
    if consent:
        granted = consent.get("granted")
        text = ", ".join(granted) if isinstance(granted, list) and granted else "nothing"
        lines.append(f"consent: granted {text}")

    buses = _section(doc, "buses")
    if buses:
        lines.append("buses: " + ", ".join(f"{k} {v}" for k, v in sorted(buses.items())))
    return lines


def run_status(path: Path, out: TextIO, as_json: bool) -> int:
    """`spime-agent status`: 0 when the agent writes its status, 1 when the file is missing,
    unreadable or stale (then one line says so)."""
    try:
        snap = read_status(path)
    except AgentError as err:
        for line in err.problems:
            out.write(line + "\n")
        return EXIT_NOT_RUNNING
    if as_json:
        out.write(json.dumps(snap.doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    else:
        out.write("\n".join(render(snap)) + "\n")
    return EXIT_NOT_RUNNING if snap.stale else EXIT_OK
