"""DBC loading: strict refusals name file, line and fix; lenient mode loads the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.decode import load_dbc, raw_decoder
from agent.errors import DbcError

HEAD = 'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'

GOOD = HEAD + (
    "BO_ 256 Engine: 8 ECU\n"
    ' SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX\n'
    ' SG_ Gear : 16|4@1+ (1,0) [0|15] "" Vector__XXX\n'
    "\n"
    'VAL_ 256 Gear 0 "P" 1 "R" 2 "N" 3 "D" ;\n'
)


def _dbc(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "car.dbc"
    p.write_text(text, encoding="cp1252")
    return p


def test_good_file_loads_strictly(tmp_path: Path) -> None:
    f = load_dbc(_dbc(tmp_path, GOOD))
    assert [m.name for m in f.messages] == ["Engine"] and f.warnings == []
    decode = raw_decoder(f.messages[0])
    assert decode(bytes([0x10, 0x27, 3, 0, 0, 0, 0, 0])) == {"Speed": 10000, "Gear": 3}
    # A short frame still yields the signals that fit.
    assert decode(bytes([0x10, 0x27])) == {"Speed": 10000}


DEFECTS = [
    ("unused VAL_", 'VAL_ 256 Nope 0 "x" ;\n', "VAL_", "delete the VAL_ line"),
    (
        "digit-first",
        'BO_ 300 Other: 8 ECU\n SG_ 0_COUNTER : 0|4@1+ (1,0) [0|15] "" X\n',
        "starts with a digit",
        "rename it",
    ),
    (
        "unflagged 29-bit",
        'BO_ 419360256 J1939ish: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] "" X\n',
        "not flagged extended",
        "bit 31 set",
    ),
    ("nameless comment", 'CM_ SG_ 256 "speed comment";\n', "names no signal", "add the signal"),
    (
        "bare fraction",
        'BO_ 301 F: 8 ECU\n SG_ T : 0|8@1+ (.25,-5) [0|1] "" X\n',
        "without its leading 0",
        "write 0.25",
    ),
    (
        "overlap",
        'BO_ 302 O: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] "" X\n SG_ B : 4|8@1+ (1,0) [0|1] "" X\n',
        "overlap",
        "correct their start bits",
    ),
]


@pytest.mark.parametrize(("label", "extra", "what", "fix"), DEFECTS, ids=[d[0] for d in DEFECTS])
def test_defects_are_refused_strictly_and_loaded_leniently(
    tmp_path: Path, label: str, extra: str, what: str, fix: str
) -> None:
    path = _dbc(tmp_path, GOOD + "\n" + extra)
    with pytest.raises(DbcError) as exc:
        load_dbc(path)
    (line,) = exc.value.problems
    assert line.startswith(f"{path}:") and what in line and fix in line
    assert "lenient_dbc = true" in line
    lineno = int(line.split(":")[1])
    assert 1 <= lineno <= len((GOOD + "\n" + extra).splitlines())
    f = load_dbc(path, lenient=True)
    assert len(f.warnings) == 1 and what in f.warnings[0]
    assert "Engine" in [m.name for m in f.messages]


def test_lenient_unflagged_id_becomes_extended_everywhere(tmp_path: Path) -> None:
    text = GOOD + (
        '\nBO_ 419360256 J: 8 ECU\n SG_ A : 0|8@1+ (1,0) [0|1] "" X\n\nVAL_ 419360256 A 1 "on" ;\n'
    )
    f = load_dbc(_dbc(tmp_path, text), lenient=True)
    j = next(m for m in f.messages if m.name == "J")
    assert j.is_extended_frame and j.frame_id == 419360256
    assert j.get_signal_by_name("A").choices[1] == "on"


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    text = GOOD + '\nVAL_ 256 Nope 0 "x" ;\nCM_ SG_ 256 "c";\n'
    with pytest.raises(DbcError) as exc:
        load_dbc(_dbc(tmp_path, text))
    assert len(exc.value.problems) == 2


def test_syntax_errors_name_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(DbcError, match=r"car.dbc:\d+: invalid DBC syntax at column"):
        load_dbc(_dbc(tmp_path, GOOD + "BO_ x y z\n"), lenient=True)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DbcError, match="cannot read DBC file"):
        load_dbc(tmp_path / "none.dbc")


def test_plain_messages_take_the_compiled_fast_path(tmp_path: Path) -> None:
    # The fast path calls a cantools internal: within the pinned range it must be taken (a
    # cantools that changed it would silently fall back to the slow path).
    from agent.decode import compiled_decoder

    msg = load_dbc(_dbc(tmp_path, GOOD)).messages[0]
    fast = compiled_decoder(msg, lambda _data: pytest.fail("slow path for a full frame"))
    assert fast is not None
    frame = bytes([0x10, 0x27, 3, 0, 0, 0, 0, 0])
    assert fast(frame) == msg.decode(frame, decode_choices=False, scaling=False)
