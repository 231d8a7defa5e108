"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixtures every test folder may use by name.
from tests.support.broker import mosquitto  # noqa: F401
from tests.support.data import CORPUS, make_demo_drive
from tests.support.e2e import broker  # noqa: F401  (a broker that queues nothing)


def pytest_configure(config: pytest.Config) -> None:
    # Property tests check behaviour, not speed: hypothesis' per-example deadline and its
    # too-slow health check would turn a loaded 2-core machine into failures. The VM run
    # leaves the plugin out (importing hypothesis costs seconds under emulation).
    if config.pluginmanager.has_plugin("hypothesispytest"):
        from hypothesis import HealthCheck, settings

        settings.register_profile(
            "spime", deadline=None, suppress_health_check=[HealthCheck.too_slow]
        )
        settings.load_profile("spime")


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared corpus of real DBC files and logs; tests using it skip where it is absent."""
    if not (CORPUS / "MANIFEST.md").is_file():
        pytest.skip(f"corpus not present at {CORPUS}")
    return CORPUS


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A raw pseudo-terminal: the master's fd (the device side) and the slave's path (the
    port the agent opens), e.g. for a GNSS receiver."""
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture(scope="session")
def demo_drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60 s demo drive, written once per test session."""
    return make_demo_drive(tmp_path_factory.mktemp("drive") / "drive.log", 60)
