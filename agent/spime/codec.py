"""Binary spime updates: encode a batch of samples, decode it back, read its header.

The byte layout is documented in README.md ("Wire format"). An update is self-contained: with
the schema its header names, it decodes on its own (no state carried between updates). This
module is pure (standard library only: struct, zlib); it does not batch, sample or send.

A sample is a tuple ``(t_ms, signal_id, raw)``: Unix time in milliseconds, the schema id of the
signal, and its raw value (an int for integer-coded signals, a float for IEEE float signals).
"""

from __future__ import annotations

import math
import operator
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import WireFormatError
from agent.spime.schema import Schema, SignalDef

VERSION = 1
FLAG_SNAPSHOT = 0x01
FLAG_DEFLATE = 0x02
FLAG_EVENT = 0x04
# The update is a triggered capture: the header carries the trigger's name and firing time.
# Decoders that predate it refuse the update ("unknown flags") instead of misreading it.
FLAG_TRIGGER = 0x08
_KNOWN_FLAGS = FLAG_SNAPSHOT | FLAG_DEFLATE | FLAG_EVENT | FLAG_TRIGGER
MAX_TRIGGER_NAME = 64
_FIXED = struct.Struct("<BB8s8s")  # version, flags, schema id, boot id
# Deflate pays off only above a few dozen bytes; below, its own framing costs more than it saves.
_DEFLATE_MIN = 48
# What the agent can write at most: [updates] max_samples is at most 1,000,000, and a sample
# costs at most 24 body bytes (signal id 5, value 10, its own time group 9). A decoder refuses
# anything larger, before spending time or memory on it.
MAX_SAMPLES = 1_000_000
MAX_BODY_BYTES = 32 * 1024 * 1024

Sample = tuple[int, int, int | float]
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_BY_SID = operator.itemgetter(1)


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    snapshot: bool
    event: bool
    schema_id: str
    boot: str
    seq: int
    vin: str
    # A triggered capture: the trigger's name and its firing time (Unix ms); else None.
    trigger: str | None = None
    trigger_t: int | None = None


def uvarint_len(n: int) -> int:
    """Bytes of ``n`` (>= 0) as an unsigned LEB128 varint: the spime wire format's numbers and
    MQTT's remaining length are both written this way, 7 bits per byte."""
    return max(1, -(-n.bit_length() // 7))


def _uvarint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _svarint(out: bytearray, n: int) -> None:
    # Zigzag: small magnitudes of either sign become small unsigned numbers.
    _uvarint(out, (n << 1) if n >= 0 else ((-n) << 1) - 1)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def uvarint(self) -> int:
        buf, pos, shift, n = self.buf, self.pos, 0, 0
        while True:
            if pos >= len(buf):
                raise WireFormatError("update truncated inside a number")
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                self.pos = pos
                return n
            shift += 7
            if shift > 640:
                raise WireFormatError("update has an over-long number")

    def svarint(self) -> int:
        n = self.uvarint()
        return (n >> 1) if not n & 1 else -((n + 1) >> 1)

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.buf):
            raise WireFormatError("update truncated")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk


def _kinds(schema: Schema) -> dict[int, str]:
    return {s.id: s.kind for s in schema.signals}


def encode_update(
    schema: Schema,
    *,
    boot: bytes,
    seq: int,
    vin: str,
    samples: Sequence[Sample],
    snapshot: bool = False,
    event: bool = False,
    compress: bool = True,
    kinds: Mapping[int, str] | None = None,
    trigger: tuple[str, int] | None = None,
) -> bytes:
    """Encode samples (in time order, or any order: groups are formed by equal consecutive
    timestamps) into one update. ``kinds`` may pass ``{id: kind}`` precomputed for speed.
    ``trigger`` marks a capture: ``(name, firing time in Unix ms)``."""
    if len(boot) != 8:
        raise ValueError("boot id must be 8 bytes")
    if trigger is not None and not 0 < len(trigger[0].encode()) <= MAX_TRIGGER_NAME:
        raise ValueError(f"trigger name must be 1 to {MAX_TRIGGER_NAME} bytes")
    kinds = kinds if kinds is not None else _kinds(schema)
    body = bytearray()
    t0 = samples[0][0] if samples else 0
    _uvarint(body, t0)
    # Consecutive samples with the same millisecond share one time stamp (a group).
    groups: list[list[tuple[int, int, int | float]]] = []
    last_t = None
    for s in samples:
        if s[0] != last_t:
            groups.append([s])
            last_t = s[0]
        else:
            groups[-1].append(s)
    _uvarint(body, len(groups))
    prev_t = t0
    prev_raw: dict[int, int] = {}
    pack_f32, pack_f64 = _F32.pack, _F64.pack
    put = body.append
    by_sid = _BY_SID
    # Varints are written inline below: this loop runs once per sample, and single-byte
    # numbers (the common case) then cost one append.
    for group in groups:
        t = group[0][0]
        d = t - prev_t
        prev_t = t
        z = (d << 1) if d >= 0 else ((-d) << 1) - 1
        if z < 0x80:
            put(z)
        else:
            _uvarint(body, z)
        n = len(group)
        if n < 0x80:
            put(n)
        else:
            _uvarint(body, n)
        if n > 1:
            group.sort(key=by_sid)
        prev_sid = 0
        for _, sid, raw in group:
            d = sid - prev_sid
            prev_sid = sid
            if d < 0x80:
                put(d)
            else:
                _uvarint(body, d)
            kind = kinds[sid]
            if kind == "int":
                # Delta to the same signal's previous value in this update: slowly changing
                # signals cost one byte.
                d = raw - prev_raw.get(sid, 0)  # type: ignore[operator, assignment]
                prev_raw[sid] = raw  # type: ignore[assignment]
                z = (d << 1) if d >= 0 else ((-d) << 1) - 1
                if z < 0x80:
                    put(z)
                else:
                    _uvarint(body, z)
            elif kind == "f32":
                body += pack_f32(raw)
            else:
                body += pack_f64(raw)
    flags = (FLAG_SNAPSHOT if snapshot else 0) | (FLAG_EVENT if event else 0)
    if trigger is not None:
        flags |= FLAG_TRIGGER
    payload = bytes(body)
    if compress and len(payload) >= _DEFLATE_MIN:
        co = zlib.compressobj(1, zlib.DEFLATED, -15)
        packed = co.compress(payload) + co.flush()
        if len(packed) < len(payload):
            payload = packed
            flags |= FLAG_DEFLATE
    head = bytearray(_FIXED.pack(VERSION, flags, bytes.fromhex(schema.id), boot))
    _uvarint(head, seq)
    vin_b = vin.encode("ascii")
    _uvarint(head, len(vin_b))
    head += vin_b
    if trigger is not None:
        name_b = trigger[0].encode()
        _uvarint(head, len(name_b))
        head += name_b
        _uvarint(head, trigger[1])
    return bytes(head) + payload


def _read_header(payload: bytes) -> tuple[Header, int, int]:
    if len(payload) < _FIXED.size:
        raise WireFormatError(f"update too short ({len(payload)} bytes)")
    version, flags, sid, boot = _FIXED.unpack_from(payload)
    if version != VERSION:
        raise WireFormatError(f"unknown update version {version} (this decoder reads {VERSION})")
    if flags & ~_KNOWN_FLAGS:
        raise WireFormatError(f"unknown flags 0x{flags:02x}")
    r = _Reader(payload, _FIXED.size)
    seq = r.uvarint()
    try:
        vin = r.take(r.uvarint()).decode("ascii")
    except UnicodeDecodeError:
        raise WireFormatError("VIN is not ASCII") from None
    trigger = trigger_t = None
    if flags & FLAG_TRIGGER:
        size = r.uvarint()
        if not 0 < size <= MAX_TRIGGER_NAME:
            raise WireFormatError(f"trigger name of {size} bytes (1 to {MAX_TRIGGER_NAME})")
        try:
            trigger = r.take(size).decode()
        except UnicodeDecodeError:
            raise WireFormatError("trigger name is not UTF-8") from None
        trigger_t = r.uvarint()
    head = Header(
        version=version,
        snapshot=bool(flags & FLAG_SNAPSHOT),
        event=bool(flags & FLAG_EVENT),
        schema_id=sid.hex(),
        boot=boot.hex(),
        seq=seq,
        vin=vin,
        trigger=trigger,
        trigger_t=trigger_t,
    )
    return head, flags, r.pos


def peek_header(payload: bytes) -> Header:
    """Read only the header (no schema needed): routing, de-duplication, schema lookup."""
    return _read_header(payload)[0]


def peek_schema_id(payload: bytes) -> str:
    if len(payload) < _FIXED.size:
        raise WireFormatError(f"update too short ({len(payload)} bytes)")
    return payload[2:10].hex()


def _inflate(body: bytes) -> bytes:
    """Inflate a raw DEFLATE body, refusing at once one that would exceed MAX_BODY_BYTES (a
    small hostile update can otherwise inflate to gigabytes)."""
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(body, MAX_BODY_BYTES + 1)
    except zlib.error as err:
        raise WireFormatError(f"compressed body is corrupt ({err})") from None
    if len(out) > MAX_BODY_BYTES:
        raise WireFormatError(f"compressed body inflates beyond {MAX_BODY_BYTES} bytes")
    if not d.eof:
        raise WireFormatError("compressed body is truncated")
    if d.unused_data:
        raise WireFormatError(f"{len(d.unused_data)} unexpected bytes after the compressed body")
    return out


def decode_samples(payload: bytes, schema: Schema) -> tuple[Header, list[Sample]]:
    """Decode an update to its header and raw samples; raise WireFormatError if it is damaged
    or written with another schema."""
    head, flags, pos = _read_header(payload)
    if head.schema_id != schema.id:
        raise WireFormatError(f"update uses schema {head.schema_id}, not {schema.id}")
    body = _inflate(payload[pos:]) if flags & FLAG_DEFLATE else payload[pos:]
    if len(body) > MAX_BODY_BYTES:
        raise WireFormatError(f"body larger than {MAX_BODY_BYTES} bytes")
    r = _Reader(body)
    t = r.uvarint()
    samples: list[Sample] = []
    prev_raw: dict[int, int] = {}
    by_id = schema.by_id
    groups = r.uvarint()
    if groups > MAX_SAMPLES:
        raise WireFormatError(f"update claims {groups} time groups (at most {MAX_SAMPLES})")
    for _ in range(groups):
        t += r.svarint()
        sid = 0
        n = r.uvarint()
        # The encoder writes no empty group: so groups and samples are bounded together.
        if n == 0 or len(samples) + n > MAX_SAMPLES:
            raise WireFormatError(
                "update has an empty time group" if n == 0 else f"more than {MAX_SAMPLES} samples"
            )
        for _ in range(n):
            sid += r.uvarint()
            sig = by_id.get(sid)
            if sig is None:
                raise WireFormatError(f"update names signal id {sid}, absent from the schema")
            raw: int | float
            if sig.kind == "int":
                raw = prev_raw.get(sid, 0) + r.svarint()
                prev_raw[sid] = raw
            elif sig.kind == "f32":
                raw = _F32.unpack(r.take(4))[0]
            else:
                raw = _F64.unpack(r.take(8))[0]
            samples.append((t, sid, raw))
    if r.pos != len(body):
        raise WireFormatError(f"{len(body) - r.pos} unexpected bytes after the samples")
    return head, samples


def decode_update(payload: bytes, schema: Schema) -> dict[str, Any]:
    """Decode an update to the JSON object the agent documents (and prints in --dry-run)."""
    head, samples = decode_samples(payload, schema)
    by_id = schema.by_id
    doc: dict[str, Any] = {
        "vin": head.vin,
        "boot": head.boot,
        "seq": head.seq,
        "schema": head.schema_id,
        "snapshot": head.snapshot,
    }
    if head.trigger is not None:
        doc["trigger"] = {"name": head.trigger, "t": (head.trigger_t or 0) / 1000}
    doc["samples"] = [_json_sample(t, by_id[sid], raw) for t, sid, raw in samples]
    return doc


def _json_sample(t_ms: int, sig: SignalDef, raw: int | float) -> dict[str, Any]:
    value = sig.physical(raw)
    name = sig.name
    if sig.format and isinstance(raw, int):
        # A trouble code names the ECU that reported it (agent.spime.dtc).
        return {"t": t_ms / 1000, "signal": name, "value": value, "ecu": sig.ecu(raw)}
    # JSON has no NaN or infinity: such a value is shown as null, and "nonfinite" says which
    # ("NaN", "Infinity", "-Infinity", spelled as JavaScript's Number() and Python's float()
    # read them). The update itself carries the float's bits unchanged.
    if isinstance(value, float) and not math.isfinite(value):
        return {
            "t": t_ms / 1000,
            "signal": name,
            "value": None,
            "nonfinite": _nonfinite_name(value),
        }
    return {"t": t_ms / 1000, "signal": name, "value": value}


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
