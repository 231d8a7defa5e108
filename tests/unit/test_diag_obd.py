"""OBD-II tables and parsing, DTC codes, the schedule and the load cap (pure)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.diag.obd import (
    ObdError,
    chunks,
    mode01_request,
    negative,
    parse_dtcs,
    parse_mode01,
    parse_pid_key,
    supported,
)
from agent.diag.schedule import LoadCap, Schedule, estimate_load
from agent.spime import Schema, SignalDef, decode_update, encode_update
from agent.spime.dtc import dtc_code, dtc_raw


@pytest.mark.parametrize(
    ("dtc", "code"),
    [
        (0x030100, "P0301"),
        (0x042000, "P0420"),
        (0x412300, "C0123"),
        (0x9A0B00, "B1A0B"),
        (0xC10087, "U0100-87"),
        (0xFFFFFF, "U3FFF-FF"),
    ],
)
def test_dtc_codes(dtc: int, code: str) -> None:
    assert dtc_code(dtc) == code


@pytest.mark.parametrize(
    ("payload", "values"),
    [
        (bytes.fromhex("410d57"), {0x0D: 87}),
        (bytes.fromhex("410c1f40 0d57 05 82".replace(" ", "")), {0x0C: 8000, 0x0D: 87, 0x05: 130}),
        (bytes.fromhex("41a6000012d6"), {0xA6: 4822}),
        (bytes.fromhex("4100be3fa813"), {0x00: 0xBE3FA813}),
        (bytes.fromhex("410d570000"), {0x0D: 87}),  # padding after the last PID
    ],
)
def test_mode01_answers(payload: bytes, values: dict[int, int]) -> None:
    assert parse_mode01(payload) == values


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x41", bytes.fromhex("420d57"), bytes.fromhex("410c1f"), bytes.fromhex("41ff00")],
)
def test_malformed_mode01_answers(payload: bytes) -> None:
    with pytest.raises(ObdError):
        parse_mode01(payload)


@given(st.binary(max_size=64), st.sampled_from([0x03, 0x07, 0x0A]))
def test_hostile_answers_raise_only_obd_error(payload: bytes, mode: int) -> None:
    for parse in (parse_mode01, lambda p: parse_dtcs(p, mode)):
        with contextlib.suppress(ObdError):
            parse(payload)


def test_supported_bitmap_and_dtc_lists() -> None:
    # 0xBE1FA813: the J1979 example bitmap (01, 03-07, 0C-10, 11, 13, 15, 1C, 1F, 20).
    assert supported(0x00, 0xBE1FA813) == {
        0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x0C, 0x0D, 0x0E, 0x0F, 0x10,
        0x11, 0x13, 0x15, 0x1C, 0x1F, 0x20,
    }  # fmt: skip
    assert parse_dtcs(bytes.fromhex("430201030420"), 0x03) == [0x0103, 0x0420]
    assert parse_dtcs(bytes.fromhex("4700"), 0x07) == []
    assert parse_dtcs(bytes.fromhex("4a0203010000"), 0x0A) == [0x0301]
    with pytest.raises(ObdError):
        parse_dtcs(bytes.fromhex("430301030420"), 0x03)
    assert negative(bytes.fromhex("7f0178"), 0x01) == 0x78
    assert negative(bytes.fromhex("410d00"), 0x01) is None


def test_requests_name_at_most_six_pids() -> None:
    assert list(chunks(range(14))) == [tuple(range(6)), tuple(range(6, 12)), (12, 13)]
    assert mode01_request([0x0C, 0x0D]) == b"\x01\x0c\x0d"
    with pytest.raises(ValueError):
        mode01_request(range(7))
    assert parse_pid_key("0d") == 0x0D
    with pytest.raises(ValueError, match="known"):
        parse_pid_key("99")


def test_schedule_joins_due_pids_and_drops_unsupported() -> None:
    s = Schedule({0x0C: 0.5, 0x0D: 1.0, 0x11: 1.0}, dtc_interval=10, now=0)
    assert s.restrict({0x0C, 0x0D}) == [0x11]
    assert s.due_pids(0) == [(0x0C, 0x0D)]
    assert s.dtc_due(0)
    s.dtc_read(3)
    assert not s.dtc_due(12) and s.dtc_due(13)
    assert s.due_pids(0.5) == [(0x0C,)]
    assert s.due_pids(1.0) == [(0x0C, 0x0D)]
    assert s.next_due() == 1.5


def test_load_cap_spaces_requests() -> None:
    cap = LoadCap(500_000, 0.01, now=0)  # 5000 bit/s, 2500 bits of burst
    assert cap.wait(0) == 0
    cap.charge(5000, 0)
    assert cap.wait(0) == pytest.approx(0.5)
    assert cap.wait(0.5) == 0
    assert cap.load(10) == pytest.approx(5000 / 10 / 500_000)


def test_estimated_load_of_the_readme_example() -> None:
    # obd_pids = { "0D" = 1.0, "0C" = 0.5 }, DTCs every 60 s, one ECU, 500 kbit/s.
    load = estimate_load({0x0D: 1.0, 0x0C: 0.5}, 60, 500_000)
    assert round(load * 100, 3) == 0.165  # % (135-bit frames: 6 a second, 6 a minute)
    assert estimate_load({0x0D: 1.0}, 0, 500_000, extended=True) == 2 * 160 / 500_000


def test_dtc_samples_show_their_code_and_ecu() -> None:
    sig = SignalDef(id=0, name="OBD.DTC.Stored.Set", choices={0x7E8: "ecm"}, format="dtc")
    schema = Schema.build([sig])
    assert Schema.from_json(schema.dumps()) == schema
    payload = encode_update(
        schema,
        boot=bytes(8),
        seq=1,
        vin="WVWZZZ1JZXW000001",
        samples=[(1000, 0, dtc_raw(0x7E8, 0x030100)), (1000, 0, dtc_raw(0x7E9, 0xC10087))],
    )
    samples = decode_update(payload, schema)["samples"]
    assert [(s["value"], s["ecu"]) for s in samples] == [("P0301", "ecm"), ("U0100-87", "7E9")]
