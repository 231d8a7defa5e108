"""Helpers to write configs and run the real CLI (in this process or as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

VIN = "WVWZZZ1JZXW000001"


def write_config(path: Path, buses: list[dict[str, Any]], extra: str = "") -> Path:
    lines = ["[vehicle]", f'vin = "{VIN}"', ""]
    for bus in buses:
        lines.append("[[bus]]")
        for key, value in bus.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and lists are TOML
        lines.append("")
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def cli(
    *args: str, timeout: float = 300, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``spime-agent ARGS`` as a subprocess of this Python."""
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=stdin is None,
        input=stdin,
        timeout=timeout,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
