"""The inputs beside the buses, wired into the pipeline: the lifecycle, the GNSS receiver and
diagnostics, each present only when its section is configured.

``Inputs`` builds them from the config in force and hands them to the pipeline: the lifecycle
(``[power]``, agent.lifecycle) gets the power values and bus activity and acts through the
agent's callbacks (agent.partactions); the receiver (``[gnss]``, agent.gnss_wiring) and the
diagnostic pollers (``[[diagnostics]]``, agent.diag.wiring) are polled at every turn of the
pipeline's loop. It starts and stops their threads together, and at the end of the input lets
the lifecycle act on the last values it was handed. It does not decide a transition
(agent.control.power), read a receiver (agent.sources) nor ask an ECU (agent.diag).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import gnss_wiring
from agent.catalog import Catalog
from agent.config import Config
from agent.lifecycle import PowerController

if TYPE_CHECKING:
    from agent.partactions import PartActions
    from agent.pipeline import Pipeline

# The run's log lines keep the logger name they always had (operators filter on it).
log = logging.getLogger("agent.daemon")

# Beyond park_upload, how long the end of a replay waits for the lifecycle's last transitions
# (a commit, the link's pause and the modems' power each take at most 10-15 s).
POWER_SETTLE_SECONDS = 40.0


class Inputs:
    """The lifecycle, the receiver and diagnostics of one run (each None when not configured);
    ``modems`` gives the modem manager once it runs (an "at" receiver reads through it)."""

    def __init__(
        self,
        cfg: Config,
        catalog: Catalog,
        pipeline: Pipeline,
        actions: PartActions,
        modems: Callable[[], Any],
    ) -> None:
        self.power: PowerController | None = None
        if cfg.power is not None:
            self.power = PowerController(
                cfg.power,
                pipeline,
                [b.config.name for b in catalog.buses],
                upload=actions.upload,
                modem_power=actions.modem_power,
                pause_link=actions.pause_link,
                pause_gnss=actions.pause_gnss,
                on_change=actions.on_power_change,
            )
            pipeline.on_power = self.power.on_value
            pipeline.on_activity = self.power.on_activity
        # [gnss]: the receiver, polled by the pipeline (agent.gnss_wiring).
        self.location = gnss_wiring.Location(pipeline, modems) if cfg.gnss else None
        if self.location is not None:
            pipeline.inputs.append(self.location)
            if self.power is not None:
                # Like the rest of the lifecycle's actions, the receiver waits for the inputs
                # to decide: a box restarted in a parked car does not switch it on.
                self.location.pause("started")
        self.diag: Any = None
        if cfg.diagnostics:
            from agent.diag.wiring import Diagnostics

            self.diag = Diagnostics(cfg, pipeline, self.power)
            pipeline.inputs.append(self.diag)  # it follows the consent in force

    def start(self) -> None:
        if self.power is not None:
            self.power.start()
        if self.diag is not None:
            self.diag.start()

    def stop(self) -> None:
        if self.diag is not None:
            self.diag.stop()
        if self.power is not None:
            self.power.stop()

    def end_power(self, stopping: bool, uplink: Any) -> None:
        """The input ended: the lifecycle first acts on every value it was handed (the last
        transitions of a replay, with their events), then stops; a recording that ended
        parked paused the link, which the final drain must not wait on. ``stopping``: a stop
        was requested."""
        if self.power is None:
            return
        if stopping:  # a stop while parked keeps the radio quiet
            self.power.stop()
            return
        timeout = self.power.cfg.park_upload + POWER_SETTLE_SECONDS
        if not self.power.settle(timeout):
            log.warning("power: the lifecycle did not finish within %g s", timeout)
        self.power.stop()
        if uplink is not None:
            uplink.resume()
