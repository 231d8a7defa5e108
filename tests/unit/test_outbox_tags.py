"""Outbox tags: which tags (the daemon: schema ids) the stored rows carry, without reading them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox


def first_word(payload: bytes) -> str:
    word, sep, _ = payload.partition(b" ")
    if not sep:
        raise ValueError("no tag in this payload")
    return word.decode()


def make(path: Path) -> Outbox:
    return Outbox(OutboxConfig(path=path, commit_interval=600), tag_of=first_word)


def test_tags_follow_the_stored_rows(tmp_path: Path) -> None:
    with make(tmp_path / "o.db") as ob:
        for payload in (b"a 1", b"b 2", b"a 3", b"c 4"):
            ob.put(payload)
        assert ob.tags() == set()  # buffered, not stored yet
        ob.flush()
        assert ob.tags() == {"a", "b", "c"}
        ids = {e.payload: e.id for e in ob.next_batch(10)}
        ob.ack([ids[b"b 2"], ids[b"c 4"]])
        ob.flush()
        assert ob.tags() == {"a"}
        assert ob.replace(ids[b"a 1"], b"d 1")
        assert ob.tags() == {"a", "d"}
    with make(tmp_path / "o.db") as ob:  # kept in the file
        assert ob.tags() == {"a", "d"}


def test_a_payload_without_a_tag_is_kept_untagged(tmp_path: Path) -> None:
    with make(tmp_path / "o.db") as ob:
        ob.put(b"untaggable")
        ob.put(b"a 1")
        ob.flush()
        assert ob.tags() == {"a"}
        assert [e.payload for e in ob.next_batch(10)] == [b"untaggable", b"a 1"]


def test_an_outbox_without_a_tag_column_gets_its_rows_tagged_at_open(tmp_path: Path) -> None:
    # The file layout before tags: no tag column, no tag index.
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rank INTEGER NOT NULL,
            created REAL NOT NULL,
            payload BLOB NOT NULL
        );
        CREATE INDEX outbox_rank_id ON outbox (rank, id);
        PRAGMA user_version = 1;
        INSERT INTO outbox (rank, created, payload) VALUES (1, 1.0, x'612031');
        INSERT INTO outbox (rank, created, payload) VALUES (0, 2.0, x'6220');
        """
    )
    conn.close()
    with make(path) as ob:
        assert ob.tags() == {"a", "b"}
        assert [(e.priority, e.payload) for e in ob.next_batch(10)] == [
            ("event", b"b "),
            ("telemetry", b"a 1"),
        ]
    with Outbox(OutboxConfig(path=path)) as ob:  # without a tagger: tags as stored
        assert ob.tags() == {"a", "b"}
