"""The shipped udev rules keep ModemManager off every AT port the agent owns."""

from __future__ import annotations

import re

from tests.support.data import REPO


def test_every_agent_port_is_ignored_by_modemmanager() -> None:
    rules = (REPO / "systemd" / "90-spime-modems.rules").read_text()
    lines = [line for line in rules.splitlines() if "SYMLINK" in line and not line.startswith("#")]
    assert len(lines) == 3
    for line in lines:
        assert re.search(r'SYMLINK\+="spime-modem\d"', line)
        assert 'ENV{ID_MM_PORT_IGNORE}="1"' in line, line
