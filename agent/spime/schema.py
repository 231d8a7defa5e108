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
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.errors import SchemaError
from agent.spime.dtc import DTC_FORMAT, dtc_code, ecu_name, split_raw

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
    # How an integer is shown: "" as a number (or its label), "dtc" as a trouble code (the raw
    # value holds the ECU and the DTC, agent.spime.dtc; ``choices`` then names ECUs by CAN id).
    format: str = ""

    def physical(self, raw: int | float) -> Value:
        """The value cantools reports for this raw value (label, int or float), bit for bit.

        Mirrors cantools' conversion rules: a value-table label for ``int(raw)`` wins (never for
        NaN or an infinity, which have no integer part); scale 1 / offset 0 keeps
        the raw value; integral scale and offset on an integer signal stay integers; anything
        else is ``raw * scale + offset`` in float arithmetic, in that order.
        """
        if self.format == DTC_FORMAT and isinstance(raw, int):
            return dtc_code(split_raw(raw)[1])
        # NaN and the infinities (IEEE float signals) have no integer part: never a label.
        if self.choices and (isinstance(raw, int) or math.isfinite(raw)):
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
        if self.format:
            doc["format"] = self.format
        return doc

    @classmethod
    def from_json(cls, doc: Any, where: str) -> SignalDef:
        """One entry of a schema's ``signals``, checked field by field (it may come from the
        network): anything but the documented shape raises SchemaError naming the field."""
        if not isinstance(doc, Mapping):
            raise SchemaError(f"{where}: must be an object, not {_json_type(doc)}")
        unknown = sorted(str(k) for k in doc if k not in _SIGNAL_FIELDS)
        if unknown:
            raise SchemaError(f"{where}: unknown field {unknown[0]!r}")
        if "id" not in doc or "name" not in doc:
            raise SchemaError(f"{where}: needs an id and a name")
        sid = doc["id"]
        if not _is_int(sid) or not 0 <= sid <= MAX_SIGNAL_ID:
            raise SchemaError(f"{where}.id: must be an integer from 0 to {MAX_SIGNAL_ID}")
        kind = doc.get("kind", "int")
        if not isinstance(kind, str) or kind not in KINDS:
            raise SchemaError(f"{where}.kind: must be one of {', '.join(KINDS)}, not {kind!r}")
        scale, offset = doc.get("scale", 1), doc.get("offset", 0)
        for label, num in (("scale", scale), ("offset", offset)):
            if not _is_finite_number(num):
                raise SchemaError(f"{where}.{label}: must be a finite number")
        choices = doc.get("choices", {})
        if not isinstance(choices, Mapping):
            raise SchemaError(f"{where}.choices: must be an object, not {_json_type(choices)}")
        table: dict[int, str] = {}
        for key, label in choices.items():
            raw = _choice_key(key)
            if raw is None:
                raise SchemaError(f"{where}.choices: key {key!r} is not a decimal integer")
            table[raw] = _text(label, f"{where}.choices[{key!r}]")
        return cls(
            id=sid,
            name=_text(doc["name"], f"{where}.name", empty=False),
            kind=kind,  # type: ignore[arg-type]  # checked against KINDS above
            scale=scale,
            offset=offset,
            unit=_text(doc.get("unit", ""), f"{where}.unit"),
            choices=table,
            priority=_text(doc.get("priority", "telemetry"), f"{where}.priority"),
            source=_text(doc.get("source", ""), f"{where}.source"),
            category=_text(doc.get("category", ""), f"{where}.category"),
            format=_format(doc.get("format", ""), f"{where}.format", kind),
        )

    def ecu(self, raw: int) -> str | None:
        """The ECU a DTC sample's raw value names (its configured name or CAN id in hex)."""
        if self.format != DTC_FORMAT:
            return None
        return ecu_name(split_raw(raw)[0], dict(self.choices))


_SIGNAL_FIELDS = frozenset(
    (
        "id",
        "name",
        "kind",
        "scale",
        "offset",
        "unit",
        "choices",
        "priority",
        "source",
        "category",
        "format",
    )
)
FORMATS = ("", DTC_FORMAT)


def _format(x: Any, where: str, kind: str) -> str:
    if x not in FORMATS:
        raise SchemaError(f"{where}: must be one of {', '.join(repr(f) for f in FORMATS)}")
    if x and kind != "int":
        raise SchemaError(f"{where}: {x!r} needs kind int")
    return str(x)


# Ids travel as varints; a schema with ids beyond any real signal count is not one we wrote.
MAX_SIGNAL_ID = 2**32 - 1
# A schema is read from the network: refuse a document larger than any DBC could produce
# (a 10,000-signal schema is about 2 MB) before parsing it.
MAX_SCHEMA_BYTES = 16 * 1024 * 1024


def _json_type(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, Mapping):
        return "an object"
    if isinstance(x, (list, tuple)):
        return "a list"
    return type(x).__name__


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite_number(x: Any) -> bool:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        # An integer beyond the double range would overflow in ``raw * scale`` on decoding.
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _choice_key(key: Any) -> int | None:
    """A value-table key as written by to_json (a decimal integer string), or an int."""
    if _is_int(key):
        return int(key)
    if isinstance(key, str) and _DECIMAL.fullmatch(key):
        try:
            return int(key)
        except ValueError:  # more digits than Python converts
            return None
    return None


_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)")


def _text(x: Any, where: str, *, empty: bool = True) -> str:
    if not isinstance(x, str):
        raise SchemaError(f"{where}: must be a string, not {_json_type(x)}")
    if not x and not empty:
        raise SchemaError(f"{where}: must not be empty")
    try:
        x.encode("utf-8")
    except UnicodeEncodeError:
        # JSON may carry lone surrogates (\ud800); the schema's hash needs real text.
        raise SchemaError(f"{where}: is not valid Unicode text") from None
    return x


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
            dup = next(s.id for s in self.signals if by_id[s.id] is not s)
            raise SchemaError(f"schema: duplicate signal id {dup}")
        names = {s.name for s in self.signals}
        if len(names) != len(self.signals):
            seen: set[str] = set()
            for s in self.signals:
                if s.name in seen:
                    raise SchemaError(f"schema: duplicate signal name {s.name!r}")
                seen.add(s.name)
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
        """Parse a schema document; its declared id must match its content.

        The document may come from the network: whatever its shape, the only error raised is
        SchemaError, naming the field at fault.
        """
        if isinstance(data, (bytes, str)):
            if len(data) > MAX_SCHEMA_BYTES:
                raise SchemaError(f"{where}: larger than {MAX_SCHEMA_BYTES} bytes")
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError) as err:
                # ValueError covers bad JSON, bad UTF-8 and integers too long to convert;
                # RecursionError a document nested too deeply to parse.
                raise SchemaError(f"{where}: not JSON ({type(err).__name__}: {err})") from None
        else:
            doc = data
        if not isinstance(doc, Mapping):
            raise SchemaError(f"{where}: not a spime schema (a JSON object), but {_json_type(doc)}")
        fmt = doc.get("format")
        if not _is_int(fmt) or fmt != SCHEMA_FORMAT:
            raise SchemaError(f"{where}: not a spime schema of format {SCHEMA_FORMAT}")
        sigs = doc.get("signals")
        if not isinstance(sigs, list):
            raise SchemaError(f"{where}: signals: must be a list")
        declared = doc.get("id")
        if declared is not None and not isinstance(declared, str):
            raise SchemaError(f"{where}: id: must be a string")
        schema = cls(
            tuple(SignalDef.from_json(s, f"{where}: signals[{i}]") for i, s in enumerate(sigs))
        )
        if declared is not None and declared != schema.id:
            raise SchemaError(
                f"{where}: id {declared!r} does not match its content (hash {schema.id})"
            )
        return schema
