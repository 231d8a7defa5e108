"""Hostile input to the stdlib decoder: schemas of any shape, non-finite floats, inflation bombs."""

from __future__ import annotations

import json
import math
import struct
import time
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import UpdatesConfig
from agent.errors import SchemaError, WireFormatError
from agent.spime import Schema, SignalDef, decode_samples, decode_update, encode_update
from agent.spime.codec import FLAG_DEFLATE, MAX_BODY_BYTES, MAX_SAMPLES

BOOT = bytes(8)
VIN = "WVWZZZ1JZXW000001"

# Any JSON value: what a hostile or broken publisher can put on a schema topic.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["int", "f32", "f64", "\ud800", "1", "-1", "01"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["id", "name", "kind", "scale", "offset", "unit", "choices", "priority", "x", "1"]
            )
            | st.text(max_size=4),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


def _good_signal(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"S{i}", "kind": "f64", "choices": {"0": "off"}, "scale": 0.5}


@st.composite
def schema_docs(draw: st.DrawFn) -> Any:
    """Mostly schema-shaped documents with some fields replaced by anything: they reach the
    checks deep inside a signal entry, which wholly random JSON rarely does."""
    if draw(st.booleans()):
        return draw(json_values)
    signals: list[Any] = [_good_signal(i) for i in range(draw(st.integers(0, 3)))]
    for sig in signals:
        for key in draw(st.lists(st.sampled_from(sorted(sig) + ["unit", "source", "zz"]))):
            sig[key] = draw(json_values)
    if draw(st.booleans()):
        signals.append(draw(json_values))
    doc: dict[str, Any] = {
        "format": draw(st.sampled_from([1, 1, 1, True, 1.0, "1", 2])),
        "signals": signals,
    }
    if draw(st.booleans()):
        doc["id"] = draw(json_values)
    return doc


@settings(max_examples=300, deadline=None)
@given(schema_docs(), st.booleans())
def test_any_json_shape_is_a_schema_or_a_schema_error(doc: Any, as_bytes: bool) -> None:
    try:
        data = json.dumps(doc).encode() if as_bytes else doc
    except (ValueError, UnicodeEncodeError):
        data = doc
    try:
        schema = Schema.from_json(data)
    except SchemaError as err:
        assert err.problems[0].startswith("schema")
        return
    # What is accepted is a schema in full: it serialises, re-parses to itself and decodes.
    assert Schema.from_json(schema.dumps()) == schema
    samples = [(1, s.id, 0 if s.kind == "int" else 1.5) for s in schema.signals]
    payload = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=samples)
    assert len(decode_update(payload, schema)["samples"]) == len(samples)


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ('{"format": 1, "signals": [null]}', "schema: signals[0]: must be an object, not null"),
        (
            '{"format": 1, "signals": [{"id": 0, "name": "a", "choices": ["x"]}]}',
            "schema: signals[0].choices: must be an object, not a list",
        ),
        ('{"format": 1, "signals": [{"id": "0", "name": "a"}]}', "schema: signals[0].id"),
        ('{"format": 1, "signals": [{"id": 0, "name": 5}]}', "schema: signals[0].name"),
        ('{"format": 1, "signals": [{"id": 0, "name": "a", "scale": NaN}]}', ".scale"),
        ('{"format": 1, "signals": [{"id": 0, "name": "a", "wat": 1}]}', "unknown field 'wat'"),
        ('{"format": true, "signals": []}', "not a spime schema of format 1"),
        ('{"format": 1, "signals": {}}', "schema: signals: must be a list"),
        ("[" * 100_000, "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
    ],
)
def test_malformed_schemas_name_the_field(doc: str | bytes, where: str) -> None:
    with pytest.raises(SchemaError) as err:
        Schema.from_json(doc)
    assert where in str(err.value)


# -- NaN and infinities ------------------------------------------------------------------------


def test_nonfinite_floats_travel_bit_for_bit_and_show_as_valid_json() -> None:
    table = {0: "off", 1: "on"}
    schema = Schema.build(
        [
            SignalDef(0, "F32", "f32", choices=table),
            SignalDef(1, "F64", "f64", 2, 1, choices=table),
        ]
    )
    quiet_nan = struct.unpack("<d", bytes.fromhex("010000000000f87f"))[0]
    raws = [(1, 0, math.nan), (2, 0, math.inf), (3, 1, -math.inf), (4, 1, quiet_nan), (5, 1, 1.0)]
    payload = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=raws)
    _, back = decode_samples(payload, schema)
    assert [struct.pack("<d", r) for _, _, r in back] == [struct.pack("<d", r) for _, _, r in raws]
    doc = decode_update(payload, schema)
    text = json.dumps(doc, allow_nan=False)  # strict JSON: raises on a bare NaN
    shown = [(s["value"], s.get("nonfinite")) for s in json.loads(text)["samples"]]
    assert shown == [
        (None, "NaN"),
        (None, "Infinity"),
        (None, "-Infinity"),
        (None, "NaN"),
        ("on", None),
    ]
    # The spellings read back as the numbers in Python (and JavaScript's Number()).
    assert math.isinf(float("-Infinity")) and math.isnan(float("NaN"))


def test_a_finite_raw_whose_physical_value_overflows_is_shown_as_infinity() -> None:
    schema = Schema.build([SignalDef(0, "Big", "f64", 10.0)])
    payload = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=[(1, 0, 1e308)])
    (sample,) = decode_update(payload, schema)["samples"]
    assert sample == {"t": 0.001, "signal": "Big", "value": None, "nonfinite": "Infinity"}


# -- bounds --------------------------------------------------------------------------------------


def _with_body(schema: Schema, body: bytes, *, deflate: bool) -> bytes:
    head = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=[], compress=False)
    plain_body = head[-2:]  # t0 = 0, groups = 0
    assert plain_body == b"\x00\x00"
    head = head[:-2]
    if deflate:
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        body = co.compress(body) + co.flush()
        head = head[:1] + bytes([head[1] | FLAG_DEFLATE]) + head[2:]
    return head + body


def test_an_inflation_bomb_is_refused_at_once() -> None:
    schema = Schema.build([SignalDef(0, "A")])
    bomb = _with_body(schema, bytes(60 * 1024 * 1024), deflate=True)
    assert len(bomb) < 100_000
    started = time.process_time()
    with pytest.raises(WireFormatError, match="inflates beyond"):
        decode_update(bomb, schema)
    # Bounded by MAX_BODY_BYTES, not by the bomb: well under a second of CPU even when loaded.
    assert time.process_time() - started < 5


def test_counts_beyond_what_the_agent_writes_are_refused_before_the_work() -> None:
    schema = Schema.build([SignalDef(0, "A")])
    groups = bytearray(b"\x00")
    n = MAX_SAMPLES + 1
    while n > 0x7F:
        groups.append((n & 0x7F) | 0x80)
        n >>= 7
    groups.append(n)
    with pytest.raises(WireFormatError, match="time groups"):
        decode_samples(_with_body(schema, bytes(groups), deflate=False), schema)
    with pytest.raises(WireFormatError, match="empty time group"):
        decode_samples(_with_body(schema, b"\x00\x02\x00\x00\x00\x00", deflate=False), schema)
    with pytest.raises(WireFormatError, match="after the compressed body"):
        decode_samples(_with_body(schema, b"\x00\x00", deflate=True) + b"junk", schema)


def test_the_config_cannot_ask_for_updates_the_decoder_refuses() -> None:
    # [updates] max_samples bounds every update; the decoder's bound must cover its maximum.
    field = UpdatesConfig.model_fields["max_samples"]
    upper = next(m.le for m in field.metadata if hasattr(m, "le"))
    assert upper <= MAX_SAMPLES
    worst = upper * 24 + 32  # 24 body bytes a sample at most, plus t0 and the group count
    assert worst <= MAX_BODY_BYTES
