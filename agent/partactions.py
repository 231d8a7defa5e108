"""What the lifecycle and the link ask of the agent's running parts, carried out on them.

The lifecycle (agent.lifecycle) decides when to upload the backlog, switch a modem's power,
pause the MQTT link or the GNSS receiver; the uplink reports its link up or down and the modem
manager a switch of the data modem. Each callback here does that on whichever part is running
(the outbox, uplink and modems open only when publishing; none exist in a dry run) and does
nothing when the part is absent. It does not decide when (agent.lifecycle, agent.modem) nor
build the parts (agent.daemon).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger(__name__)


class PartActions:
    """The callbacks handed to the lifecycle, the uplink and the modem manager; read the
    agent's parts at each call (they open after the callbacks are handed over)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def upload(self, timeout: float) -> bool:
        """Publish the committed backlog for at most ``timeout`` seconds (events go first)."""
        outbox, uplink = self.agent.outbox, self.agent.uplink
        if outbox is None or uplink is None:
            return True
        outbox.flush()
        return bool(uplink.wait_drained(timeout))

    def modem_power(self, command: str, low: bool) -> bool:
        modems = self.agent.modems
        if modems is None:
            return True
        return bool(modems.set_power(command, low=low, timeout=15.0))

    def pause_link(self, reason: str | None) -> None:
        """Radio traffic stops (``reason``) or resumes (None; the uplink connects at once)."""
        uplink = self.agent.uplink
        if uplink is None:
            return
        if reason is None:
            uplink.resume()
        elif not uplink.pause(reason, timeout=10.0):
            log.warning("power: the MQTT link did not close within 10 s")

    def pause_gnss(self, reason: str | None) -> None:
        """The receiver paused (``reason``: parked, low voltage) or read again (None)."""
        location = self.agent.location
        if location is None:
            return
        if reason is None:
            location.resume()
        else:
            location.pause(reason)

    def on_power_change(self, _t: Any) -> None:
        self.agent.reporter.now()
        if self.agent.uplink is not None:
            self.agent.uplink.publish_status()

    def on_link(self, up: bool, reason: str) -> None:
        # The modem manager counts data-path failures to decide whether the SIM is the problem.
        modems = self.agent.modems
        if modems is not None:
            if up:
                modems.report_data_ok()
            else:
                modems.report_data_failure(reason)

    def on_modem_switch(self, active: str, reason: str) -> None:
        uplink = self.agent.uplink
        if uplink is None:
            return
        if reason == "initial":
            # The first choice: a connection that already works keeps working.
            log.info("data through modem %s", active)
        else:
            log.warning("data now through modem %s (%s): reconnecting MQTT", active, reason)
            uplink.reconnect(f"modem switched to {active}")
        uplink.publish_status()
