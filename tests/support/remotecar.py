"""A car for the remote tests: key files, a config with [remote] and consent rules, and the
agent run in a thread as `spime-agent run` runs it, with `spime-agent command` as the backend.

The car is the two-message vehicle of tests.support.data (a health signal and a position, each
with its consent category) on python-can's ``virtual`` bus; its broker is a real mosquitto,
given by the test (``NO_DATA_ACL``: one that refuses updates, so they wait in the outbox).
``add_receiver`` adds an NMEA receiver for the privacy zone tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import can

from agent.control.envelope import generate_key, private_pem, public_pem, seal
from agent.daemon import Agent
from tests.support.agentrun import VIN, Running, write_config
from tests.support.broker import Mosquitto
from tests.support.data import HEALTH_POS_DBC
from tests.support.e2e import PREFIX
from tests.support.wait import wait_for

CMD = f"{PREFIX}/{VIN}/cmd"

# Everything but the data topic: the broker refuses updates (MQTT 5: PUBACK "not authorized"),
# so they wait in the outbox, where the purge shows.
NO_DATA_ACL = "".join(
    f"topic readwrite {PREFIX}/{VIN}/{t}\n"
    for t in ("status", "schema", "schema/#", "cmd", "cmd/#")
)


class Car:
    """Key files, a config, and the agent run in a thread as `spime-agent run` runs it."""

    def __init__(
        self,
        tmp_path: Path,
        broker: Mosquitto,
        *,
        protocol: str = "5",
        remote: bool = True,
        allow_grant: bool = False,
        mqtt_extra: str = "",
    ) -> None:
        self.dir = tmp_path
        self.broker = broker
        self.channel = f"cmd-{uuid.uuid4().hex[:8]}"
        self.key = tmp_path / "fleet.key"
        key = generate_key()
        self.private = key
        self.key.write_bytes(private_pem(key))
        (tmp_path / "fleet.key.pub").write_bytes(public_pem(key.public_key()))
        other = generate_key()
        self.other_key = tmp_path / "other.key"
        self.other_key.write_bytes(private_pem(other))
        (tmp_path / "car.dbc").write_text(HEALTH_POS_DBC)
        remote_toml = (
            f'[remote]\ncommand_key = "fleet.key.pub"\n'
            f"allow_remote_consent = {'true' if allow_grant else 'false'}\n"
            if remote
            else ""
        )
        self.config = write_config(
            tmp_path / "agent.toml",
            [{"name": "car", "interface": "virtual", "channel": self.channel, "dbc": ["car.dbc"]}],
            extra=(
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nprotocol = "{protocol}"\n'
                f"reconnect_min = 0.2\nreconnect_max = 0.5\n{mqtt_extra}\n"
                '[outbox]\npath = "outbox.db"\ncommit_interval = 0.05\n'
                "[updates]\nmax_age = 0.05\n"
                '[consent]\ngranted = ["vehicle_health", "location"]\nrules = [\n'
                '  { match = "Pos.*", category = "location" },\n'
                '  { match = "Health.*", category = "vehicle_health" },\n]\n' + remote_toml
            ),
        )
        self.agent: Agent | None = None
        self._run: Running | None = None
        self.protocol = protocol

    def start(self) -> Agent:
        self._run = Running(self.config, dry_run=False, effective=True)
        subscribed = self.subscriptions()
        agent = self.agent = self._run.start()
        wait_for(lambda: agent.outbox is not None and agent.pipeline.source_states()["car"] == "up")
        if self._remote_enabled():
            wait_for(lambda: self.subscriptions() > subscribed, what="the agent's subscription")
        return agent

    def _remote_enabled(self) -> bool:
        return "[remote]" in self.config.read_text()

    def subscriptions(self) -> int:
        """How often the broker saw the agent subscribe to its command topic."""
        log = self.broker.log_path
        return log.read_text(errors="replace").count(CMD + " (QoS 1)") if log.exists() else 0

    def stop(self) -> None:
        if self._run is not None:
            self._run.stop()
        self._run = self.agent = None

    def add_receiver(self, port: str, down_after: float) -> tuple[str, str]:
        """An NMEA receiver on ``port`` in the config: every fix is sampled (the drives' fixes
        are 25 m apart, the distance rule 20 m), no trip end is withheld, and ``down_after``
        decides when the receiver's state (an event, sent at once) may change. Updates close
        after a minute, or when a snapshot is asked for: when a zone comes, the update the
        pipeline is filling holds the latest fixes. Returns the config without, and the
        [gnss] and [privacy] sections, for a test that adds zones later."""
        own = self.config.read_text().replace("max_age = 0.05\n", "max_age = 60\n")
        gnss = (
            f'\n[gnss]\nport = "{port}"\nmode = "rules"\ndistance = 20.0\n'
            f"down_after = {down_after}\n\n[privacy]\ntrip_end_radius = 0.0\n"
        )
        self.config.write_text(own + gnss)
        return own, gnss

    def send_frames(self, n: int = 5) -> None:
        with can.Bus(interface="virtual", channel=self.channel, ignore_config=True) as bus:
            for i in range(n):
                bus.send(
                    can.Message(arbitration_id=0x100, data=bytes([60 + i]), is_extended_id=False)
                )
                lat = (525200000 + i * 1000).to_bytes(4, "little", signed=True)
                bus.send(can.Message(arbitration_id=0x101, data=lat, is_extended_id=False))

    def command(
        self, *action: str, key: Path | None = None, timeout: float = 30, **opts: str
    ) -> tuple[int, dict[str, Any] | None, str]:
        args = [
            sys.executable,
            "-m",
            "agent.cli",
            "command",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.broker.port),
            "--vin",
            opts.pop("vin", VIN),
            "--key",
            str(key or self.key),
            "--protocol",
            opts.pop("protocol", self.protocol),
            "--timeout",
            str(timeout),
        ]
        for k, v in opts.items():
            args += [f"--{k}", v]
        r = subprocess.run([*args, *action], capture_output=True, text=True, timeout=timeout + 60)
        answer = json.loads(r.stdout) if r.stdout.strip() else None
        return r.returncode, answer, r.stderr

    def sealed(
        self, command: str = "ping", args: dict[str, Any] | None = None, **kw: Any
    ) -> tuple[str, bytes]:
        now = int(time.time() * 1000)
        return seal(
            self.private,
            vin=kw.pop("vin", VIN),
            command=command,
            args=args,
            issued=kw.pop("issued", now),
            expires=kw.pop("expires", now + 60_000),
            **kw,
        )
