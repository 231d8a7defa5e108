"""Wire format: round trips, header, damage detection, schema identity."""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import SchemaError, WireFormatError
from agent.spime import (
    Schema,
    SignalDef,
    decode_samples,
    decode_update,
    encode_update,
    peek_header,
    peek_schema_id,
)

BOOT = bytes.fromhex("0011223344556677")
VIN = "WVWZZZ1JZXW000001"


def _schema(kinds: list[str]) -> Schema:
    return Schema.build(SignalDef(i, f"S{i}", k) for i, k in enumerate(kinds))  # type: ignore[arg-type]


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


@st.composite
def updates(draw: st.DrawFn) -> tuple[Schema, list[tuple[int, int, int | float]]]:
    kinds = draw(st.lists(st.sampled_from(["int", "f32", "f64"]), min_size=1, max_size=40))
    schema = _schema(kinds)
    t = draw(st.integers(0, 2**42))
    samples = []
    for _ in range(draw(st.integers(0, 200))):
        t += draw(st.integers(-50, 1000))  # time may step back a little between buses
        t = max(t, 0)
        sid = draw(st.integers(0, len(kinds) - 1))
        kind = kinds[sid]
        if kind == "int":
            raw: int | float = draw(st.integers(-(2**64), 2**64))
        elif kind == "f32":
            raw = _f32(draw(st.floats(width=32, allow_nan=False)))
        else:
            raw = draw(st.floats(allow_nan=False))
        samples.append((t, sid, raw))
    return schema, samples


def _grouped(samples: list[tuple[int, int, int | float]]) -> list[tuple[int, int, int | float]]:
    """What decoding gives back: runs of equal time kept in order, sorted by id inside a run."""
    out: list[tuple[int, int, int | float]] = []
    run: list[tuple[int, int, int | float]] = []
    for s in samples:
        if run and s[0] != run[-1][0]:
            out += sorted(run, key=lambda x: x[1])
            run = []
        run.append(s)
    return out + sorted(run, key=lambda x: x[1])


@settings(max_examples=300, deadline=None)
@given(updates(), st.booleans(), st.booleans(), st.integers(0, 2**40))
def test_round_trip_is_exact(upd, compress: bool, snapshot: bool, seq: int) -> None:
    schema, samples = upd
    payload = encode_update(
        schema, boot=BOOT, seq=seq, vin=VIN, samples=samples, snapshot=snapshot, compress=compress
    )
    head, back = decode_samples(payload, schema)
    assert (head.seq, head.vin, head.boot, head.snapshot) == (seq, VIN, BOOT.hex(), snapshot)
    assert back == _grouped(samples)
    for (_, _, a), (_, _, b) in zip(back, _grouped(samples), strict=True):
        assert type(a) is type(b)


@settings(max_examples=100, deadline=None)
@given(updates(), st.data())
def test_damaged_payloads_raise_wire_format_error(upd, data) -> None:
    schema, samples = upd
    payload = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=samples)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(WireFormatError):
        decode_samples(payload[:cut], schema)
    pos = data.draw(st.integers(0, len(payload) - 1))
    flipped = bytearray(payload)
    flipped[pos] ^= data.draw(st.integers(1, 255))
    # Any damage is either detected as WireFormatError or (inside a value) decodes to other
    # numbers: never another exception type. Integrity proper is the transport's job (TLS).
    with contextlib.suppress(WireFormatError):
        decode_samples(bytes(flipped), schema)


def test_header_is_readable_without_schema_and_event_flag_is_kept() -> None:
    schema = _schema(["int"])
    payload = encode_update(schema, boot=BOOT, seq=42, vin=VIN, samples=[(1000, 0, 5)], event=True)
    head = peek_header(payload)
    assert (head.seq, head.vin, head.event, head.snapshot) == (42, VIN, True, False)
    assert peek_schema_id(payload) == schema.id == head.schema_id


def test_wrong_schema_unknown_version_and_flags_are_refused() -> None:
    a, b = _schema(["int"]), _schema(["f32"])
    payload = encode_update(a, boot=BOOT, seq=1, vin=VIN, samples=[(1, 0, 1)])
    with pytest.raises(WireFormatError, match="schema"):
        decode_samples(payload, b)
    with pytest.raises(WireFormatError, match="version"):
        decode_samples(b"\x09" + payload[1:], a)
    with pytest.raises(WireFormatError, match="flags"):
        decode_samples(payload[:1] + b"\x80" + payload[2:], a)
    with pytest.raises(WireFormatError, match="unexpected bytes"):
        decode_samples(payload + b"\x00", a)


def test_json_view_applies_scale_offset_and_labels() -> None:
    schema = Schema.build(
        [
            SignalDef(0, "Vehicle.Speed", "int", 0.01, 0, "km/h"),
            SignalDef(1, "Gear", "int", choices={0: "P", 4: "D"}),
            SignalDef(2, "Coolant", "int", 1, -40, "degC"),
            SignalDef(3, "Alt", "f32"),
        ]
    )
    payload = encode_update(
        schema,
        boot=BOOT,
        seq=3,
        vin=VIN,
        samples=[
            (1767225600123, 0, 5012),
            (1767225600123, 1, 4),
            (1767225600124, 1, 9),
            (1767225600200, 2, 130),
            (1767225600200, 3, 12.5),
        ],
    )
    doc = decode_update(payload, schema)
    assert doc["vin"] == VIN and doc["seq"] == 3 and doc["boot"] == BOOT.hex()
    values = [(s["t"], s["signal"], s["value"]) for s in doc["samples"]]
    assert values == [
        (1767225600.123, "Vehicle.Speed", 5012 * 0.01),  # as cantools computes it
        (1767225600.123, "Gear", "D"),
        (1767225600.124, "Gear", 9),  # no label for 9: the number
        (1767225600.2, "Coolant", 90),
        (1767225600.2, "Alt", 12.5),
    ]
    assert isinstance(values[3][2], int)


def test_compression_pays_on_repetitive_batches_and_is_skipped_when_useless() -> None:
    schema = _schema(["int", "int"])
    samples = [(1000 + i * 10, i % 2, 100 + (i // 2) % 3) for i in range(1000)]
    packed = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=samples)
    plain = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=samples, compress=False)
    assert len(packed) < len(plain) / 3
    tiny = encode_update(schema, boot=BOOT, seq=1, vin=VIN, samples=[(1, 0, 1)])
    assert peek_header(tiny) and decode_samples(tiny, schema)[1] == [(1, 0, 1)]


def test_schema_id_is_a_content_hash() -> None:
    a = Schema.build([SignalDef(0, "A", "int", 0.5, 0, "V")])
    same = Schema.build([SignalDef(0, "A", "int", 0.5, 0, "V")])
    other = Schema.build([SignalDef(0, "A", "int", 0.25, 0, "V")])
    assert a.id == same.id != other.id
    assert Schema.from_json(a.dumps()).id == a.id
    # int 1 and float 1.0 scale give different cantools results (int vs float): both kept.
    assert Schema.build([SignalDef(0, "A", "int", 1.0)]).id != Schema.build([SignalDef(0, "A")]).id
    doc = a.to_json()
    doc["signals"][0]["unit"] = "A"
    with pytest.raises(SchemaError, match="does not match its content"):
        Schema.from_json(doc)
    with pytest.raises(SchemaError, match="not JSON"):
        Schema.from_json(b"{nope")
    with pytest.raises(SchemaError, match="kind"):
        Schema.from_json({"format": 1, "signals": [{"id": 0, "name": "x", "kind": "u7"}]})


@pytest.mark.parametrize(
    ("sig", "raw", "expected"),
    [
        (SignalDef(0, "a"), 7, 7),
        (SignalDef(0, "a", scale=2, offset=-3), 7, 11),
        (SignalDef(0, "a", scale=2.0, offset=0), 7, 14),
        (SignalDef(0, "a", scale=0.1, offset=0), 3, 3 * 0.1),
        (SignalDef(0, "a", "f32", scale=1, offset=0), 1.5, 1.5),
        (SignalDef(0, "a", "f64", scale=2, offset=1), 1.5, 4.0),
        (SignalDef(0, "a", choices={1: "ON"}), 1, "ON"),
        (SignalDef(0, "a", scale=0.5, choices={1: "ON"}), 2, 1.0),
    ],
)
def test_physical_follows_cantools_rules(sig: SignalDef, raw, expected) -> None:
    got = sig.physical(raw)
    assert got == expected and type(got) is type(expected)
    assert not (isinstance(got, float) and math.isnan(got))
