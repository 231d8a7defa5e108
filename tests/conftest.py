"""Fixtures shared by every test folder: where the repository and the data corpus are."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Fixtures every test folder may use by name.
from tests.support.broker import mosquitto  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
DEMO_DBC = REPO / "dbc" / "demo_vehicle.dbc"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared corpus of real DBC files and logs; tests using it skip where it is absent."""
    if not (CORPUS / "MANIFEST.md").is_file():
        pytest.skip(f"corpus not present at {CORPUS}")
    return CORPUS


def make_demo_drive(out: Path, seconds: float) -> Path:
    """Write a demo drive (candump log of the demo vehicle) of ``seconds`` to ``out``."""
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "gen-demo-drive"),
            "--out",
            str(out),
            "--duration",
            str(seconds),
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def demo_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60 s demo drive, written once per test session."""
    return make_demo_drive(tmp_path_factory.mktemp("drive") / "drive.log", 60)
