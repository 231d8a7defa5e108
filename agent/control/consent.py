"""Consent changed remotely, kept on the box: the owner's consent as activated, minus what was
revoked (plus what was granted, where allowed) through the backend, and the privacy zones as
the backend left them (zones added; removed where allowed).

The config file stays as the dealer's activation wrote it (under systemd /etc is read-only to
the agent); the remote change is a small JSON file beside the outbox, replaced atomically, that
``apply`` lays over every config the agent loads (at start and on each SIGHUP reload). It
records the config's own grant it was made against: when the config's consent changes (a new
activation or a local edit), that newer local decision wins and the remote change is dropped.
The same holds for the zones: the config's own zones are recorded too, and a change to them
drops the remote change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.atomicfile import write_atomic
from agent.config import GRANTABLE, Config, PrivacyConfig, ZoneConfig

log = logging.getLogger(__name__)


def _granted(cfg: Config) -> list[str] | None:
    return None if cfg.consent is None else sorted(cfg.consent.granted)


def _zones(zones: Iterable[ZoneConfig]) -> list[dict[str, Any]]:
    return [z.model_dump() for z in zones]


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
        stale_zones = "zones" in doc and doc.get("config_zones") != _zones(cfg.privacy.zones)
        if doc.get("config") != _granted(cfg) or stale_zones:
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
        update: dict[str, Any] = {"consent": consent}
        if "zones" in doc:
            try:
                privacy = PrivacyConfig.model_validate(
                    {**cfg.privacy.model_dump(), "zones": doc["zones"]}
                )
            except ValidationError as err:
                log.error("remote privacy zones in %s invalid (%s): ignored", self.path, err)
                return cfg
            update["privacy"] = privacy
        return cfg.model_copy(update=update)

    def save(
        self,
        base: Config,
        granted: frozenset[str],
        at: str,
        zones: Iterable[ZoneConfig] | None = None,
    ) -> None:
        """Record ``granted`` (and ``zones``) as the remote change over ``base`` (the config
        as loaded)."""
        doc: dict[str, Any] = {"config": _granted(base), "granted": sorted(granted), "at": at}
        if zones is not None:
            doc["config_zones"] = _zones(base.privacy.zones)
            doc["zones"] = _zones(zones)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(doc).encode(), mode=0o600)
