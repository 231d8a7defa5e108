"""The capture extension of the wire format: the trigger travels in the header, shows in the
JSON, survives compression, and a decoder that does not know the flag refuses the update."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import WireFormatError
from agent.spime import (
    Schema,
    SignalDef,
    codec,
    decode_samples,
    decode_update,
    encode_update,
    peek_header,
)

BOOT = bytes.fromhex("0011223344556677")
VIN = "WVWZZZ1JZXW000001"
SCHEMA = Schema.build([SignalDef(0, "Speed", "int", scale=0.5), SignalDef(1, "Yaw", "f32")])
SAMPLES = [(1_700_000_000_000 + i, i % 2, i if i % 2 == 0 else 0.5) for i in range(40)]


def _capture(name: str = "hard_brake", t: int = 1_700_000_000_020) -> bytes:
    return encode_update(
        SCHEMA, boot=BOOT, seq=9, vin=VIN, samples=SAMPLES, event=True, trigger=(name, t)
    )


def test_json_of_a_capture_names_the_trigger_and_its_firing_time() -> None:
    doc = decode_update(_capture(), SCHEMA)
    assert doc["trigger"] == {"name": "hard_brake", "t": 1_700_000_000.02}
    assert doc["seq"] == 9 and len(doc["samples"]) == 40
    head = peek_header(_capture())
    assert (head.trigger, head.trigger_t, head.event) == ("hard_brake", 1_700_000_000_020, True)


def test_an_ordinary_update_has_no_trigger_key() -> None:
    payload = encode_update(SCHEMA, boot=BOOT, seq=1, vin=VIN, samples=SAMPLES)
    assert "trigger" not in decode_update(payload, SCHEMA)
    assert peek_header(payload).trigger is None


def test_a_decoder_without_the_trigger_flag_refuses_instead_of_misreading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The flags a decoder of the first wire format knew: it rejects every other bit.
    monkeypatch.setattr(codec, "_KNOWN_FLAGS", 0x07)
    with pytest.raises(WireFormatError, match="unknown flags 0x0[89a-f]"):
        decode_samples(_capture(), SCHEMA)
    plain = encode_update(SCHEMA, boot=BOOT, seq=1, vin=VIN, samples=SAMPLES)
    assert len(decode_samples(plain, SCHEMA)[1]) == 40


@pytest.mark.parametrize("cut", [1, 5, 12])
def test_a_truncated_trigger_header_is_an_error(cut: int) -> None:
    payload = _capture()
    head_end = len(payload) - len(payload.split(b"hard_brake", 1)[1]) + 1
    with pytest.raises(WireFormatError):
        peek_header(payload[: head_end - cut])


@pytest.mark.parametrize("name", ["", "x" * 65])
def test_trigger_names_are_bounded(name: str) -> None:
    with pytest.raises(ValueError):
        _capture(name)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=16), st.integers(0, 2**44), st.booleans())
def test_round_trip(name: str, t: int, compress: bool) -> None:
    payload = encode_update(
        SCHEMA, boot=BOOT, seq=3, vin=VIN, samples=SAMPLES, trigger=(name, t), compress=compress
    )
    head, samples = decode_samples(payload, SCHEMA)
    assert (head.trigger, head.trigger_t) == (name, t)
    assert samples == [(a, b, c) for a, b, c in SAMPLES]
