"""Wiring: config -> catalog -> pipeline -> sink, with start-up checks and shutdown.

Builds everything the agent runs from one config, in the order that lets it refuse bad input
before touching anything stored: config checks, DBC loading and signal selection first, then
the sources. The only module that knows every part; it holds no data-path logic of its own.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.can_source import validate_sources
from agent.catalog import Catalog, build_catalog
from agent.config import Config
from agent.pipeline import Pipeline
from agent.spime import decode_update
from agent.updates import Update

log = logging.getLogger(__name__)


def prepare(cfg: Config) -> Catalog:
    """Every check that needs no bus or broker; raises ConfigError/DbcError with all problems."""
    validate_sources(cfg)
    return build_catalog(cfg)


@dataclass
class RunResult:
    exit_code: int
    problems: tuple[str, ...] = ()


class Agent:
    """One run of the agent. ``on_json`` receives every update decoded, as the backend would."""

    def __init__(
        self,
        cfg: Config,
        catalog: Catalog,
        *,
        dry_run: bool,
        on_json: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.catalog = catalog
        self.dry_run = dry_run
        self.on_json = on_json
        self.boot = os.urandom(8)
        self.pipeline = Pipeline(cfg, catalog, boot=self.boot, sink=self._sink)
        self._stop = threading.Event()

    @property
    def boot_id(self) -> str:
        return self.boot.hex()

    def _sink(self, update: Update) -> None:
        if self.on_json is not None:
            # Decoding what was encoded shows exactly what a backend will read.
            self.on_json(decode_update(update.payload, self.catalog.schema))

    def request_stop(self) -> None:
        """Thread- and signal-safe: finish the open batch and return from run()."""
        self._stop.set()
        self.pipeline.stop()

    def run(self) -> RunResult:
        log.info(
            "spime-agent starting: vin %s, boot %s, %d signals (schema %s), %s",
            self.cfg.vehicle.vin,
            self.boot_id,
            len(self.catalog.selected),
            self.catalog.schema.id,
            "dry run" if self.dry_run else "publishing",
        )
        self.pipeline.run()
        stats = self.pipeline.stats
        log.info(
            "pipeline finished: %d frames, %d decoded, %d unchanged, %d unselected, "
            "%d decode errors, %d updates",
            stats.frames,
            stats.decoded,
            stats.unchanged,
            stats.unselected,
            stats.decode_errors,
            self.pipeline.builder.seq,
        )
        if stats.source_errors:
            return RunResult(2, tuple(stats.source_errors))
        return RunResult(0)
