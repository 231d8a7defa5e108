"""Command envelopes and authorization: every refusal reason as a table, garbage as properties."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.envelope import (
    MAX_ENVELOPE_BYTES,
    generate_key,
    key_id,
    open_envelope,
    seal,
    seal_bytes,
)
from agent.control.remote import (
    EXPIRED,
    MAX_LIFETIME_MS,
    REJECTED,
    Authorizer,
    SeenIds,
    consent_change,
)

VIN = "WVWZZZ1JZXW000001"
NOW = 1_800_000_000_000
KEY = generate_key()
OTHER = generate_key()


def _auth(key: Any = KEY, seen: SeenIds | None = None) -> Authorizer:
    return Authorizer(
        vin=VIN,
        key=None if key is None else key.public_key(),
        seen=seen if seen is not None else SeenIds(),
        clock=lambda: NOW,
    )


def _cmd(
    command: str = "ping",
    args: dict[str, Any] | None = None,
    *,
    vin: str = VIN,
    key: Any = KEY,
    issued: int = NOW - 1000,
    expires: int = NOW + 60_000,
    command_id: str = "c1",
) -> bytes:
    return seal(
        key,
        vin=vin,
        command=command,
        args=args,
        issued=issued,
        expires=expires,
        command_id=command_id,
    )[1]


def _envelope(payload: bytes, **change: Any) -> bytes:
    doc = json.loads(seal_bytes(KEY, payload))
    doc.update(change)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def _tamper_payload() -> bytes:
    doc = json.loads(_cmd())
    payload = base64.b64decode(doc["payload"]).replace(b'"ping"', b'"snapshot"')
    doc["payload"] = base64.b64encode(payload).decode()
    return json.dumps(doc).encode()


def _reason(data: bytes, auth: Authorizer | None = None) -> tuple[str, str | None]:
    d = (auth or _auth()).decide(data)
    assert d.command is None and d.response is not None
    return d.response.status, d.response.reason


REFUSALS = [
    ("no key installed", _cmd(), None, REJECTED, "disabled"),
    ("not JSON", b"\xff\xfe garbage", KEY, REJECTED, "malformed"),
    ("JSON but not an object", b"[1, 2]", KEY, REJECTED, "malformed"),
    ("truncated", _cmd()[:40], KEY, REJECTED, "malformed"),
    ("oversized", b" " * (MAX_ENVELOPE_BYTES + 1), KEY, REJECTED, "oversized"),
    ("bare command, no envelope", b'{"id":"x","command":"ping"}', KEY, REJECTED, "unsigned"),
    ("empty signature", _envelope(b"{}", sig=""), KEY, REJECTED, "unsigned"),
    ("signed by another key", _cmd(key=OTHER), KEY, REJECTED, "wrong_key"),
    (
        "other key, our key id",
        _envelope(b"x", kid=key_id(KEY.public_key()), sig=json.loads(_cmd(key=OTHER))["sig"]),
        KEY,
        REJECTED,
        "bad_signature",
    ),
    ("payload changed after signing", _tamper_payload(), KEY, REJECTED, "bad_signature"),
    ("short signature", _envelope(b"{}", sig="AAAA"), KEY, REJECTED, "bad_signature"),
    ("signature not base64", _envelope(b"{}", sig="!!"), KEY, REJECTED, "bad_signature"),
    ("unknown envelope key", _envelope(b"{}", extra=1), KEY, REJECTED, "malformed"),
    ("wrong version", _envelope(b"{}", v=2), KEY, REJECTED, "malformed"),
    ("signed payload not JSON", seal_bytes(KEY, b"\x00\x01"), KEY, REJECTED, "malformed"),
    ("signed payload lacks keys", seal_bytes(KEY, b'{"id":"a"}'), KEY, REJECTED, "malformed"),
    (
        "issued is a float",
        seal_bytes(
            KEY,
            json.dumps(
                {
                    "id": "a",
                    "vin": VIN,
                    "command": "ping",
                    "args": {},
                    "issued": 1.5,
                    "expires": NOW + 1,
                }
            ).encode(),
        ),
        KEY,
        REJECTED,
        "malformed",
    ),
    ("wrong VIN", _cmd(vin="WVWZZZ1JZXW000002"), KEY, REJECTED, "wrong_vin"),
    ("expired", _cmd(issued=NOW - 120_000, expires=NOW - 60_000), KEY, EXPIRED, "expired"),
    ("expires before issued", _cmd(issued=NOW, expires=NOW - 1), KEY, REJECTED, "malformed"),
    (
        "lives too long",
        _cmd(issued=NOW, expires=NOW + MAX_LIFETIME_MS + 1),
        KEY,
        REJECTED,
        "lifetime",
    ),
    (
        "issued in the future",
        _cmd(issued=NOW + 3_600_000, expires=NOW + 3_700_000),
        KEY,
        REJECTED,
        "not_yet_valid",
    ),
    ("an unknown command", _cmd("reboot"), KEY, REJECTED, "unknown_command"),
    ("diag with arguments", _cmd("diag", {"ecu": "ecm"}), KEY, REJECTED, "bad_args"),
    ("ping with arguments", _cmd("ping", {"x": 1}), KEY, REJECTED, "bad_args"),
    ("consent without lists", _cmd("consent", {"revoke": "location"}), KEY, REJECTED, "bad_args"),
    ("consent unknown category", _cmd("consent", {"revoke": ["gps"]}), KEY, REJECTED, "bad_args"),
    ("plan not an object", _cmd("plan", {"plan": [1]}), KEY, REJECTED, "bad_args"),
]


@pytest.mark.parametrize(
    ("data", "key", "status", "reason"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refusals(data: bytes, key: Any, status: str, reason: str) -> None:
    seen = SeenIds()
    assert _reason(data, _auth(key, seen)) == (status, reason)
    assert len(seen) == 0  # nothing refused is remembered as executed


def test_refusal_answers_carry_the_id_once_the_signature_verified() -> None:
    d = _auth().decide(_cmd(vin="WVWZZZ1JZXW000002", command_id="abc"))
    assert d.response is not None and d.response.id == "abc"
    assert json.loads(d.response.to_json())["status"] == "rejected"
    # Unverified input is never trusted for an id.
    assert _auth().decide(b"{}").response.id is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("ping", None),
        ("snapshot", None),
        ("resend", None),
        ("consent", {"revoke": ["location"]}),
        ("consent", {"grant": ["driving"], "revoke": ["location"]}),
        ("plan", {"plan": {"id": "p", "version": 1}}),
    ],
)
def test_valid_commands_are_executed_once(command: str, args: dict[str, Any] | None) -> None:
    seen = SeenIds()
    auth = _auth(seen=seen)
    data = _cmd(command, args)
    d = auth.decide(data)
    assert d.response is None and d.command is not None
    assert (d.command.command, d.command.args, d.command.vin) == (command, args or {}, VIN)
    assert "c1" in seen
    assert _reason(data, auth) == (REJECTED, "replayed")


def test_replay_memory_survives_a_restart_through_its_document() -> None:
    seen = SeenIds()
    assert _auth(seen=seen).decide(_cmd()).command is not None
    stored = json.loads(json.dumps(seen.to_doc()))
    again = _auth(seen=SeenIds.from_doc(stored))
    assert _reason(_cmd(), again) == (REJECTED, "replayed")


def test_replay_memory_is_bounded_and_refuses_rather_than_forgets() -> None:
    seen = SeenIds(limit=2)
    auth = _auth(seen=seen)
    for i in range(2):
        assert auth.decide(_cmd(command_id=f"c{i}")).command is not None
    assert _reason(_cmd(command_id="c9"), auth) == (REJECTED, "replay_memory_full")
    # Once the remembered ids expire they make room.
    seen.prune(NOW + 61_000)
    assert len(seen) == 0


def test_stored_replay_memory_with_junk_is_filtered() -> None:
    seen = SeenIds.from_doc({"a": 5, "b": "x", "c": True, "d": 7}, limit=1)
    assert "d" in seen and "a" not in seen and len(seen) == 1
    assert len(SeenIds.from_doc([1, 2])) == 0


@pytest.mark.parametrize(
    ("granted", "args", "allow", "expected"),
    [
        (["location", "driving"], {"revoke": ["location"]}, False, {"driving"}),
        (
            None,
            {"revoke": ["location"]},
            False,
            {"driving", "vehicle_health", "diagnostics", "coarse_location"},
        ),
        (["driving"], {"revoke": ["location"]}, False, {"driving"}),
        (["driving"], {"grant": ["location"]}, False, "not_allowed"),
        (["driving"], {"grant": ["driving"]}, False, {"driving"}),  # nothing new: no grant
        (["driving"], {"grant": ["location"]}, True, {"driving", "location"}),
        (["location", "coarse_location"], {"revoke": ["location"]}, False, {"coarse_location"}),
    ],
)
def test_consent_change(
    granted: list[str] | None, args: dict[str, Any], allow: bool, expected: Any
) -> None:
    got = consent_change(granted, args, allow_grant=allow)
    if isinstance(expected, str):
        assert isinstance(got, str) and got.startswith(expected)
    else:
        assert got == frozenset(expected)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_bytes_are_refused_never_raise(data: bytes) -> None:
    status, reason = _reason(data)
    assert status == REJECTED and reason in {"malformed", "unsigned", "wrong_key"}


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )
)
def test_garbage_json_is_refused(doc: Any) -> None:
    status, _ = _reason(json.dumps(doc).encode())
    assert status == REJECTED


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_flipped_byte_in_a_signed_envelope_never_executes(pos: int, xor: int) -> None:
    data = bytearray(_cmd())
    i = pos % len(data)
    data[i] ^= xor or 1
    assert _auth().decide(bytes(data)).command is None


def test_deep_nesting_is_malformed_not_a_crash() -> None:
    assert _reason(b"[" * 30_000 + b"]" * 30_000) == (REJECTED, "malformed")


def test_the_verified_bytes_are_the_ones_received() -> None:
    # Re-serialising the payload (other spacing, key order) would break the signature.
    cmd = open_envelope(_cmd(command_id="x"), KEY.public_key())
    assert cmd.id == "x" and cmd.expires == NOW + 60_000


def test_no_single_bit_flip_anywhere_in_an_envelope_executes() -> None:
    # Exhaustive where the property test samples: base64's unused low bits in a last character
    # once let an altered envelope open to the same signature.
    data = _cmd()
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            assert _auth().decide(bytes(flipped)).command is None, (i, bit)
