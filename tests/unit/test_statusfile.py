"""The status file: atomic write, read back, human summary, stale and missing files."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.statusfile import META, read_status, render, run_status, write_status

DOC: dict[str, Any] = {
    "vin": "WVWZZZ1JZXW000001",
    "boot": "0123456789abcdef",
    "version": "0.1.0",
    "started": time.time() - 3600,
    "schema": "abcd",
    "buses": {"powertrain": "receiving", "body": "silent"},
    "pipeline": {"frames": 1200, "decoded": 1100, "decode_errors": 3, "updates": 17},
    "outbox": {
        "rows": 42,
        "bytes": 4096,
        "oldest_age": 95.5,
        "evicted_telemetry": 2,
        "evicted_event": 0,
        "expired": 1,
        "disk_full": False,
    },
    "uplink": {
        "state": "disconnected",
        "last_error": "TCP to broker:8883: connection refused",
        "published": 10,
        "acked": 9,
        "refused": 0,
        "in_flight": 1,
    },
    "modems": {
        "active": "sim2",
        "reason": {"code": "primary_unusable", "text": "primary sim1: SIM absent"},
        "primary": "sim1",
        "modems": {
            "sim1": {
                "report": {"sim": "absent", "registration": "not_registered"},
                "usable": False,
                "problem": {"code": "sim", "text": "SIM absent"},
            },
            "sim2": {
                "report": {"sim": "ready", "registration": "home", "signal_dbm": -73.0},
                "usable": True,
                "problem": None,
            },
        },
    },
    "consent": {"granted": ["driving", "coarse_location"]},
}


def test_round_trip_mode_and_no_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, DOC, interval=2.0)
    write_status(path, {**DOC, "vin": "1M8GDM9AXKP042788"}, interval=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    snap = read_status(path)
    assert snap.doc["vin"] == "1M8GDM9AXKP042788"
    assert snap.doc["outbox"] == DOC["outbox"]
    assert snap.interval == 2.0
    assert not snap.stale


def test_stale_after_three_intervals(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, DOC, interval=5.0)
    written = read_status(path).doc[META]["written"]
    assert not read_status(path, now=written + 14.0).stale
    assert read_status(path, now=written + 16.0).stale


def test_human_summary_names_the_important_facts(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, DOC)
    out = io.StringIO()
    assert run_status(path, out, as_json=False) == 0
    text = out.getvalue()
    for fact in (
        "WVWZZZ1JZXW000001",
        "connection: disconnected",
        "connection refused",
        "modem: sim2 (primary sim1: SIM absent)",
        "sim1: SIM absent",
        "-73 dBm",
        "outbox: 42 updates",
        "oldest 96s",
        "decode errors 3",
        "consent: granted driving, coarse_location",
        "body silent",
        "powertrain receiving",
    ):
        assert fact in text, fact
    assert "NOT" not in text


def test_json_prints_the_document(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, DOC)
    out = io.StringIO()
    assert run_status(path, out, as_json=True) == 0
    back = json.loads(out.getvalue())
    assert back["modems"] == DOC["modems"] and back["vin"] == DOC["vin"]


def test_old_file_says_the_agent_is_not_running(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(json.dumps({**DOC, META: {"written": time.time() - 60, "interval": 5.0}}))
    out = io.StringIO()
    assert run_status(path, out, as_json=False) == 1
    assert out.getvalue().splitlines()[0].startswith("AGENT SEEMS NOT TO BE RUNNING")
    assert run_status(path, io.StringIO(), as_json=True) == 1


def test_without_stamp_the_file_time_counts(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"vin": "WVWZZZ1JZXW000001"}))
    assert run_status(path, io.StringIO(), as_json=False) == 0
    old = time.time() - 3600
    os.utime(path, (old, old))
    out = io.StringIO()
    assert run_status(path, out, as_json=False) == 1
    assert "SEEMS NOT TO BE RUNNING" in out.getvalue()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no status file"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "does not hold a JSON object"),
    ],
)
def test_missing_or_broken_file_is_one_line(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    path = tmp_path / "status.json"
    if content is not None:
        path.write_bytes(content)
    out = io.StringIO()
    assert run_status(path, out, as_json=False) == 1
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0]


def test_sparse_document_renders(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, {"vin": "WVWZZZ1JZXW000001"})
    lines = render(read_status(path))
    assert any("not publishing" in line for line in lines)


def test_concurrent_reader_never_sees_a_partial_document(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    big = {**DOC, "padding": "x" * 200_000}
    write_status(path, big)
    stop = threading.Event()
    failure: list[BaseException] = []

    def writer() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                write_status(path, {**big, "n": n})
        except BaseException as exc:  # surfaced by the reader's loop below
            failure.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    try:
        # Keep reading until the reader has seen several distinct documents, i.e. it did
        # overlap the writer: how many reads that takes depends on scheduling, so the loop
        # waits on that condition (with a deadline) instead of counting reads.
        seen: set[int | None] = set()
        deadline = time.monotonic() + 60.0
        while len(seen) < 5:
            assert not failure, f"writer failed: {failure[0]!r}"
            assert time.monotonic() < deadline, f"reader saw only {sorted(map(str, seen))}"
            doc = json.loads(path.read_bytes())  # a torn file would not parse
            assert len(doc["padding"]) == 200_000
            seen.add(doc.get("n"))
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_power_line_names_state_reason_and_battery(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    now = time.time()
    power = {"state": "parked", "since": now - 120, "reason": "ignition off", "volts": 12.43}
    write_status(path, {"vin": "WVWZZZ1JZXW000001", "power": power})
    lines = render(read_status(path), now=now)
    assert "power: parked for 2min (ignition off); battery 12.43 V" in lines, lines


def test_a_flapping_broker_shows_as_retries_and_the_delay(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    link = {**DOC["uplink"], "connects": 4012, "attempts": 4020, "retries": 9, "retry_delay": 87.5}
    write_status(path, {**DOC, "uplink": link})
    out = io.StringIO()
    assert run_status(path, out, as_json=False) == 0
    text = out.getvalue()
    assert "reconnecting: 9 failed attempt(s) or dropped connection(s) in a row" in text
    assert "waiting 87.5 s" in text and "4012 connects of 4020 attempts" in text
    # A steady link says nothing of reconnecting.
    write_status(path, {**DOC, "uplink": {**link, "retries": 0, "retry_delay": None}})
    out = io.StringIO()
    assert run_status(path, out, as_json=False) == 0
    assert "reconnecting" not in out.getvalue()
