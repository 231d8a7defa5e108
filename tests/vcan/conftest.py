"""Fixtures for tests on a real SocketCAN vcan0.

Every test in this folder is marked ``vcan`` and needs vcan0. Where it is missing the tests are
skipped, unless SPIME_REQUIRE_VCAN=1 (set by scripts/vcan-vm) makes that a failure, so CI cannot
skip them silently. As root on a kernel with the vcan module, vcan0 is created for the session
and removed afterwards. Fixtures here open python-can buses and drive links up and down; what
those buses should do is left to the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import can
import pytest

CHANNEL = "vcan0"
HERE = Path(__file__).resolve().parent
SKIP_REASON = "no SocketCAN here: run scripts/vcan-vm -- .venv/bin/pytest -m vcan"
# An interface with MTU 72 carries CAN FD frames; 16 means classic frames only.
CANFD_MTU = 72


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only the ones in this folder.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.vcan)


def vcan_required() -> bool:
    return os.environ.get("SPIME_REQUIRE_VCAN") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail when vcan is required (the VM must never skip these tests)."""
    if vcan_required():
        pytest.fail(f"{reason} (SPIME_REQUIRE_VCAN=1)", pytrace=False)
    pytest.skip(reason)


def ip_command() -> list[str] | None:
    """iproute2's ip, or busybox's when only that is installed."""
    if found := shutil.which("ip"):
        return [found]
    if found := shutil.which("busybox"):
        return [found, "ip"]
    return None


def run_ip(*args: str) -> None:
    ip = ip_command()
    if ip is None:
        unavailable("no 'ip' command to manage CAN links")
    proc = subprocess.run([*ip, *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"ip {' '.join(args)} failed: {proc.stderr.strip()}", pytrace=False)


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def link_mtu(name: str) -> int:
    return int(Path("/sys/class/net", name, "mtu").read_text())


def try_create_vcan0() -> bool:
    """Create vcan0 (root on a kernel with the vcan module); True if this session made it."""
    ip = ip_command()
    if os.geteuid() != 0 or ip is None:
        return False
    add = [*ip, "link", "add", "dev", CHANNEL, "type", "vcan"]
    if subprocess.run(add, capture_output=True, timeout=60).returncode != 0:
        return False
    run_ip("link", "set", "dev", CHANNEL, "mtu", str(CANFD_MTU))
    run_ip("link", "set", "dev", CHANNEL, "up")
    return True


@pytest.fixture(scope="session", autouse=True)
def vcan0() -> Iterator[str]:
    """The name of an up vcan0; skips (or fails, see module doc) where there is none."""
    created = False
    if not link_exists(CHANNEL):
        created = try_create_vcan0()
        if not link_exists(CHANNEL):
            unavailable(SKIP_REASON)
    yield CHANNEL
    if created:
        run_ip("link", "del", "dev", CHANNEL)


@pytest.fixture
def open_bus(vcan0: str) -> Iterator[Callable[..., can.BusABC]]:
    """Opens SocketCAN buses (CAN FD enabled, no config files) and shuts them all down after."""
    buses: list[can.BusABC] = []

    def _open(channel: str = vcan0, **kwargs: object) -> can.BusABC:
        bus = can.Bus(interface="socketcan", channel=channel, ignore_config=True, fd=True, **kwargs)
        buses.append(bus)
        return bus

    yield _open
    for bus in buses:
        bus.shutdown()


@pytest.fixture
def link_control(vcan0: str) -> Iterator[Callable[[str], None]]:
    """Sets vcan0 "up" or "down" (needs root); vcan0 is always up again afterwards."""
    if os.geteuid() != 0:
        unavailable("setting vcan0 up and down needs root")

    def _set(state: str) -> None:
        run_ip("link", "set", "dev", vcan0, state)

    yield _set
    run_ip("link", "set", "dev", vcan0, "up")


@pytest.fixture
def canfd_link(vcan0: str) -> str:
    """vcan0, if its MTU lets CAN FD frames through."""
    if link_mtu(vcan0) < CANFD_MTU:
        # A deliberate choice of the caller (scripts/vcan-vm --no-fd), so never a failure.
        pytest.skip(f"{vcan0} is classic CAN only (mtu {link_mtu(vcan0)})")
    return vcan0


@dataclass(frozen=True)
class ScratchLink:
    """A vcan interface made for one test."""

    name: str

    def set(self, state: str) -> None:
        """Sets the link "up" or "down"."""
        run_ip("link", "set", "dev", self.name, state)

    def delete(self) -> None:
        if link_exists(self.name):
            run_ip("link", "del", "dev", self.name)


@pytest.fixture
def scratch_vcan() -> Iterator[ScratchLink]:
    """A fresh, up vcan interface of the test's own (needs root); deleted afterwards."""
    if os.geteuid() != 0:
        unavailable("creating vcan interfaces needs root")
    link = ScratchLink(f"vcan{uuid.uuid4().hex[:6]}")
    run_ip("link", "add", "dev", link.name, "type", "vcan")
    try:
        run_ip("link", "set", "dev", link.name, "up")
        yield link
    finally:
        link.delete()


@pytest.fixture
def canplayer() -> str:
    """Path of can-utils' canplayer."""
    found = shutil.which("canplayer")
    if found is None:
        unavailable("canplayer not installed (apt-get install can-utils)")
    return found
