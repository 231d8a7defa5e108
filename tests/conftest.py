"""Fixtures shared by every test folder: where the repository and the data corpus are."""

from __future__ import annotations

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
