"""The parts a publishing run opens beside the pipeline, in order, and closes in reverse.

``Publishing`` holds them together: the outbox, the schemas stored beside it, the privacy
record with the purge a start owes (before the uplink may read a stored update), the data
modems, the uplink and, with ``[remote]``, the command worker. Each is None until it opens, and
all stay None in a dry run, so the readers (the status report, the lifecycle's callbacks, the
selection) see exactly what is running. It also waits for the broker's acknowledgements at the
end of a finite replay. It does not run the pipeline, decide the exit (agent.daemon), choose
what is purged (agent.selection, agent.purge) nor carry out a command (agent.downlink,
agent.control).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.downlink import Downlink
from agent.privacyrecord import PrivacyRecord
from agent.ratelimit import Interval
from agent.schemastore import SchemaStore
from agent.spime import peek_schema_id

if TYPE_CHECKING:
    from agent.daemon import Agent

# The run's log lines keep the logger name they always had (operators filter on it).
log = logging.getLogger("agent.daemon")

START_EXTEND_SECONDS = 60.0  # systemd's start timeout, from now, while a purge at start reads


class Publishing:
    """The outbox, schema store, privacy record, modems, uplink and command worker of one run;
    ``agent`` gives the config in force, the selection, the notifier and the callbacks."""

    def __init__(self, agent: Agent, stop: threading.Event) -> None:
        self.agent = agent
        self._stop = stop  # the agent's stop request
        self.outbox: Any = None
        self.uplink: Any = None
        self.modems: Any = None
        self.schemas: SchemaStore | None = None
        self.privacy: PrivacyRecord | None = None  # what the stored updates respect
        self.commands: Any = None

    def open_outbox(self) -> None:
        """The first part: once it is open, ``close`` must follow."""
        from agent.outbox import Outbox

        cfg = self.agent.cfg
        assert cfg.outbox is not None
        self.outbox = Outbox(cfg.outbox, tag_of=peek_schema_id)
        self.outbox.open()

    def start(self) -> None:
        """Everything after the outbox, up to the uplink publishing."""
        from agent.uplink import Uplink

        agent = self.agent
        cfg, catalog = agent.cfg, agent.catalog
        assert cfg.outbox is not None and cfg.mqtt is not None
        self.schemas = SchemaStore(Path(f"{cfg.outbox.path}.schemas"))
        self.schemas.save(catalog.schema)
        self._purge_owed()  # before the uplink may read a stored update
        if cfg.modem:
            from agent.modem.manager import ModemManager

            on_switch = agent.actions.on_modem_switch
            self.modems = ModemManager.from_config(cfg, on_switch=on_switch)
            self.modems.start()
        self.uplink = Uplink(
            cfg.mqtt,
            vin=cfg.vehicle.vin,
            boot=agent.boot_id,
            outbox=self.outbox,
            schema_id=catalog.schema.id,
            schema_json=catalog.schema.dumps().encode(),
            status=agent.status,
            on_link=agent.actions.on_link,
            **self._downlink_hook(),
        )
        self._publish_stored_schemas()
        self.uplink.start()

    def close(self) -> None:
        if self.commands is not None:
            self.commands.stop(5.0)
        if self.modems is not None:
            self.modems.stop(5.0)
        self.outbox.close()

    def _purge_owed(self) -> None:
        """A zone added or consent revoked while the agent was stopped: purge what the last
        run left in the outbox (agent.privacyrecord)."""
        cfg, notifier = self.agent.cfg, self.agent.notifier
        assert cfg.outbox is not None
        self.privacy = PrivacyRecord(Path(f"{cfg.outbox.path}.privacy"))
        revoked, added = self.privacy.owed(cfg)
        if (revoked or added) and self.outbox.stats().rows:  # an empty outbox owes nothing
            # Each rewritten row is one commit (fsync): on slow flash a big outbox can take
            # longer than systemd's start timeout, so more time is asked for while rows are read.
            notifier.status("purging stored updates: privacy tightened while stopped")
            if not self.privacy.known:
                log.warning(
                    "%s: no record of the privacy the stored updates were kept under: they are "
                    "checked against every zone and consent category in force",
                    self.privacy.path,
                )
            every = Interval(START_EXTEND_SECONDS / 3)

            def progress() -> None:
                if every.allow():
                    notifier.extend_start(START_EXTEND_SECONDS)

            self.agent.selection.purge(revoked, added, progress)
        else:
            self.privacy.settle(cfg, purged=True)

    def drain(self, timeout: float | None, on_loop: Callable[[], None]) -> bool:
        """Wait until the broker acknowledged everything, ``timeout`` passed, or a stop was
        requested; ``on_loop`` keeps systemd's watchdog fed meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.agent.notifier.status("replay finished; waiting for the broker to acknowledge")
        while not self._stop.is_set():
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return False
            on_loop()
            if self.uplink.wait_drained(left) and self.outbox.stats().memory_rows == 0:
                return True
        return False

    def _publish_stored_schemas(self) -> None:
        """Rows of an earlier config may wait in the outbox: publish their schemas too."""
        assert self.outbox is not None and self.schemas is not None
        # From the outbox's index of schema ids in use: no stored row is read.
        ids = self.outbox.tags()
        ids.discard(self.agent.catalog.schema.id)
        for sid in sorted(ids):
            schema = self.schemas.load(sid)
            if schema is None:
                log.error(
                    "outbox rows use schema %s, which is not stored: a backend cannot decode them",
                    sid,
                )
            else:
                self.uplink.add_schema(sid, schema.dumps().encode())

    def _downlink_hook(self) -> dict[str, Any]:
        """With [remote]: start the command worker; the uplink's subscriptions and handler."""
        cfg = self.agent.cfg
        if cfg.remote is None or cfg.mqtt is None:
            return {}
        downlink = Downlink(self.agent, cfg)
        self.commands = downlink.start()
        return downlink.uplink_hook()
