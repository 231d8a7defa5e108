"""The pure AT parser: transcripts in, events out; chunking, URCs and noise never matter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.modem.parser import AtParser, Echo, Event, Final, Info, Urc, response_prefix


def run(command: str | None, data: bytes, chunks: list[int] | None = None) -> list[Event]:
    p = AtParser()
    if command is not None:
        p.start(command)
    if chunks is None:
        return p.feed(data)
    out: list[Event] = []
    pos = 0
    for size in chunks:
        out += p.feed(data[pos : pos + size])
        pos += size
    return out + p.feed(data[pos:])


TRANSCRIPTS = [
    pytest.param("AT", b"\r\nOK\r\n", [Final(True, "OK")], id="ok"),
    pytest.param(
        "ATE0", b"ATE0\r\r\nOK\r\n", [Echo("ATE0"), Final(True, "OK")], id="ATE0-echoes-itself"
    ),
    pytest.param(
        "AT+CSQ",
        b"AT+CSQ\r\r\n+CSQ: 20,99\r\n\r\nOK\r\n",
        [Echo("AT+CSQ"), Info("+CSQ: 20,99"), Final(True, "OK")],
        id="echo-on",
    ),
    pytest.param(
        "AT+CPIN?",
        b"\r\n+CME ERROR: 10\r\n",
        [Final(False, "+CME ERROR: 10", 10)],
        id="cme-no-sim",
    ),
    pytest.param(
        "AT+CPIN?",
        b"\r\n+CME ERROR: SIM not inserted\r\n",
        [Final(False, "+CME ERROR: SIM not inserted", None)],
        id="cme-verbose",
    ),
    pytest.param("AT+FOO", b"\r\nERROR\r\n", [Final(False, "ERROR")], id="error"),
    pytest.param(
        "AT+CREG?",
        b"\r\n+CREG: 2\r\n\r\n+CREG: 0,5\r\n\r\nOK\r\n",
        [Urc("+CREG: 2"), Info("+CREG: 0,5"), Final(True, "OK")],
        id="creg-urc-vs-answer",
    ),
    pytest.param(
        "AT+CEREG?",
        b'\r\n+CEREG: 1,"1A2B","01C3D4E5",7\r\n+CEREG: 2,1,"1A2B","01C3D4E5",7\r\nOK\r\n',
        [
            Urc('+CEREG: 1,"1A2B","01C3D4E5",7'),
            Info('+CEREG: 2,1,"1A2B","01C3D4E5",7'),
            Final(True, "OK"),
        ],
        id="cereg-urc-with-location",
    ),
    pytest.param(
        "AT+CCID",
        b"\r\nRING\r\n+CCID: 89490200001234567890\r\n\r\n+CPIN: READY\r\nRDY\r\nOK\r\n",
        [
            Urc("RING"),
            Info("+CCID: 89490200001234567890"),
            Urc("+CPIN: READY"),
            Urc("RDY"),
            Final(True, "OK"),
        ],
        id="urcs-inside-response",
    ),
    pytest.param(
        "AT+CPIN?",
        b"\r\n+CPIN: SIM PIN\r\n\r\nOK\r\n",
        [Info("+CPIN: SIM PIN"), Final(True, "OK")],
        id="cpin-answer-not-urc",
    ),
    pytest.param(
        "AT+CIMI",
        b"\x00\xff\r\n2620\xfe10000000001\r\n\x1b\r\nOK\r\n",
        [Info("262010000000001"), Final(True, "OK")],
        id="noise-bytes-dropped",
    ),
    pytest.param(None, b"\r\n+CREG: 1\r\n", [Urc("+CREG: 1")], id="no-command-pending"),
    pytest.param(None, b"\r\nOK\r\n", [Urc("OK")], id="late-ok-is-not-a-result"),
]


@pytest.mark.parametrize(("command", "data", "expected"), TRANSCRIPTS)
def test_transcripts(command: str | None, data: bytes, expected: list[Event]) -> None:
    assert run(command, data) == expected


def test_split_lines_across_reads() -> None:
    data = b"AT+CSQ\r\r\n+CS" + b"Q: 2" + b"0,99\r" + b"\n\r\nO" + b"K\r\n"
    events = run("AT+CSQ", data, chunks=[3, 9, 5, 2, 1])
    assert events == [Echo("AT+CSQ"), Info("+CSQ: 20,99"), Final(True, "OK")]


def test_result_ends_the_command() -> None:
    p = AtParser()
    p.start("AT")
    assert p.feed(b"\r\nOK\r\n") == [Final(True, "OK")]
    assert p.pending is None
    assert p.feed(b"\r\n+CREG: 0,1\r\n") == [Urc("+CREG: 0,1")]


def test_overlong_line_is_dropped_and_counted() -> None:
    p = AtParser(max_line=32)
    p.start("AT+CSQ")
    events = p.feed(b"\r\n" + b"A" * 100 + b"\r\n+CSQ: 5,99\r\nOK\r\n")
    assert events == [Info("+CSQ: 5,99"), Final(True, "OK")]
    assert p.long_lines == 1


def test_noise_is_counted() -> None:
    p = AtParser()
    p.feed(b"\x00\x01\xff\r\n")
    assert p.noise_bytes == 3


@pytest.mark.parametrize(
    ("command", "prefix"),
    [("AT+CSQ", "+CSQ:"), ("AT+CREG?", "+CREG:"), ("AT+COPS=3,2", "+COPS:"), ("ATE0", None)],
)
def test_response_prefix(command: str, prefix: str | None) -> None:
    assert response_prefix(command) == prefix


# -- properties ------------------------------------------------------------------------------

RESPONSES = [
    ("AT+CSQ", ["+CSQ: 17,99"], "OK"),
    ("AT+CREG?", ["+CREG: 0,1"], "OK"),
    ("AT+COPS?", ['+COPS: 0,2,"26201",7'], "OK"),
    ("AT+CCID", ["+CCID: 89490200001234567890"], "OK"),
    ("AT+CIMI", ["262010000000001"], "OK"),
    ("AT+CPIN?", [], "+CME ERROR: 10"),
    ("AT+CESQ", ["+CESQ: 99,99,255,255,20,45"], "OK"),
]
# URCs that cannot be mistaken for any of the answers above.
URCS = [
    "RING",
    "RDY",
    "+CREG: 2",
    '+CEREG: 1,"1A2B","01C3D4E5",7',
    '+QIND: "csq",20,99',
    "+CGREG: 5",
    "SMS DONE",
    '+CMTI: "SM",3',
]


def transcript(command: str, lines: list[str], final: str, echo: bool) -> bytes:
    out = (command + "\r") if echo else ""
    for line in [*lines, final]:
        out += "\r\n" + line + "\r\n"
    return out.encode("ascii")


@settings(max_examples=200, deadline=None)
@given(
    case=st.sampled_from(RESPONSES),
    echo=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=20), max_size=30),
)
def test_any_chunking_gives_the_same_events(
    case: tuple[str, list[str], str], echo: bool, cuts: list[int]
) -> None:
    command, lines, final = case
    data = transcript(command, lines, final, echo)
    assert run(command, data, chunks=cuts) == run(command, data)


@settings(max_examples=200, deadline=None)
@given(
    case=st.sampled_from(RESPONSES),
    inserts=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.sampled_from(URCS)), max_size=6
    ),
)
def test_inserted_urcs_are_separated_out(
    case: tuple[str, list[str], str], inserts: list[tuple[int, str]]
) -> None:
    command, lines, final = case
    body = list(lines)
    for pos, urc in inserts:
        body.insert(min(pos, len(body)), urc)
    events = run(command, transcript(command, body, final, echo=False))
    clean = run(command, transcript(command, lines, final, echo=False))
    assert [e for e in events if not isinstance(e, Urc)] == clean
    assert sorted(e.text for e in events if isinstance(e, Urc)) == sorted(u for _, u in inserts)


@settings(max_examples=300, deadline=None)
@given(command=st.sampled_from([None, "AT", "AT+CSQ", "AT+CREG?"]), data=st.binary(max_size=400))
def test_garbage_never_crashes(command: str | None, data: bytes) -> None:
    p = AtParser(max_line=64)
    if command:
        p.start(command)
    for event in p.feed(data):
        assert isinstance(event, Echo | Info | Urc | Final)
        assert event.text and event.text.isprintable()
