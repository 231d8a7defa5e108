"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

# Fixtures every test folder may use by name.
from tests.support.broker import mosquitto  # noqa: F401
from tests.support.data import CORPUS, make_demo_drive
from tests.support.e2e import broker  # noqa: F401  (a broker that queues nothing)


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared corpus of real DBC files and logs; tests using it skip where it is absent."""
    if not (CORPUS / "MANIFEST.md").is_file():
        pytest.skip(f"corpus not present at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def demo_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60 s demo drive, written once per test session."""
    return make_demo_drive(tmp_path_factory.mktemp("drive") / "drive.log", 60)
