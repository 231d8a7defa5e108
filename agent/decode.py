"""DBC files and frame decoding with cantools.

Loads DBC files strictly, or with documented lenient rules that repair or drop the common
real-world defects and warn about each. Every refusal is one line per problem naming the file,
the line, what is wrong and how to fix it. Also builds the per-message raw decoders the pipeline
calls. The only module that imports cantools; it does not choose signals (agent.catalog) or
read frames (agent.can_source).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cantools
from cantools.database import Database, Message
from cantools.database.errors import DecodeError

from agent.errors import DbcError

__all__ = [
    "DbcFile",
    "DecodeError",
    "Message",
    "compiled_decoder",
    "load_dbc",
    "raw_decoder",
    "signal_bits",
]

# cantools reads DBC files as cp1252 unless told otherwise; so do we, so line numbers agree.
_ENCODING = "cp1252"
_LENIENT_HINT = "or set lenient_dbc = true on the bus to load the rest of the file"

_BO = re.compile(r"^\s*BO_\s+(\d+)\s+(\w+)\s*:")
_SG = re.compile(r"^\s*SG_\s+(\w+)\b")
_VAL = re.compile(r"^\s*VAL_\s+(\d+)\s+(\w+)\b")
_CM_SG_NONAME = re.compile(r'^\s*CM_\s+SG_\s+\d+\s+"')
_BA_DEF_DEF_BOOL = re.compile(r'^\s*BA_DEF_DEF_\s+"[^"]*"\s+(true|false)\s*;', re.IGNORECASE)
_BARE_FRACTION = re.compile(r"(?<=[(,|\[])(\s*-?)\.(\d)")
_LEADING_DIGIT = re.compile(r"^\d")
_INDEPENDENT = "VECTOR__INDEPENDENT_SIG_MSG"
# Statements that name a message by id: its first number.
_FIRST_ID = re.compile(
    r"^(\s*(?:BO_|VAL_|CM_\s+BO_|CM_\s+SG_|BA_\s+\"[^\"]*\"\s+(?:BO_|SG_)|SIG_VALTYPE_|"
    r"SG_MUL_VAL_|BO_TX_BU_|SIG_GROUP_)\s+)(\d+)\b"
)
_MAX_LINES = 50
_SYNTAX = re.compile(r"Invalid syntax at line (\d+), column (\d+): \"?(.*?)\"?\s*$", re.DOTALL)


@dataclass
class DbcFile:
    """A loaded DBC: the cantools database plus the warnings lenient loading produced."""

    path: Path
    db: Database
    warnings: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[Message]:
        return list(self.db.messages)


@dataclass
class _Defect:
    line: int
    what: str
    fix: str


@dataclass
class _Scan:
    """What a line-level pass over the DBC text found, and the repaired text."""

    defects: list[_Defect] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    message_lines: dict[str, int] = field(default_factory=dict)
    signal_lines: dict[tuple[str, str], int] = field(default_factory=dict)


def _scan(text: str) -> _Scan:
    """Find the defects cantools refuses, and write a repaired copy of the text.

    Each defect found is repaired in ``lines`` in the way README's "Lenient DBC loading"
    documents; in strict mode only the defect list is used.
    """
    scan = _Scan()
    raw_lines = text.splitlines()
    signals: dict[int, set[str]] = {}
    current: int | None = None
    current_name = ""
    renames: dict[str, str] = {}
    dropped_ids: set[int] = set()
    # First pass: messages and signals, so VAL_ entries can be checked against them.
    for n, line in enumerate(raw_lines, 1):
        if m := _BO.match(line):
            current = int(m.group(1))
            signals.setdefault(current, set())
            scan.message_lines.setdefault(m.group(2), n)
            sg_name = current_name = m.group(2)
            if _LEADING_DIGIT.match(sg_name):
                renames[sg_name] = "_" + sg_name
                scan.defects.append(
                    _Defect(
                        n,
                        f'message name "{sg_name}" starts with a digit',
                        f'rename it (e.g. "_{sg_name}")',
                    )
                )
            frame_id = current
            if sg_name == _INDEPENDENT:
                pass  # cantools' own holder of unattached signals: skipped by cantools itself
            elif frame_id & 0x80000000:
                if frame_id & 0x7FFFFFFF > 0x1FFFFFFF:
                    dropped_ids.add(frame_id)
                    scan.defects.append(
                        _Defect(
                            n,
                            f"message {sg_name}: extended id 0x{frame_id & 0x7FFFFFFF:x} "
                            "has more than 29 bits",
                            "correct the id (lenient mode drops the message)",
                        )
                    )
            elif frame_id > 0x7FF:
                if frame_id > 0x1FFFFFFF:
                    dropped_ids.add(frame_id)
                    what = "is no CAN id (more than 29 bits)"
                    fix = "correct the id (lenient mode drops the message)"
                else:
                    what = "is more than 11 bits but not flagged extended"
                    fix = (
                        f"write it as {frame_id | 0x80000000} (bit 31 set marks a 29-bit id; "
                        "lenient mode reads it so)"
                    )
                scan.defects.append(_Defect(n, f"message {sg_name}: id 0x{frame_id:x} {what}", fix))
        elif (m := _SG.match(line)) and current is not None:
            name = m.group(1)
            signals[current].add(name)
            scan.signal_lines.setdefault((current_name, name), n)
            if _LEADING_DIGIT.match(name):
                renames[name] = "_" + name
                scan.defects.append(
                    _Defect(
                        n,
                        f'signal name "{name}" starts with a digit',
                        f'rename it (e.g. "_{name}")',
                    )
                )
            if _BARE_FRACTION.search(line):
                scan.defects.append(
                    _Defect(
                        n,
                        f"signal {name}: a number is written without its leading 0 (e.g. .25)",
                        "write 0.25",
                    )
                )
        elif line.strip() and not line.startswith((" ", "\t")):
            current = None
    # Second pass: statements referring to what the first pass found, and the repairs.
    rename_re = (
        re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, renames)) + r")\b") if renames else None
    )
    for n, line in enumerate(raw_lines, 1):
        out: str | None = line
        if _CM_SG_NONAME.match(line):
            scan.defects.append(
                _Defect(n, "signal comment (CM_ SG_) names no signal", "add the signal name")
            )
            out = None
        elif _BA_DEF_DEF_BOOL.match(line):
            scan.defects.append(
                _Defect(
                    n,
                    "attribute default is a bare true/false, which DBC does not allow",
                    'quote it ("true") or use 1/0',
                )
            )
            out = None
        elif m := _VAL.match(line):
            fid, sig = int(m.group(1)), m.group(2)
            if not line.rstrip().endswith(";"):
                scan.defects.append(
                    _Defect(n, f"value table (VAL_) for {sig} lacks its closing ;", "add ;")
                )
                out = line.rstrip() + " ;"
            if sig not in signals.get(fid, ()) or fid in dropped_ids:
                scan.defects.append(
                    _Defect(
                        n,
                        f"value table (VAL_) for {sig} in message {fid}, which has no such signal",
                        "delete the VAL_ line",
                    )
                )
                out = None
        elif (m := _FIRST_ID.match(line)) and int(m.group(2)) in dropped_ids:
            out = None
        if out is not None:
            if (m := _FIRST_ID.match(out)) is not None:
                # An unflagged 29-bit id is read as flagged, in every statement naming it.
                fid = int(m.group(2))
                if fid in signals and not fid & 0x80000000 and 0x7FF < fid <= 0x1FFFFFFF:
                    out = out[: m.start(2)] + str(fid | 0x80000000) + out[m.end(2) :]
            if _SG.match(out):
                out = _BARE_FRACTION.sub(lambda mm: mm.group(1) + "0." + mm.group(2), out)
            if rename_re is not None:
                out = rename_re.sub(lambda mm: renames[mm.group(1)], out)
        scan.lines.append(out if out is not None else "")
    # Signals of dropped messages must go too, or they attach to the message before.
    if dropped_ids:
        keep = True
        for i, line in enumerate(scan.lines):
            if m := _BO.match(raw_lines[i]):
                keep = int(m.group(1)) not in dropped_ids
            elif _SG.match(line) and not keep:
                scan.lines[i] = ""
    scan.defects.sort(key=lambda d: d.line)
    return scan


def signal_bits(sig: Any) -> list[int]:
    """Absolute bit positions (byte*8 + bit) a signal occupies, Intel or Motorola."""
    if sig.byte_order == "little_endian":
        return [sig.start + i for i in range(sig.length)]
    bits, pos = [], sig.start
    for _ in range(sig.length):
        bits.append(pos)
        # Motorola numbering walks down within a byte, then to the top bit of the next byte.
        pos = pos + 15 if pos % 8 == 0 else pos - 1
    return bits


def _layout_problems(db: Database, scan: _Scan, source: str) -> list[str]:
    """Overlapping and ill-fitting signals, one line each (cantools stops at the first)."""
    lines = []
    for msg in db.messages:
        size = msg.length * 8
        placed: list[tuple[Any, set[int]]] = []
        for sig in msg.signals:
            bits = set(signal_bits(sig))
            at = scan.signal_lines.get((msg.name, sig.name), scan.message_lines.get(msg.name, 0))
            if any(b >= size or b < 0 for b in bits):
                lines.append(
                    f"{source}:{at}: signal {sig.name} does not fit in message {msg.name} "
                    f"({msg.length} bytes); fix: correct its start bit, length or the message "
                    f"length, {_LENIENT_HINT}"
                )
            for other, obits in placed:
                if bits & obits and _coexist(sig, other):
                    lines.append(
                        f"{source}:{at}: signals {other.name} and {sig.name} overlap in message "
                        f"{msg.name}; fix: correct their start bits or lengths, {_LENIENT_HINT}"
                    )
            placed.append((sig, bits))
    return lines


def _coexist(a: Any, b: Any) -> bool:
    # Signals of different multiplexer values never share a frame, so they may share bits.
    if not a.multiplexer_ids or not b.multiplexer_ids:
        return True
    if a.multiplexer_signal != b.multiplexer_signal:
        return True
    return bool(set(a.multiplexer_ids) & set(b.multiplexer_ids))


def _cantools_problem(err: Exception, source: str, scan: _Scan) -> str:
    text = str(err).removeprefix("DBC: ").strip().strip('"')
    if m := _SYNTAX.search(text):
        snippet = m.group(3).replace(">>!<<", "").strip()
        return (
            f"{source}:{m.group(1)}: invalid DBC syntax at column {m.group(2)}: {snippet!r}; "
            "fix: correct the statement"
        )
    if m := re.search(r"in message (\w+)", text):
        line = scan.message_lines.get(m.group(1))
        if line:
            return f"{source}:{line}: {text}; fix: correct the message definition"
    return f"{source}: {text}"


def _load(text: str, *, strict: bool) -> Database:
    db = cantools.database.load_string(text, database_format="dbc", strict=strict)
    if not isinstance(db, Database):  # DBC text always gives a CAN database
        raise TypeError(f"cantools returned {type(db).__name__} for DBC text")
    return db


def _capped(lines: list[str], source: str) -> list[str]:
    if len(lines) <= _MAX_LINES:
        return lines
    return lines[:_MAX_LINES] + [f"{source}: ... and {len(lines) - _MAX_LINES} more problems"]


def load_dbc(path: Path, *, lenient: bool = False) -> DbcFile:
    """Load one DBC file. Strict: any defect refuses it (DbcError, one line per defect).
    Lenient: defects are repaired as documented and returned as warnings."""
    source = str(path)
    try:
        text = path.read_bytes().decode(_ENCODING, errors="replace")
    except OSError as err:
        raise DbcError(f"{source}: cannot read DBC file: {err.strerror or err}") from None
    scan = _scan(text)
    if scan.defects and not lenient:
        raise DbcError(
            *_capped(
                [
                    f"{source}:{d.line}: {d.what}; fix: {d.fix}, {_LENIENT_HINT}"
                    for d in scan.defects
                ],
                source,
            )
        )
    body = "\n".join(scan.lines) + "\n" if scan.defects else text
    layout: list[str] = []
    try:
        db = _load(body, strict=True)
    except Exception as strict_err:  # cantools raises several unrelated types for bad files
        try:
            db = _load(body, strict=False)
        except Exception as err:
            raise DbcError(_cantools_problem(err, source, scan)) from None
        # Only the layout checks differ between cantools' modes; it names the first problem,
        # we name them all (or fall back to its words where our check sees none).
        layout = _layout_problems(db, scan, source) or [_cantools_problem(strict_err, source, scan)]
        if not lenient:
            raise DbcError(*_capped(layout, source)) from None
    warnings = [f"{source}:{d.line}: {d.what}; loaded leniently ({d.fix})" for d in scan.defects]
    warnings += [line.split("; fix:")[0] + "; loaded leniently" for line in layout]
    return DbcFile(path=path, db=db, warnings=warnings)


def compiled_decoder(
    msg: Message, slow: Callable[[bytes], dict[str, Any]]
) -> Callable[[bytes], dict[str, Any]] | None:
    """A direct call of cantools' own compiled bit layout for a plain message, or None.

    ``Message.decode`` spends most of its time in Python layers around the same C unpacking
    (bitstruct); for a full-length frame of a message without multiplexing those layers add
    nothing. Frames of another length go to ``slow``. The result is checked against
    ``Message.decode`` on probe payloads and discarded on any difference, or if this cantools
    version lays its helpers out differently.

    This is the one use of a cantools internal (``cantools.database.utils.
    create_encode_decode_formats``): pyproject.toml pins cantools to the range tested with it,
    and tests/unit/test_dbc.py fails if the fast path stops being taken.
    """
    if msg.is_multiplexed() or msg.length == 0 or getattr(msg, "is_container", False):
        return None
    try:
        from cantools.database.utils import create_encode_decode_formats

        formats = create_encode_decode_formats(msg.signals, msg.length)
        big, little = formats.big_endian.unpack, formats.little_endian.unpack
    except Exception:
        return None
    has_big = any(s.byte_order == "big_endian" for s in msg.signals)
    has_little = any(s.byte_order == "little_endian" for s in msg.signals)
    length = msg.length
    # One closure per layout: this runs for every changed frame.
    run: Callable[[bytes], dict[str, Any]]
    if has_big and has_little:

        def run(data: bytes) -> dict[str, Any]:
            if len(data) != length:
                return slow(data)
            out: dict[str, Any] = big(data)
            out.update(little(data[::-1]))
            return out

    elif has_little:

        def run(data: bytes) -> dict[str, Any]:
            return little(data[::-1]) if len(data) == length else slow(data)  # type: ignore[no-any-return]

    else:

        def run(data: bytes) -> dict[str, Any]:
            return big(data) if len(data) == length else slow(data)  # type: ignore[no-any-return]

    probes = [bytes(length), b"\xff" * length, bytes((i * 37 + 11) & 0xFF for i in range(length))]
    for probe in probes:
        try:
            ok = run(probe) == msg.decode(probe, decode_choices=False, scaling=False)
        except Exception:
            ok = False
        if not ok:
            return None
    return run


def raw_decoder(msg: Message, *, truncated: bool = True) -> Callable[[bytes], dict[str, Any]]:
    """A function decoding a payload of ``msg`` to raw signal values (no scaling, no labels).

    Short payloads decode the signals that still fit (``truncated``); longer ones are cut to the
    message length, as cantools does. Raises DecodeError for what cannot be decoded at all.
    """
    decode = msg.decode

    def slow(data: bytes) -> dict[str, Any]:
        return decode(  # type: ignore[return-value]
            data, decode_choices=False, scaling=False, allow_truncated=truncated
        )

    return compiled_decoder(msg, slow) or slow
