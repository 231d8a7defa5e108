"""What the updates in the outbox are known to respect, kept beside it across restarts.

A privacy zone added, or consent revoked, while the agent was stopped (the config edited, or
a remote change stored on the box before a crash let its purge run) must still take back what
the previous run left in the outbox. So the agent keeps, in ``<outbox>.privacy`` (JSON,
written with agent.atomicfile), a fingerprint of each privacy zone and the consent categories
granted, with this invariant: every stored update respects every zone recorded and holds no
category the record does not grant. A change that loosens (a zone removed or changed, a
category granted) is recorded before an update is stored under it; one that tightens only
once its purge has committed, so a crash in between leaves the purge to the next start.

``owed(cfg)`` tells a start (or a change) what to purge against the record, by the same rules
as a change at run time: a zone that is new or changed (it may have grown) means checking the
stored positions against every zone in force; a category granted in the record but not now is
taken back (``revoked``). No record (an outbox from before this file, or the file lost) means
nothing is known: no zone, every category.

Only fingerprints of the zones are kept (a truncated SHA-256 of name, centre and radius): the
file does not repeat where the owner's private places are. It does not purge (agent.purge),
decide which samples a zone takes back (agent.policy.zonepurge) nor load the config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from agent.atomicfile import write_atomic
from agent.config import COARSE_LOCATION, CONSENT_CATEGORIES, Config, ZoneConfig

log = logging.getLogger(__name__)

EVERY = frozenset({*CONSENT_CATEGORIES, COARSE_LOCATION})
_VERSION = 1


@dataclass(frozen=True)
class Mark:
    zones: frozenset[str]  # fingerprints of the zones every stored update respects
    granted: frozenset[str]  # no stored update holds a category outside these


def zone_fingerprint(zone: ZoneConfig) -> str:
    data = json.dumps([zone.name, zone.lat, zone.lon, zone.radius]).encode()
    return hashlib.sha256(data).hexdigest()[:32]


def granted_of(cfg: Config) -> frozenset[str]:
    """The categories ``cfg`` lets through (no [consent] section: every one)."""
    return EVERY if cfg.consent is None else frozenset(cfg.consent.granted)


def mark_of(cfg: Config) -> Mark:
    return Mark(frozenset(zone_fingerprint(z) for z in cfg.privacy.zones), granted_of(cfg))


def revoked(before: Collection[str], after: Collection[str]) -> set[str]:
    """Categories granted in ``before`` and not in ``after`` whose stored samples must go."""
    gone = set(before) - set(after)
    if "location" in gone and COARSE_LOCATION in after:
        gone.discard("location")  # still sent, coarsely; exact values already stored may stay
    if COARSE_LOCATION in gone and "location" not in after:
        gone.add("location")
    gone.discard(COARSE_LOCATION)
    return gone


class PrivacyRecord:
    """The record file of one outbox (see the module docstring). Not thread-safe: the daemon
    changes the config under its reload lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        loaded = self._load()
        self.known = loaded is not None  # False: nothing is known of the stored updates
        self.mark = loaded or Mark(frozenset(), EVERY)

    def owed(self, cfg: Config) -> tuple[set[str], bool]:
        """(categories to take back, whether stored positions are to be checked against the
        zones of ``cfg``) for the stored updates to respect ``cfg``."""
        new = mark_of(cfg)
        return revoked(self.mark.granted, new.granted), not new.zones <= self.mark.zones

    def loosen(self, cfg: Config) -> None:
        """Before updates are stored under ``cfg``: keep only what they will respect too."""
        new = mark_of(cfg)
        self._save(Mark(self.mark.zones & new.zones, self.mark.granted | new.granted))

    def settle(self, cfg: Config, *, purged: bool) -> None:
        """After the purge ``owed(cfg)`` asked for: the record becomes ``cfg``'s once the purge
        has committed (``purged``); otherwise it is only loosened, and the purge is owed again
        at the next start."""
        if purged:
            self._save(mark_of(cfg))
        else:
            self.loosen(cfg)

    def _load(self) -> Mark | None:
        try:
            doc = json.loads(self.path.read_bytes())
            if doc.get("version") != _VERSION:
                raise ValueError(f"version {doc.get('version')!r}, not {_VERSION}")
            return Mark(frozenset(doc["zones"]), frozenset(doc["granted"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.error(
                "%s: unreadable (%s): stored updates are checked against every zone and consent",
                self.path,
                err,
            )
            return None

    def _save(self, mark: Mark) -> None:
        if mark == self.mark and self.path.exists():
            return
        doc = {"version": _VERSION, "zones": sorted(mark.zones), "granted": sorted(mark.granted)}
        try:
            write_atomic(self.path, json.dumps(doc).encode(), mode=0o600)
        except OSError as err:
            # A record stricter than the outbox could hide a purge owed: none is safer.
            log.error(
                "%s: cannot write (%s); the next start checks every stored update", self.path, err
            )
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.mark = Mark(frozenset(), EVERY)
            return
        self.mark = mark
