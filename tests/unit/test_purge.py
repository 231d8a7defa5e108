"""The one rewrite of stored updates (agent.purge) on a real SQLite outbox and schema folder:
same boot, seq and place in the queue; empty updates deleted; the memory buffer covered."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.purge import drop_categories, purge_outbox, tighten
from agent.schemastore import SchemaStore
from agent.spime import Sample, decode_samples, encode_update, peek_schema_id
from tests.support.privacy import BOOT, HOME, LON, SCHEMA, north

VIN = "WVWZZZ1JZXW000001"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Outbox, SchemaStore]]:
    schemas = SchemaStore(tmp_path / "schemas")
    schemas.save(SCHEMA)
    box = Outbox(OutboxConfig(path=tmp_path / "outbox.db", commit_interval=600))
    box.open()
    yield box, schemas
    box.close()


def put(box: Outbox, seq: int, samples: list[Sample], *, event: bool = False) -> None:
    payload = encode_update(SCHEMA, boot=BOOT, seq=seq, vin=VIN, samples=samples, event=event)
    box.put(payload, "event" if event else "telemetry")


def stored(box: Outbox) -> list[tuple[int, int, bool, list[Sample]]]:
    """(row id, seq, event, samples) of every committed row."""
    out = []
    for row in box.iter_rows():
        head, samples = decode_samples(row.payload, SCHEMA)
        assert head.boot == BOOT.hex() and head.vin == VIN
        out.append((row.id, head.seq, head.event, samples))
    return out


def test_a_revoked_category_leaves_every_update_in_its_place(
    store: tuple[Outbox, SchemaStore],
) -> None:
    box, schemas = store
    put(box, 1, [(1, 0, 90), (1, 1, north(0)), (1, 2, LON)])
    put(box, 2, [(2, 1, north(10)), (2, 2, LON)], event=True)
    put(box, 3, [(3, 0, 91)])
    box.flush()
    before = [(i, seq, ev, [x for x in s if x[1] == 0]) for i, seq, ev, s in stored(box)]
    result = purge_outbox(box, schemas, {"location"}, drop_categories({"location"}))
    assert (result.rewritten, result.deleted, result.unreadable) == (1, 1, 0)
    # Seq 2 held positions only: deleted. The others keep their id, seq and flags.
    assert stored(box) == [(i, seq, ev, s) for i, seq, ev, s in before if seq != 2]
    assert box.stats().purged == 1


def test_a_zone_takes_back_the_positions_inside_it_also_from_memory(
    store: tuple[Outbox, SchemaStore],
) -> None:
    box, schemas = store
    put(box, 1, [(1, 1, north(-2000)), (1, 2, LON), (2, 1, north(0)), (2, 0, 90)])
    box.flush()
    # Not committed yet (the commit window is long): the purge must reach it as well.
    put(box, 2, [(3, 1, north(100)), (3, 2, LON), (4, 1, north(2000)), (4, 2, LON)])
    result, positions = tighten(box, schemas, zones=(HOME,), coarse_grid=0.01)
    assert (result.rewritten, result.deleted, positions) == (2, 0, 3)
    rows = stored(box)
    assert [r[1] for r in rows] == [1, 2]
    # (With latitude and longitude only, the schema counts as coarse: 2 km clears any cell.)
    assert rows[0][3] == [(1, 1, north(-2000)), (1, 2, LON), (2, 0, 90)]
    assert rows[1][3] == [(4, 1, north(2000)), (4, 2, LON)]
    # Nothing changes a second time: the purge finds nothing left inside.
    again, positions = tighten(box, schemas, zones=(HOME,), coarse_grid=0.01)
    assert (again.rewritten, again.deleted, positions) == (0, 0, 0)


def test_an_update_whose_schema_is_missing_stays_and_is_counted(
    store: tuple[Outbox, SchemaStore], tmp_path: Path
) -> None:
    box, schemas = store
    put(box, 1, [(1, 1, north(0)), (1, 2, LON)])
    box.flush()
    (tmp_path / "schemas" / f"{SCHEMA.id}.json").unlink()
    result, _ = tighten(box, schemas, revoked={"location"}, zones=(HOME,), coarse_grid=0.01)
    assert (result.rewritten, result.deleted, result.unreadable) == (0, 0, 1)
    assert [peek_schema_id(r.payload) for r in box.iter_rows()] == [SCHEMA.id]


@pytest.mark.parametrize("size", [40, 30_000])  # within a page, and over overflow pages
def test_what_a_purge_takes_back_is_not_left_in_the_files(
    store: tuple[Outbox, SchemaStore], tmp_path: Path, size: int
) -> None:
    box, schemas = store
    # Positions that do not compress: each update's bytes are unique.
    rng = random.Random(size)
    for seq in range(1, 6):
        samples: list[Sample] = [
            (t, sid, north(rng.uniform(-100, 100)) if sid == 1 else LON + rng.randrange(1000))
            for t in range(seq * 10_000, seq * 10_000 + size // 10)
            for sid in (1, 2)
        ]
        put(box, seq, [*samples, (seq * 10_000, 0, seq)])
    # Checkpointed into the database file itself, as a long-running outbox's rows are.
    assert box.scrub()
    old = {row.payload for row in box.iter_rows()}
    result, _ = tighten(box, schemas, zones=(HOME,), coarse_grid=0.01)
    assert result.rewritten == 5
    for f in tmp_path.glob("outbox.db*"):
        data = f.read_bytes()
        assert not [p for p in old if p in data], f.name
