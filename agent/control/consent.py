"""Consent changed remotely, kept on the box: the owner's consent as activated, minus what was
revoked (plus what was granted, where allowed) through the backend.

The config file stays as the dealer's activation wrote it (under systemd /etc is read-only to
the agent); the remote change is a small JSON file beside the outbox, replaced atomically, that
``apply`` lays over every config the agent loads (at start and on each SIGHUP reload). It
records the config's own grant it was made against: when the config's consent changes (a new
activation or a local edit), that newer local decision wins and the remote change is dropped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agent.atomicfile import write_atomic
from agent.config import GRANTABLE, Config

log = logging.getLogger(__name__)


def _granted(cfg: Config) -> list[str] | None:
    return None if cfg.consent is None else sorted(cfg.consent.granted)


class ConsentStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.error("remote consent file %s unreadable (%s): ignored", self.path, err)
            return None
        return doc if isinstance(doc, dict) else None

    def apply(self, cfg: Config) -> Config:
        """``cfg`` with the remote consent change laid over it, if one applies to it."""
        doc = self._load()
        if doc is None or cfg.consent is None:
            return cfg
        if doc.get("config") != _granted(cfg):
            log.warning(
                "the config's own consent changed since the remote consent change of %s: "
                "the config's consent is in force",
                doc.get("at", "?"),
            )
            return cfg
        granted = doc.get("granted")
        if not isinstance(granted, list):
            return cfg
        known = [c for c in GRANTABLE if c in granted]
        consent = cfg.consent.model_copy(update={"granted": known})
        return cfg.model_copy(update={"consent": consent})

    def save(self, base: Config, granted: frozenset[str], at: str) -> None:
        """Record ``granted`` as the remote change over ``base`` (the config as loaded)."""
        doc = {"config": _granted(base), "granted": sorted(granted), "at": at}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(doc).encode(), mode=0o600)
