"""Schemas kept beside the outbox, so every stored update stays decodable.

An update names its schema by id. A reload or a new config changes the schema while older
updates still wait in the outbox; the backend can only decode them if their schema is published
too. This module writes each schema the agent uses to ``<state dir>/schemas/<id>.json``
(through agent.atomicfile, as durable as an outbox row) and reads them back. It does not
publish (agent.uplink) nor choose what to purge (agent.daemon).
"""

from __future__ import annotations

import logging
from pathlib import Path

from agent.atomicfile import write_atomic
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
        # Durable like an outbox row (file and folder fsynced): a stored update whose schema
        # file vanished in a power cut could never be decoded.
        write_atomic(path, schema.dumps().encode(), mode=0o644)

    def load(self, schema_id: str) -> Schema | None:
        path = self.directory / f"{schema_id}.json"
        try:
            return Schema.from_json(path.read_bytes(), where=str(path))
        except FileNotFoundError:
            return None
        except (OSError, SchemaError) as err:
            log.warning("schema %s unreadable: %s", schema_id, err)
            return None
