"""Content masks for CAN_BCM checked against cantools' own decoding.

For every message of every DBC of the corpus, each bit of a frame is flipped in turn and the
frame decoded with cantools before and after: the bits that change a signal's value are the
truth a mask must match, whatever the byte order or multiplexing. The mask builder computes
layouts itself, so this catches any disagreement with cantools' bit numbering (Motorola's
sawtooth numbering in particular).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.decode import load_dbc
from agent.errors import DbcError
from agent.sources.bcmmask import content_mask, mask_bits
from tests.support.data import CORPUS, DEMO_DBC

CORPUS_DBCS = sorted(CORPUS.glob("dbc/**/*.[dD][bB][cC]")) if CORPUS.is_dir() else []


def _decode(message: Any, frame: bytes) -> dict[str, str] | None:
    """Raw values as text, or None when cantools cannot decode the frame."""
    try:
        values = message.decode(frame, decode_choices=False, scaling=False, allow_truncated=True)
    except Exception:  # a frame cantools cannot decode changes nothing that is decoded
        return None
    # repr tells -0.0 from 0.0 and takes NaN as equal to NaN, as the pipeline does.
    return {k: repr(v) for k, v in values.items()}


def _multiplexer_frames(message: Any) -> list[bytes] | None:
    """Frames carrying each multiplexer value a signal of ``message`` is defined for, encoded
    by cantools (every other signal 0), so that each branch's bits can be seen changing; None
    when cantools cannot build one that carries its signal (a signal overlapping its own
    multiplexer, for example): no truth to compare with then."""
    by_name = {s.name: s for s in message.signals}
    frames = []
    for sig in message.signals:
        for mux_id in sig.multiplexer_ids or ():
            values = {s.name: 0 for s in message.signals}
            values[sig.multiplexer_signal] = mux_id
            parent = by_name.get(sig.multiplexer_signal)
            # Cascaded multiplexing: the multiplexer itself must be carried.
            while parent is not None and parent.multiplexer_ids:
                values[parent.multiplexer_signal] = parent.multiplexer_ids[0]
                parent = by_name.get(parent.multiplexer_signal)
            try:
                frame = bytes(message.encode(values, scaling=False, strict=False))
            except Exception:
                return None
            if sig.name not in (_decode(message, frame) or {}):
                return None
            frames.append(frame)
    return frames


def changed_by_bit(message: Any) -> dict[int, set[str]] | None:
    """For each bit of ``message``'s frame, the signals whose decoded value changes (or
    appears or disappears) when that bit alone flips, in any of the base frames; None when
    cantools decodes none of them (a layout it cannot unpack) or cannot build them."""
    size = message.length
    found: dict[int, set[str]] = {b: set() for b in range(size * 8)}
    branches = _multiplexer_frames(message)
    if branches is None:
        return None
    decoded = False
    for base in [bytes(size), *branches]:
        before = _decode(message, base)
        if before is None:
            continue
        decoded = True
        for b in range(size * 8):
            flipped = bytearray(base)
            flipped[b // 8] ^= 1 << (b % 8)
            # A frame cantools cannot decode (a multiplexer value the DBC does not define)
            # loses every value: the pipeline counts it, so it is a change too.
            after = _decode(message, bytes(flipped)) or {}
            found[b].update(
                k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
            )
    return found if decoded else None


def multiplexers_of(message: Any, names: set[str]) -> set[str]:
    """The named signals and every multiplexer they depend on, as cantools declares them."""
    by_name = {s.name: s for s in message.signals}
    out = set(names)
    todo = list(names)
    while todo:
        parent = by_name[todo.pop()].multiplexer_signal
        if parent and parent not in out:
            out.add(parent)
            todo.append(parent)
    return out


def expected_bits(changed: dict[int, set[str]], message: Any, names: set[str]) -> set[int]:
    relevant = multiplexers_of(message, names)
    return {b for b, sigs in changed.items() if sigs & relevant}


def _selections(message: Any) -> list[set[str]]:
    names = [s.name for s in message.signals]
    picks = [set(names)] + [{n} for n in names]
    # Every other signal: a selection that is neither one signal nor all of them.
    if len(names) > 2:
        picks.append(set(names[::2]))
    return picks


def _check_message(message: Any) -> bool:
    """Whether the message could be checked (and was right)."""
    changed = changed_by_bit(message)
    if changed is None:
        return False
    for names in _selections(message):
        got = mask_bits(message, names)
        want = expected_bits(changed, message, names)
        assert got == want, (
            f"{message.name}: {sorted(names)}: extra bits {sorted(got - want)}, "
            f"missing bits {sorted(want - got)}"
        )
    return True


def _loaded(path: Path) -> list[Any]:
    try:
        return load_dbc(path, lenient=True).messages
    except DbcError:
        return []  # files cantools cannot load at all have no layout to compare with


@pytest.mark.skipif(not CORPUS_DBCS, reason="the shared corpus is not here")
@pytest.mark.parametrize("path", CORPUS_DBCS, ids=lambda p: str(p.relative_to(CORPUS)))
def test_masks_match_cantools_on_the_corpus(path: Path) -> None:
    messages = [m for m in _loaded(path) if 0 < m.length <= 64]
    checked = sum(_check_message(m) for m in messages)
    # Files whose layouts cantools cannot unpack at all are few; most messages must count.
    assert checked >= len(messages) // 2 or len(messages) < 4, f"{checked} of {len(messages)}"


def test_masks_match_cantools_on_the_demo_vehicle() -> None:
    assert all(_check_message(m) for m in _loaded(DEMO_DBC))


_MOTOROLA_AND_INTEL = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Mixed: 8 ECU
 SG_ BigA : 7|12@0+ (1,0) [0|4095] "" ECU
 SG_ BigB : 19|3@0- (1,0) [0|0] "" ECU
 SG_ LittleC : 33|9@1+ (1,0) [0|0] "" ECU
 SG_ BigD : 55|16@0+ (1,0) [0|0] "" ECU
BO_ 257 Muxed: 8 ECU
 SG_ Mux M : 0|4@1+ (1,0) [0|15] "" ECU
 SG_ Plain : 60|4@1+ (1,0) [0|15] "" ECU
 SG_ OnOne m1 : 15|8@0+ (1,0) [0|0] "" ECU
 SG_ OnTwo m2 : 8|10@1+ (1,0) [0|0] "" ECU
BO_ 259 EveryValue: 8 ECU
 SG_ Half M : 7|1@0+ (1,0) [0|1] "" ECU
 SG_ Low m0 : 8|8@1+ (1,0) [0|0] "" ECU
 SG_ High m1 : 16|8@1+ (1,0) [0|0] "" ECU
 SG_ Always : 24|8@1+ (1,0) [0|0] "" ECU
BO_ 258 Fd: 64 ECU
 SG_ Far : 500|12@1+ (1,0) [0|0] "" ECU
 SG_ FarBig : 487|12@0+ (1,0) [0|0] "" ECU
"""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("dbc") / "mixed.dbc"
    path.write_text(_MOTOROLA_AND_INTEL)
    return {m.name: m for m in load_dbc(path).messages}


def test_motorola_signal_spans_bytes_from_its_most_significant_bit(mixed: dict[str, Any]) -> None:
    # BigA: start bit 7 (byte 0's top bit), 12 bits: all of byte 0, the top nibble of byte 1.
    assert content_mask(mixed["Mixed"], ["BigA"]) == bytes([0xFF, 0xF0, 0, 0, 0, 0, 0, 0])


def test_multiplexed_signal_brings_its_multiplexer(mixed: dict[str, Any]) -> None:
    assert content_mask(mixed["Muxed"], ["OnOne"]) == bytes([0x0F, 0xFF, 0, 0, 0, 0, 0, 0])
    # A plain signal needs the multiplexer bits that can make the frame undecodable (Mux
    # defines 1 and 2 only), but none where every value is defined.
    assert content_mask(mixed["Muxed"], ["Plain"]) == b"\x0f" + bytes(6) + b"\xf0"
    assert content_mask(mixed["EveryValue"], ["Always"]) == bytes([0, 0, 0, 0xFF]) + bytes(4)
    assert content_mask(mixed["EveryValue"], ["High"]) == bytes([0x80, 0, 0xFF]) + bytes(5)


def test_fd_mask_and_padding(mixed: dict[str, Any]) -> None:
    mask = content_mask(mixed["Fd"], ["Far", "FarBig"])
    assert len(mask) == 64
    assert content_mask(mixed["Mixed"], ["BigD"], size=64)[8:] == bytes(56)
    assert content_mask(mixed["Fd"], []) == bytes(64)
    assert content_mask(mixed["Fd"], ["NoSuchSignal"]) == bytes(64)


def test_the_hand_written_messages_match_cantools(mixed: dict[str, Any]) -> None:
    assert all(_check_message(m) for m in mixed.values())


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_selection_matches_cantools(mixed: dict[str, Any], data: st.DataObject) -> None:
    message = data.draw(st.sampled_from(sorted(mixed.values(), key=lambda m: m.name)))
    names = data.draw(st.sets(st.sampled_from([s.name for s in message.signals])))
    changed = changed_by_bit(message)
    assert changed is not None
    want = expected_bits(changed, message, names)
    assert mask_bits(message, names) == want
    # The byte form carries exactly the same bits.
    mask = content_mask(message, names)
    assert {i * 8 + b for i, byte in enumerate(mask) for b in range(8) if byte >> b & 1} == want
    assert list(itertools.islice(mask, message.length, None)) == []
