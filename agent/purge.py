"""Rewrites the updates waiting to be sent when the owner's privacy tightens.

One loop for every such change: consent revoked for some categories, a privacy zone added.
``purge_outbox`` commits what the outbox holds in memory, then reads every waiting update (the
committed rows in id order, then what a failing disk still keeps in memory), decodes it with
its stored schema, asks ``keep`` (given the schema, the header and the samples) which samples
may stay, and writes it back with the same boot, sequence and place in the queue; an update
left without samples is deleted, and so is a row that could not be rewritten (its samples must
not go out). What is taken back does not linger in the file: the outbox zeroes it and clears
its write-ahead log (``Outbox.scrub``). Only updates whose schema has a signal of the
categories the change touches are decoded. ``tighten`` builds the ``keep`` of a change:
``drop_categories`` for revoked consent, agent.policy.zonepurge for zones.

It does not make the pipeline hand over its open update first (agent.selection waits for that)
and cannot recall an update the uplink already read for publishing (a fraction of a second
of read-ahead, or in flight to a connected broker).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Protocol

from agent.errors import SchemaError, WireFormatError
from agent.outbox import Outbox
from agent.policy.privacy import Zone
from agent.policy.zonepurge import LOCATION_CATEGORIES, OutsideZones
from agent.schemastore import SchemaStore
from agent.spime import Header, Sample, Schema, decode_samples, encode_update, peek_schema_id

log = logging.getLogger(__name__)

Keep = Callable[[Schema, Header, list[Sample]], list[Sample]]


class _Schemas(Protocol):
    def load(self, schema_id: str) -> Schema | None: ...


@dataclass(frozen=True)
class PurgeResult:
    rewritten: int = 0  # updates written back without some samples
    deleted: int = 0  # updates left empty (or not rewritable): deleted
    unreadable: int = 0  # updates whose schema is missing or that do not decode: left as they are

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def drop_categories(categories: Collection[str]) -> Keep:
    """``keep`` without the samples of signals in ``categories``."""
    wanted = frozenset(categories)

    def keep(schema: Schema, _head: Header, samples: list[Sample]) -> list[Sample]:
        drop = {s.id for s in schema.signals if s.category in wanted}
        return [x for x in samples if x[1] not in drop] if drop else samples

    return keep


def tighten(
    outbox: Outbox,
    schemas: SchemaStore,
    *,
    revoked: Collection[str] = (),
    zones: tuple[Zone, ...] = (),
    coarse_grid: float = 0.0,
    progress: Callable[[], None] | None = None,
) -> tuple[PurgeResult, int]:
    """Purge for consent revoked in ``revoked`` and/or the privacy ``zones`` now in force (when
    one was added); the result, and how many location samples the zones took back.
    ``progress`` is called once per stored update read."""
    keeps: list[Keep] = []
    categories: set[str] = set(revoked)
    if revoked:
        keeps.append(drop_categories(revoked))
    outside = None
    if zones:
        outside = OutsideZones(zones, coarse_grid)
        keeps.append(outside)
        categories |= LOCATION_CATEGORIES

    def keep(schema: Schema, head: Header, samples: list[Sample]) -> list[Sample]:
        for k in keeps:
            samples = k(schema, head, samples)
        return samples

    result = purge_outbox(outbox, schemas, categories, keep, progress)
    return result, 0 if outside is None else outside.dropped


class _Rewriter:
    """One payload -> the same object (unchanged), a new payload, or None (nothing left)."""

    def __init__(self, schemas: _Schemas, categories: Collection[str], keep: Keep) -> None:
        self._schemas = schemas
        self._categories = frozenset(categories)
        self._keep = keep
        self._cache: dict[str, Schema | None] = {}  # None: nothing the purge is about
        self._missing: set[str] = set()
        self.unreadable = 0

    def _schema(self, sid: str) -> Schema | None:
        if sid not in self._cache:
            schema = self._schemas.load(sid)
            if schema is None:
                self._missing.add(sid)
                log.error("purge: schema %s of stored updates is missing: they stay", sid)
            elif not any(s.category in self._categories for s in schema.signals):
                schema = None
            self._cache[sid] = schema
        return self._cache[sid]

    def __call__(self, payload: bytes) -> bytes | None:
        try:
            sid = peek_schema_id(payload)
            schema = self._schema(sid)
            if schema is None:
                self.unreadable += sid in self._missing
                return payload
            head, samples = decode_samples(payload, schema)
        except (WireFormatError, SchemaError) as err:
            self.unreadable += 1
            log.error("purge: a stored update does not decode (%s): it stays as it is", err)
            return payload
        kept = self._keep(schema, head, samples)
        if kept == samples:
            return payload
        if not kept:
            return None
        # Same boot, seq and flags: only the samples changed.
        return encode_update(
            schema,
            boot=bytes.fromhex(head.boot),
            seq=head.seq,
            vin=head.vin,
            samples=kept,
            snapshot=head.snapshot,
            event=head.event,
            trigger=None if head.trigger is None else (head.trigger, head.trigger_t or 0),
        )


def purge_outbox(
    outbox: Outbox,
    schemas: _Schemas,
    categories: Collection[str],
    keep: Keep,
    progress: Callable[[], None] | None = None,
) -> PurgeResult:
    """Apply ``keep`` to every update waiting in ``outbox`` whose schema has a signal of
    ``categories`` (see the module docstring); ``progress()`` before each committed row is read."""
    rewrite = _Rewriter(schemas, categories, keep)
    outbox.flush()
    rewritten = deleted = 0
    for row in outbox.iter_rows():
        if progress is not None:
            progress()
        payload = rewrite(row.payload)
        if payload is row.payload:
            continue
        if payload is not None and outbox.replace(row.id, payload):
            rewritten += 1
        else:
            # Left empty, or the disk refused the rewrite: the samples must never go out.
            outbox.purge_ids([row.id])
            deleted += 1
    # What a failing disk keeps in memory (after the flush above, only then) is rewritten too.
    more, fewer = outbox.rewrite_buffered(rewrite)
    if (rewritten or deleted or more or fewer) and not outbox.scrub():
        log.warning(
            "purge: the outbox's write-ahead log is in use and was not truncated; "
            "later commits overwrite what it still holds"
        )
    return PurgeResult(rewritten + more, deleted + fewer, rewrite.unreadable)
