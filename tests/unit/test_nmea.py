"""NMEA stream reading: framing, checksums, talkers, epochs and the receiver's state."""

from __future__ import annotations

import functools
import math
import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy.geo import Fix
from agent.sources.nmea import MAX_LINE, NmeaReader


def s(body: str) -> bytes:
    """A sentence with its checksum (XOR of the bytes between '$' and '*') and CRLF."""
    cs = functools.reduce(operator.xor, body.encode(), 0)
    return f"${body}*{cs:02X}\r\n".encode()


RMC = "{t}RMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"
GGA = "{t}GGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
T0 = 764426119000  # 1994-03-23 12:35:19 UTC in ms


def epoch(talker: str = "GP", tod: str = "123519.00", date: str = "230394") -> bytes:
    return s(RMC.format(t=talker).replace("123519.00", tod).replace("230394", date)) + s(
        GGA.format(t=talker).replace("123519.00", tod)
    )


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD"])
def test_every_talker_gives_the_same_fix(talker: str) -> None:
    r = NmeaReader()
    (fix,) = r.feed(epoch(talker), now=0.0)
    assert fix == Fix(
        t=T0,
        lat=pytest.approx(48.1173),
        lon=pytest.approx(11.516666, abs=1e-6),
        altitude=545.4,
        speed=pytest.approx(22.4 * 1.852, abs=1e-3),
        heading=84.4,
        hdop=0.9,
        quality=1,
        satellites=8,
        accuracy=4.5,
    )
    assert r.state(0.0) == "fix"


@pytest.mark.parametrize(
    ("line", "counter"),
    [
        (s(RMC.format(t="GP"))[:-4] + b"00\r\n", "checksum"),  # wrong checksum
        (b"$" + RMC.format(t="GP").encode() + b"\r\n", "checksum"),  # checksum missing
        (b"\x00\xff garbage without a dollar\r\n", "malformed"),
        (s("GPRMC,1235x9,A,48x7.038,N,01131.000,E,,,230394,,"), "malformed"),
        (s("GPGGA,123519,4807.038,N,01131.000,E,one,08,0.9,545.4,M,,,,"), "malformed"),
        (s("GPRMC,123519,A,9907.038,N,01131.000,E,,,230394,,"), "malformed"),  # lat > 90
        (s("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"), "ignored"),
        (s("PUBX,00,foo"), "ignored"),  # proprietary
        (s("GPRMC,123519,A"), "malformed"),  # short: fields missing
        (s("GPRMC,123519,A,4807.038,N,01131.000,E"), "malformed"),
        (s("GPVTG"), "malformed"),
        (s("GPRMC,123519,A,4807.038,X,01131.000,E,,,230394,,"), "malformed"),  # hemisphere
        (s("GPGGA,123519,4807.038,N,01131.000,E,99,08,0.9,545.4,M,,,,"), "malformed"),
        (s("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,nan,M,,,,"), "malformed"),
        (s("GPRMC,123519,A,4807.038,N,01131.000,E,inf,0,230394,,"), "malformed"),
    ],
)
def test_bad_or_other_sentences_are_counted_and_give_no_fix(line: bytes, counter: str) -> None:
    r = NmeaReader()
    assert r.feed(line, 0.0) == []
    assert r.counters[counter] == 1
    assert r.counters["fixes"] == 0
    # the stream goes on
    assert len(r.feed(epoch(), 1.0)) == 1


def test_a_sentence_split_across_chunks_is_reassembled() -> None:
    data = epoch("GN")
    r = NmeaReader()
    fixes = [f for i in range(0, len(data), 7) for f in r.feed(data[i : i + 7], 0.0)]
    assert [f.t for f in fixes] == [T0]


def test_garbage_before_a_sentence_on_the_same_line_is_skipped() -> None:
    r = NmeaReader()
    assert len(r.feed(b"$GPRMC,12351" + epoch(), 0.0)) == 1


def test_an_overlong_line_is_dropped_up_to_its_end() -> None:
    r = NmeaReader()
    junk = b"$GP" + b"A" * (MAX_LINE * 3)
    out = r.feed(junk[: MAX_LINE + 10], 0.0) + r.feed(
        junk[MAX_LINE + 10 :] + s(RMC.format(t="GP")), 0.0
    )
    out += r.feed(s(GGA.format(t="GP")), 0.0)
    assert r.counters["overlong"] == 1
    # the RMC glued to the long line went with it; the GGA alone waits for its epoch to close
    assert out == [] and r.counters["no_date"] == 0
    assert len(r.feed(epoch(tod="123520.00"), 1.0)) == 1


def test_gga_alone_uses_the_last_date_and_closes_on_the_next_time() -> None:
    r = NmeaReader()
    r.feed(epoch(), 0.0)
    gga = GGA.format(t="GN").replace("123519.00", "123520.00")
    assert r.feed(s(gga), 1.0) == []  # epoch open: the RMC may still come
    (fix,) = r.feed(s(gga.replace("123520.00", "123521.00")), 2.0)
    assert fix.t == T0 + 1000


def test_vtg_and_gsa_fill_speed_heading_and_hdop_of_the_open_epoch() -> None:
    r = NmeaReader()
    rmc = "GPRMC,123519.00,A,4807.038,N,01131.000,E,,,230394,,"
    out = r.feed(s(rmc) + s("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K"), 0.0)
    out += r.feed(s("GNGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"), 0.0)
    out += r.feed(s("GPGGA,123519.00,4807.038,N,01131.000,E,1,08,,545.4,M,,,,"), 0.0)
    (fix,) = out
    assert (fix.speed, fix.heading, fix.hdop) == (10.2, 54.7, 1.3)


def test_void_rmc_and_zero_quality_gga_are_no_fix_never_the_last_position() -> None:
    r = NmeaReader()
    r.feed(epoch(), 0.0)
    void = "GPRMC,123520.00,V,,,,,,,230394,,"
    nofix = "GPGGA,123520.00,,,,,0,00,99.9,,,,,,"
    assert r.feed(s(void) + s(nofix), 1.0) == []
    assert r.state(1.0) == "no fix"


def test_receiver_silence_is_gnss_down_and_a_stale_fix_is_no_fix() -> None:
    r = NmeaReader(down_after=3.0)
    assert r.state(0.0) == "gnss down"
    r.feed(epoch(), 10.0)
    assert r.state(13.0) == "fix"
    assert r.state(13.1) == "gnss down"
    # sentences keep coming but no epoch closes: the old position is not a fix any more
    r.feed(s("GPGSV,1,1,00"), 13.5)
    assert r.state(13.5) == "no fix"


fields = st.lists(
    st.sampled_from(["", "A", "V", "N", "S", "E", "W", "1", "0", "nan", "inf", "-1", "x", "99"])
    | st.from_regex(r"[0-9]{1,7}(\.[0-9]{0,4})?", fullmatch=True),
    max_size=16,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["GPRMC", "GNGGA", "GLGSA", "GAVTG", "BDRMC", "GBGGA"]), fields)
def test_checksummed_sentences_with_any_fields_never_raise(head: str, parts: list[str]) -> None:
    r = NmeaReader()
    for f in r.feed(s(",".join([head, *parts])) + epoch(tod="000000.00"), 0.0):
        assert -90 <= f.lat <= 90 and -180 <= f.lon <= 180
        assert all(math.isfinite(v) for v in (f.speed, f.heading, f.altitude) if v is not None)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=120) | st.sampled_from([b"$", b"*", b"\n", b"\r\n", b","]), max_size=40
    )
)
def test_garbage_never_raises_and_never_invents_a_fix(chunks: list[bytes]) -> None:
    r = NmeaReader()
    for c in chunks:
        assert r.feed(c, 0.0) == []
    # the reader still works after any garbage once a line ends
    assert len(r.feed(b"\n" + epoch(), 1.0)) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=6), st.integers(0, 60))
def test_a_corrupted_byte_is_caught_by_the_checksum(flips: list[int], pos: int) -> None:
    line = bytearray(s(RMC.format(t="GP")))
    i = 1 + pos % (len(line) - 6)  # a byte between '$' and '*'
    for f in flips:
        line[i] ^= f or 1
    r = NmeaReader()
    r.feed(bytes(line) + s(GGA.format(t="GP")), 0.0)
    if bytes(line) != s(RMC.format(t="GP")):
        # one changed byte always changes the XOR: the RMC is rejected, the GGA has no date
        assert r.counters["fixes"] == 0
        assert r.counters["checksum"] + r.counters["malformed"] >= 1
