"""Signed command envelopes: Ed25519 signing and verification of the exact bytes sent.

An envelope is UTF-8 JSON ``{"v": 1, "kid": "<16 hex>", "payload": "<base64>", "sig":
"<base64>"}``. ``payload`` is standard base64 of the signed bytes, themselves UTF-8 JSON
``{"id", "vin", "command", "args", "issued", "expires"}`` (times in unix milliseconds); ``sig``
is standard base64 of the 64-byte Ed25519 signature over exactly those bytes; ``kid`` is the
first 16 hex characters of SHA-256 of the raw 32-byte public key. The signature covers the bytes
as received, never a re-serialised JSON. The size is checked before anything is parsed.

This module only opens (or seals) an envelope and says why one cannot be opened; whether the
command may run (VIN, expiry, replay, consent) is agent.control.remote's decision. Cryptography
is the ``cryptography`` package's public Ed25519 API, never hand-rolled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.errors import ConfigError

VERSION = 1
# Envelopes larger than this are rejected before they are parsed. A plan (the largest command)
# is a few kilobytes; 64 KiB leaves room and bounds the work a hostile message can cause.
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_ID_CHARS = 128
MAX_COMMAND_CHARS = 64
_ENVELOPE_KEYS = frozenset({"v", "kid", "payload", "sig"})
_PAYLOAD_KEYS = frozenset({"id", "vin", "command", "args", "issued", "expires"})

# Reasons an envelope cannot be opened (also the keys of the rejection counters).
OVERSIZED = "oversized"
MALFORMED = "malformed"
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
WRONG_KEY = "wrong_key"


class EnvelopeError(Exception):
    """Why an envelope was refused: ``kind`` is one of the reason constants, ``detail`` says
    what exactly (never echoing more than a few characters of the hostile input)."""

    def __init__(self, kind: str, detail: str, command_id: str | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        # Known only when the signed payload was readable (e.g. to answer with its id).
        self.command_id = command_id


@dataclass(frozen=True)
class Command:
    """A command whose signature checked out (not yet authorized: see agent.control.remote)."""

    id: str
    vin: str
    command: str
    args: dict[str, Any] = field(hash=False)
    issued: int  # unix ms
    expires: int  # unix ms


# -- keys --------------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path, what: str = "command key") -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM SubjectPublicKeyInfo); ConfigError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: {what} is not a PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: {what} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted Ed25519 private key (PEM PKCS8); ConfigError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read private key: {err.strerror or err}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, not an Ed25519 private key")
    return key


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- sealing (sender side) ---------------------------------------------------------------------


def new_command_id() -> str:
    return os.urandom(12).hex()


def seal(
    key: Ed25519PrivateKey,
    *,
    vin: str,
    command: str,
    args: dict[str, Any] | None = None,
    issued: int,
    expires: int,
    command_id: str | None = None,
) -> tuple[str, bytes]:
    """Sign a command; returns (its id, the envelope bytes to publish)."""
    cid = command_id or new_command_id()
    payload = json.dumps(
        {
            "id": cid,
            "vin": vin,
            "command": command,
            "args": args or {},
            "issued": issued,
            "expires": expires,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return cid, seal_bytes(key, payload)


def seal_bytes(key: Ed25519PrivateKey, payload: bytes) -> bytes:
    """Wrap already-serialised payload bytes (also used by tests to sign odd payloads)."""
    envelope = {
        "v": VERSION,
        "kid": key_id(key.public_key()),
        "payload": base64.b64encode(payload).decode("ascii"),
        "sig": base64.b64encode(key.sign(payload)).decode("ascii"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


# -- opening (agent side) ----------------------------------------------------------------------


def _b64(value: Any, name: str, kind: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(kind, f"{name} must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(kind, f"{name} is not valid standard base64") from None
    # The decoder ignores the unused low bits of the last character: without this check several
    # different envelopes would open to the same bytes (an altered message that still verifies).
    if base64.b64encode(raw).decode("ascii") != value:
        raise EnvelopeError(kind, f"{name} is not canonical base64")
    return raw


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise EnvelopeError(MALFORMED, f"{what} is not UTF-8 (byte {err.start})") from None
    except (ValueError, RecursionError) as err:
        # RecursionError: deeply nested arrays are a valid way to attack a JSON parser.
        raise EnvelopeError(MALFORMED, f"{what} is not JSON ({type(err).__name__})") from None


def _int_ms(doc: dict[str, Any], name: str, cid: str | None) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EnvelopeError(MALFORMED, f"payload.{name} must be unix milliseconds", cid)
    return value


def _text(doc: dict[str, Any], name: str, limit: int, cid: str | None) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise EnvelopeError(
            MALFORMED, f"payload.{name} must be a string of 1 to {limit} characters", cid
        )
    return value


def open_envelope(data: bytes, key: Ed25519PublicKey, kid: str | None = None) -> Command:
    """Check size, shape, key id and signature of ``data``; return the signed command.

    Raises EnvelopeError with the reason. The payload is parsed only after its signature
    verified over the exact bytes received.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(OVERSIZED, f"{len(data)} bytes (limit {MAX_ENVELOPE_BYTES})")
    doc = _json(bytes(data), "envelope")
    if not isinstance(doc, dict):
        raise EnvelopeError(MALFORMED, "envelope is not a JSON object")
    if doc.get("sig") in (None, ""):
        raise EnvelopeError(UNSIGNED, "no signature")
    extra = sorted(set(doc) - _ENVELOPE_KEYS)
    if extra:
        raise EnvelopeError(MALFORMED, f"unknown envelope keys: {', '.join(extra)[:80]}")
    if doc.get("v") != VERSION:
        raise EnvelopeError(MALFORMED, f"envelope version must be {VERSION}")
    expected = kid or key_id(key)
    if doc.get("kid") != expected:
        shown = doc.get("kid")
        shown = shown[:16] if isinstance(shown, str) else type(shown).__name__
        raise EnvelopeError(WRONG_KEY, f"key id {shown!r} is not this car's command key")
    payload = _b64(doc.get("payload"), "payload", MALFORMED)
    sig = _b64(doc.get("sig"), "sig", BAD_SIGNATURE)
    if len(sig) != 64:
        raise EnvelopeError(BAD_SIGNATURE, f"signature is {len(sig)} bytes, not 64")
    try:
        key.verify(sig, payload)
    except InvalidSignature:
        raise EnvelopeError(BAD_SIGNATURE, "signature does not verify") from None
    return _command(payload)


def _command(payload: bytes) -> Command:
    doc = _json(payload, "payload")
    if not isinstance(doc, dict):
        raise EnvelopeError(MALFORMED, "payload is not a JSON object")
    raw_id = doc.get("id")
    cid = raw_id[:MAX_ID_CHARS] if isinstance(raw_id, str) and raw_id else None
    missing = sorted(_PAYLOAD_KEYS - set(doc))
    if missing:
        raise EnvelopeError(MALFORMED, f"payload lacks {', '.join(missing)}", cid)
    extra = sorted(set(doc) - _PAYLOAD_KEYS)
    if extra:
        raise EnvelopeError(MALFORMED, f"unknown payload keys: {', '.join(extra)[:80]}", cid)
    cid = _text(doc, "id", MAX_ID_CHARS, cid)
    args = doc["args"]
    if not isinstance(args, dict):
        raise EnvelopeError(MALFORMED, "payload.args must be a JSON object", cid)
    return Command(
        id=cid,
        vin=_text(doc, "vin", 17, cid),
        command=_text(doc, "command", MAX_COMMAND_CHARS, cid),
        args=args,
        issued=_int_ms(doc, "issued", cid),
        expires=_int_ms(doc, "expires", cid),
    )
