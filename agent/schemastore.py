"""Schemas kept beside the outbox, so every stored update stays decodable.

An update names its schema by id. A reload or a new config changes the schema while older
updates still wait in the outbox; the backend can only decode them if their schema is published
too. This module writes each schema the agent uses to ``<state dir>/schemas/<id>.json``
(atomically) and reads them back. It does not publish (agent.uplink) nor choose what to purge
(agent.daemon).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from agent.errors import SchemaError
from agent.spime import Schema

log = logging.getLogger(__name__)


class SchemaStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, schema: Schema) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{schema.id}.json"
        if path.exists():
            return
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(schema.dumps())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self, schema_id: str) -> Schema | None:
        path = self.directory / f"{schema_id}.json"
        try:
            return Schema.from_json(path.read_bytes(), where=str(path))
        except FileNotFoundError:
            return None
        except (OSError, SchemaError) as err:
            log.warning("schema %s unreadable: %s", schema_id, err)
            return None
