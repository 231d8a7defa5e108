"""The record of what stored updates respect: what a start owes, and when the record moves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, parse_config
from agent.privacyrecord import PrivacyRecord

HOME = {"name": "home", "lat": 48.1, "lon": 11.5, "radius": 150.0}
WORK = {"name": "work", "lat": 48.2, "lon": 11.6, "radius": 300.0}


def _cfg(tmp_path: Path, zones: list[dict[str, Any]], granted: list[str] | None = None) -> Config:
    data: dict[str, Any] = {
        "vehicle": {"vin": "WVWZZZ1JZXW000001"},
        "bus": [{"name": "b", "interface": "virtual", "channel": "x", "dbc": ["a.dbc"]}],
        "privacy": {"zones": zones},
    }
    if granted is not None:
        data["consent"] = {"granted": granted}
    return parse_config(data, base=tmp_path, source="t")


def _reopened(path: Path) -> PrivacyRecord:
    return PrivacyRecord(path)  # as the next start reads it


@pytest.mark.parametrize(
    ("before", "after", "owed"),
    [
        (([], None), ([], None), (set(), False)),
        (([HOME], None), ([HOME], None), (set(), False)),
        (([HOME, WORK], None), ([WORK], None), (set(), False)),  # a zone removed
        (([HOME], None), ([HOME, WORK], None), (set(), True)),  # a zone added
        (([HOME], None), ([{**HOME, "radius": 151.0}], None), (set(), True)),  # enlarged
        (([HOME], None), ([{**HOME, "name": "house"}], None), (set(), True)),  # renamed
        (([], ["location", "driving"]), ([], ["driving"]), ({"location"}, False)),
        (([], ["driving"]), ([], ["driving", "location"]), (set(), False)),  # granted
        (([], ["location"]), ([], ["coarse_location"]), (set(), False)),  # still sent, coarsely
        (([], ["coarse_location"]), ([], []), ({"location"}, False)),
        (([], None), ([], ["driving"]), ({"location", "vehicle_health", "diagnostics"}, False)),
    ],
)
def test_a_start_owes_what_tightened_since_the_record(
    tmp_path: Path, before: Any, after: Any, owed: tuple[set[str], bool]
) -> None:
    path = tmp_path / "outbox.db.privacy"
    PrivacyRecord(path).settle(_cfg(tmp_path, *before), purged=True)
    revoked, added = _reopened(path).owed(_cfg(tmp_path, *after))
    assert (revoked, added) == owed


def test_no_record_knows_nothing_and_an_unchanged_config_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db.privacy"
    cfg = _cfg(tmp_path, [HOME], ["driving"])
    record = PrivacyRecord(path)
    revoked, added = record.owed(cfg)
    assert added and "location" in revoked
    record.settle(cfg, purged=True)
    assert _reopened(path).owed(cfg) == (set(), False)
    os.utime(path, ns=(1, 1))
    _reopened(path).settle(cfg, purged=True)
    assert path.stat().st_mtime_ns == 1


def test_a_purge_not_committed_is_owed_again(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db.privacy"
    PrivacyRecord(path).settle(_cfg(tmp_path, [WORK], ["location"]), purged=True)
    tighter = _cfg(tmp_path, [HOME], [])
    _reopened(path).settle(tighter, purged=False)  # the disk failed the purge
    assert _reopened(path).owed(tighter) == ({"location"}, True)
    # A crash before the purge settled leaves the record as it was: also owed.
    assert _reopened(path).owed(tighter) == ({"location"}, True)


def test_a_zone_dropped_at_run_time_and_added_back_while_stopped_is_owed(tmp_path: Path) -> None:
    """Updates stored while a zone was off do not respect it: the record forgets it first."""
    path = tmp_path / "outbox.db.privacy"
    with_home = _cfg(tmp_path, [HOME, WORK])
    PrivacyRecord(path).settle(with_home, purged=True)
    record = _reopened(path)
    record.loosen(_cfg(tmp_path, [WORK]))  # a reload drops it, before anything is stored
    assert _reopened(path).owed(with_home) == (set(), True)


def test_an_unreadable_record_knows_nothing(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "outbox.db.privacy"
    path.write_text("{not json")
    assert PrivacyRecord(path).owed(_cfg(tmp_path, [HOME])) == (set(), True)
    assert "outbox.db.privacy: unreadable" in caplog.text


def test_a_record_that_cannot_be_written_knows_nothing(tmp_path: Path, caplog: Any) -> None:
    folder = tmp_path / "box"
    folder.mkdir()
    path = folder / "outbox.db.privacy"
    PrivacyRecord(path).settle(_cfg(tmp_path, [HOME]), purged=True)
    record = _reopened(path)
    folder.rename(tmp_path / "gone")
    folder.write_text("")  # the record's folder is now a file: no write can succeed
    record.loosen(_cfg(tmp_path, []))
    assert "cannot write" in caplog.text
    # This run goes on as if no record were kept: a later change purges every stored update.
    assert record.owed(_cfg(tmp_path, [HOME])) == (set(), True)
