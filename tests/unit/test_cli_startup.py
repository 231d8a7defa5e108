"""`spime-agent run` starts without loading what only other commands need (start -> READY is
measured by scripts/bench --power); those commands still get their flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.cli import main

# Modules of activate, listen and command (and what they pull in) that run must not load.
OTHER_COMMANDS = (
    "agent.activation",
    "agent.brokerprobe",
    "agent.tlscheck",
    "agent.control.envelope",
    "agent.control.remote",
    "cryptography",
    "tomli_w",
)

PROBE = f"""
import sys
from agent.cli import build_parser
build_parser(["run", "--config", "agent.toml"])
from agent.daemon import Agent, effective_config, prepare
import agent.outbox, agent.uplink, agent.statusfile
names = {OTHER_COMMANDS!r}
loaded = [m for m in sys.modules if m in names or m.split(".")[0] in names]
print(" ".join(sorted(loaded)))
"""


def test_the_run_path_loads_nothing_of_the_other_commands() -> None:
    # A fresh interpreter: this test process has loaded everything already.
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == ""


@pytest.mark.parametrize(
    ("command", "flag"), [("activate", "--primary"), ("listen", "--brief"), ("command", "--ttl")]
)
def test_the_other_commands_still_have_their_flags(
    command: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert flag in capsys.readouterr().out
