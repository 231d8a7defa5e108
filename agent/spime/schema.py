"""The spime schema: which small integer id stands for which signal, and how to read its value.

A schema is a JSON document listing the transmitted signals (id, wire name, value kind, scale,
offset, unit, value table, priority). Its id is a content hash carried in every update, so an
update can only be read with the schema it was written with. This module builds, hashes,
serialises and parses schemas, and turns a raw wire value into the physical value exactly as
cantools computes it. It knows nothing of DBC files or CAN (that is agent.decode's job).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.errors import SchemaError

SCHEMA_FORMAT = 1
Kind = Literal["int", "f32", "f64"]
KINDS: tuple[Kind, ...] = ("int", "f32", "f64")
Value = int | float | str


def _is_integer(x: int | float) -> bool:
    return isinstance(x, int) or (isinstance(x, float) and x.is_integer())


@dataclass(frozen=True, slots=True)
class SignalDef:
    """One transmitted signal. ``scale`` and ``offset`` keep their JSON number types."""

    id: int
    name: str
    kind: Kind = "int"
    scale: int | float = 1
    offset: int | float = 0
    unit: str = ""
    choices: Mapping[int, str] = field(default_factory=dict)
    priority: str = "telemetry"
    source: str = ""
    # Consent category (location, driving, ...): shown so a backend knows what it may hold.
    category: str = ""

    def physical(self, raw: int | float) -> Value:
        """The value cantools reports for this raw value (label, int or float), bit for bit.

        Mirrors cantools' conversion rules: a value-table label wins; scale 1 / offset 0 keeps
        the raw value; integral scale and offset on an integer signal stay integers; anything
        else is ``raw * scale + offset`` in float arithmetic, in that order.
        """
        if self.choices:
            label = self.choices.get(int(raw))
            if label is not None:
                return label
        scale, offset = self.scale, self.offset
        if scale == 1 and offset == 0:
            return raw
        if self.kind == "int" and _is_integer(scale) and _is_integer(offset):
            return raw * int(scale) + int(offset)
        return raw * scale + offset

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "name": self.name, "kind": self.kind}
        if not (self.scale == 1 and isinstance(self.scale, int)):
            doc["scale"] = self.scale
        if not (self.offset == 0 and isinstance(self.offset, int)):
            doc["offset"] = self.offset
        if self.unit:
            doc["unit"] = self.unit
        if self.choices:
            doc["choices"] = {str(k): v for k, v in sorted(self.choices.items())}
        if self.priority != "telemetry":
            doc["priority"] = self.priority
        if self.source:
            doc["source"] = self.source
        if self.category:
            doc["category"] = self.category
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str) -> SignalDef:
        try:
            kind = doc.get("kind", "int")
            if kind not in KINDS:
                raise SchemaError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
            scale, offset = doc.get("scale", 1), doc.get("offset", 0)
            for label, num in (("scale", scale), ("offset", offset)):
                if isinstance(num, bool) or not isinstance(num, (int, float)):
                    raise SchemaError(f"{where}: {label} must be a number")
            return cls(
                id=int(doc["id"]),
                name=str(doc["name"]),
                kind=kind,
                scale=scale,
                offset=offset,
                unit=str(doc.get("unit", "")),
                choices={int(k): str(v) for k, v in doc.get("choices", {}).items()},
                priority=str(doc.get("priority", "telemetry")),
                source=str(doc.get("source", "")),
                category=str(doc.get("category", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SchemaError(f"{where}: malformed signal entry ({err})") from None


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Schema:
    """An ordered set of signal definitions, identified by the hash of their content."""

    signals: tuple[SignalDef, ...]
    id: str = field(init=False)
    by_id: Mapping[int, SignalDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {s.id: s for s in self.signals}
        if len(by_id) != len(self.signals):
            raise SchemaError("schema: duplicate signal id")
        names = {s.name for s in self.signals}
        if len(names) != len(self.signals):
            raise SchemaError("schema: duplicate signal name")
        object.__setattr__(self, "by_id", by_id)
        body = {"format": SCHEMA_FORMAT, "signals": [s.to_json() for s in self.signals]}
        object.__setattr__(self, "id", hashlib.sha256(_canonical(body)).hexdigest()[:16])

    @classmethod
    def build(cls, signals: Iterable[SignalDef]) -> Schema:
        return cls(tuple(signals))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SCHEMA_FORMAT,
            "id": self.id,
            "signals": [s.to_json() for s in self.signals],
        }

    def dumps(self, indent: int | None = None) -> str:
        return json.dumps(self.to_json(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any], where: str = "schema") -> Schema:
        """Parse a schema document; its declared id must match its content."""
        if isinstance(data, (bytes, str)):
            try:
                doc = json.loads(data)
            except (ValueError, UnicodeDecodeError) as err:
                raise SchemaError(f"{where}: not JSON ({err})") from None
        else:
            doc = data
        if not isinstance(doc, Mapping) or doc.get("format") != SCHEMA_FORMAT:
            raise SchemaError(f"{where}: not a spime schema of format {SCHEMA_FORMAT}")
        sigs = doc.get("signals")
        if not isinstance(sigs, list):
            raise SchemaError(f"{where}: signals must be a list")
        schema = cls(
            tuple(SignalDef.from_json(s, f"{where}: signals[{i}]") for i, s in enumerate(sigs))
        )
        declared = doc.get("id")
        if declared is not None and declared != schema.id:
            raise SchemaError(
                f"{where}: id {declared!r} does not match its content (hash {schema.id})"
            )
        return schema
