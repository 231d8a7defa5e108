"""End-to-end helpers: publishing configs for demo drives, the real ``spime-agent run`` as a
subprocess, a read-only look into its SQLite outbox, and a subscriber that keys updates by
(boot, seq).

Nothing here mocks the agent: the CLI runs as its own process, the outbox is read with sqlite3
from outside (as an operator would), and updates come from a real mosquitto (tests/support/broker).
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from agent.spime import Schema, decode_update, peek_header
from tests.support.agentrun import VIN, write_config
from tests.support.broker import Mosquitto, Subscriber, wait_until
from tests.support.data import DEMO_DBC

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "spime/v1"
DATA_TOPIC = f"{PREFIX}/{VIN}/data"
STATUS_TOPIC = f"{PREFIX}/{VIN}/status"

Key = tuple[str, int]  # (boot hex, seq)

_BOOT = re.compile(r"starting: vin \S+, boot ([0-9a-f]{16})")
_UPDATES = re.compile(r"input finished: .*?(\d+) updates")


def replay_config(
    path: Path,
    *,
    log: Path,
    port: int,
    speed: float = 0.0,
    max_age: float = 0.25,
    outbox: Path | None = None,
    mqtt: str = "",
) -> Path:
    """A config replaying ``log`` (demo DBC, every signal) and publishing to 127.0.0.1:port.

    Quick reconnects, no drain-rate limit (unless ``mqtt`` sets one) and a short commit window
    keep the tests short; ``mqtt`` adds raw TOML lines to the [mqtt] section.
    """
    box = outbox if outbox is not None else path.parent / "outbox.db"
    if "drain_rate" not in mqtt:
        mqtt = f"drain_rate = 0\n{mqtt}"
    extra = (
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_min = 0.1\nreconnect_max = 0.5\n'
        f"{mqtt}\n"
        f'[outbox]\npath = "{box}"\ncommit_interval = 0.05\n'
        f"[updates]\nmax_age = {max_age}\n"
    )
    bus = {
        "name": "car",
        "interface": "replay",
        "log": str(log),
        "dbc": [str(DEMO_DBC)],
        "speed": speed,
    }
    return write_config(path, [bus], extra=extra)


class AgentProcess:
    """``spime-agent run --config F [ARGS]`` as a subprocess; its log goes to a file (a pipe
    nobody reads could fill up and stall the agent)."""

    def __init__(self, config: Path, *args: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 (closed in wait/kill)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            cwd=ROOT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def boot(self) -> str | None:
        m = _BOOT.search(self.log())
        return m.group(1) if m else None

    def updates(self) -> int | None:
        """N from the "input finished: ... N updates" line, once it was written."""
        m = _UPDATES.search(self.log())
        return int(m.group(1)) if m else None

    def wait_log(self, text: str, timeout: float = 30.0) -> bool:
        return wait_until(lambda: text in self.log() or self.proc.poll() is not None, timeout) and (
            text in self.log()
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def stored_keys(outbox: Path) -> list[Key]:
    """(boot, seq) of every row in the outbox file, read-only, in row id order; [] when the
    file or its table does not exist yet."""
    if not outbox.exists():
        return []
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30.0)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone() is None:
            return []
        keys = []
        for (payload,) in conn.execute("SELECT payload FROM outbox ORDER BY id"):
            head = peek_header(payload)
            keys.append((head.boot, head.seq))
        return keys
    finally:
        conn.close()


def outbox_payloads(outbox: Path) -> list[bytes]:
    """Every row's payload in the outbox file, read-only, in row id order."""
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=30.0)
    try:
        return [bytes(r[0]) for r in conn.execute("SELECT payload FROM outbox ORDER BY id")]
    finally:
        conn.close()


def decode_updates(payloads: list[bytes], schemas: Path) -> dict[Key, dict[str, Any]]:
    """Updates decoded with the schemas stored in ``schemas`` (the outbox's ``.schemas``
    folder), by (boot, seq): a later copy of the same update replaces an earlier one."""
    docs = {}
    for payload in payloads:
        sid = peek_header(payload).schema_id
        doc = decode_update(payload, Schema.from_json((schemas / f"{sid}.json").read_bytes()))
        docs[(doc["boot"], doc["seq"])] = doc
    return docs


class DataCollector:
    """A reconnecting subscriber on the data topic that reads each update's (boot, seq)."""

    def __init__(self, broker: Mosquitto, client_id: str = "sub-data") -> None:
        self.sub = Subscriber(broker, DATA_TOPIC, reconnect=True, client_id=client_id)

    def received(self) -> list[Key]:
        """Every update received, in arrival order, duplicates included."""
        out = []
        for m in self.sub.messages:
            head = peek_header(m.payload)
            out.append((head.boot, head.seq))
        return out

    def first_seen(self) -> list[Key]:
        seen: set[Key] = set()
        out = []
        for k in self.received():
            if k not in seen:
                seen.add(k)
                out.append(k)
        return out

    def seqs(self, boot: str) -> set[int]:
        return {s for b, s in self.received() if b == boot}

    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(self.received()).values())

    def wait_count(self, n: int, boot: str | None = None, timeout: float = 30.0) -> bool:
        def enough() -> bool:
            keys = set(self.received())
            if boot is not None:
                keys = {k for k in keys if k[0] == boot}
            return len(keys) >= n

        return wait_until(enough, timeout)

    def wait_all(self, want: set[Key], timeout: float = 30.0) -> bool:
        return wait_until(lambda: want <= set(self.received()), timeout)

    def close(self) -> None:
        self.sub.close()

    def __enter__(self) -> DataCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def retained_status(broker: Mosquitto, timeout: float = 30.0) -> dict[str, Any]:
    """The retained status document, as a subscriber arriving now gets it."""
    with Subscriber(broker, STATUS_TOPIC) as late:
        if not late.wait_for(lambda m: len(m) >= 1, timeout):
            raise AssertionError(f"no retained status on {STATUS_TOPIC}")
        # The retained copy comes first, before any status published after the subscription.
        msg = late.messages[0]
    if not msg.retain:
        raise AssertionError("the status message was not retained")
    doc: dict[str, Any] = json.loads(msg.payload)
    return doc


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    # No in-flight limit towards subscribers: every message the broker acknowledges to the agent
    # is written to the subscriber at once, never parked in a broker queue.
    b = Mosquitto(tmp_path / "broker", max_inflight_messages=0)
    b.start()
    try:
        yield b
    finally:
        b.stop()
