"""The real-world corpus: every DBC loads or is refused cleanly, and real drives replayed
through the agent give exactly the values cantools decodes itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.decode import load_dbc
from agent.errors import DbcError
from tests.support.agentrun import json_lines, write_config
from tests.support.data import CORPUS, cantools_changes


def _dbc_files(corpus: Path) -> list[Path]:
    return sorted(p for p in (corpus / "dbc").rglob("*") if p.suffix.lower() == ".dbc")


def test_every_corpus_dbc_loads_or_is_refused_with_located_lines(corpus: Path) -> None:
    files = _dbc_files(corpus)
    assert len(files) >= 90
    strict_ok = lenient_ok = 0
    for path in files:
        try:
            load_dbc(path)
            strict_ok += 1
            continue
        except DbcError as err:
            for line in err.problems:
                assert line.startswith(f"{path}:"), line
                assert "fix:" in line or "more problems" in line, line
                assert "\n" not in line
        f = load_dbc(path, lenient=True)
        assert f.warnings, path
        lenient_ok += 1
    # Manifest: 62 strict (cantools); our checks find the same files, the rest load leniently.
    assert strict_ok >= 60 and strict_ok + lenient_ok == len(files)


def _pairs() -> list[dict]:
    results = CORPUS / "results" / "pair_results.json"
    if not results.is_file():
        return []
    # MF4 needs python-can's optional asammdf extra; the J1939 id mask is tested elsewhere.
    return [p for p in json.loads(results.read_text()) if not p["log"].lower().endswith(".mf4")]


@pytest.mark.parametrize(
    "pair", _pairs(), ids=lambda p: Path(p["log"]).name + "+" + Path(p["dbc"]).stem
)
def test_real_drive_values_equal_cantools(corpus: Path, tmp_path: Path, capsys, pair: dict) -> None:
    log, dbc = corpus / pair["log"], corpus / pair["dbc"]
    try:
        load_dbc(dbc)
        lenient = False
    except DbcError:
        lenient = True
    cfg = write_config(
        tmp_path / "agent.toml",
        [
            {
                "name": "car",
                "interface": "replay",
                "log": str(log),
                "dbc": [str(dbc)],
                "lenient_dbc": lenient,
            }
        ],
        extra="[updates]\nsnapshot_interval = 0\n",
    )
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    updates = json_lines(capsys.readouterr().out)
    assert [u["seq"] for u in updates] == list(range(1, len(updates) + 1))
    got: dict[str, list[tuple[int, object]]] = {}
    for u in updates:
        for s in u["samples"]:
            got.setdefault(s["signal"], []).append((round(s["t"] * 1000), s["value"]))
    for series in got.values():
        series.sort(key=lambda x: x[0])
    expected = cantools_changes(log, load_dbc(dbc, lenient=lenient).db)
    for series in expected.values():
        series.sort(key=lambda x: x[0])
    assert expected, "the pair decodes nothing"
    assert got == expected
