"""The downlink's wiring: signed commands and retained plans from the broker to the agent.

Starts the command worker (agent.control.service) with its replay memory kept beside the outbox,
tells the uplink what to subscribe to (``<prefix>/<vin>/cmd`` and ``<prefix>/<vin>/plan``) and
hands every message it receives to the worker at once, so the uplink's thread never waits on a
command. Answers go back through the uplink: MQTT 5 to the request's Response Topic with its
Correlation Data, otherwise on ``<prefix>/<vin>/cmd/result``. What a command does is
agent.control.commands'; whether it may run is agent.control.remote's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import Config

if TYPE_CHECKING:
    from agent.control.service import CommandService
    from agent.daemon import Agent

log = logging.getLogger(__name__)


def control_dir(cfg: Config) -> Path | None:
    """Where remote state lives on the box (beside the outbox): None without an outbox."""
    return None if cfg.outbox is None else Path(f"{cfg.outbox.path}.control")


class Downlink:
    """The command worker of one agent run and the uplink's side of it."""

    def __init__(self, agent: Agent, cfg: Config) -> None:
        assert cfg.remote is not None and cfg.mqtt is not None
        self.agent = agent
        self.cfg = cfg
        self.base = f"{cfg.mqtt.topic_prefix}/{cfg.vehicle.vin}"
        self.commands: CommandService | None = None

    def start(self) -> CommandService:
        """The command worker, started, with the replay memory it loaded."""
        from agent.control.commands import execute
        from agent.control.envelope import load_public_key
        from agent.control.remote import Authorizer
        from agent.control.service import CommandService, SeenStore

        assert self.cfg.remote is not None
        folder = control_dir(self.cfg)
        assert folder is not None
        store = SeenStore(folder / "seen.json")
        authorizer = Authorizer(
            vin=self.cfg.vehicle.vin,
            key=load_public_key(self.cfg.remote.command_key),
            seen=store.load(),
            clock=lambda: int(time.time() * 1000),
        )
        allow = self.cfg.remote.allow_remote_consent
        key = authorizer.key
        agent = self.agent
        self.commands = CommandService(
            authorizer,
            store,
            execute=lambda cmd: execute(agent, cmd, allow_consent_grant=allow),
            answer=self.answer,
            on_plan=lambda data: agent.apply_retained_plan(data, key),
        )
        self.commands.start()
        log.info("remote commands enabled (key id %s)", authorizer.kid)
        return self.commands

    def uplink_hook(self) -> dict[str, Any]:
        """The uplink's keyword arguments: what to subscribe to and who gets the messages."""
        return {
            "subscriptions": [(f"{self.base}/cmd", 1), (f"{self.base}/plan", 1)],
            "on_message": self.on_message,
        }

    def answer(self, request: Any, response: Any) -> None:
        """Publish an answer. Not through the outbox: an answer is not spime data, and one lost
        with the connection is what the sender's timeout is for."""
        from agent.mqttclient import response_properties

        assert self.cfg.mqtt is not None and self.agent.uplink is not None
        topic = request.response_topic
        props = None
        if topic and self.cfg.mqtt.protocol == "5":
            props = response_properties(request.correlation)
        else:
            topic = f"{self.base}/cmd/result"
        self.agent.uplink.publish(topic, response.to_json(), properties=props)

    def on_message(self, topic: str, payload: bytes, properties: Any) -> None:
        """On the uplink's thread: hand over and return at once."""
        from agent.control.service import Request

        assert self.commands is not None
        if topic.endswith("/plan"):
            self.commands.submit(Request(payload, plan=True))
            return
        rt = getattr(properties, "ResponseTopic", None) if properties is not None else None
        cd = getattr(properties, "CorrelationData", None) if properties is not None else None
        self.commands.submit(Request(payload, rt or None, bytes(cd) if cd else None))
