"""Where the repository, the demo vehicle and the shared corpus are; making demo drives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
DEMO_DBC = REPO / "dbc" / "demo_vehicle.dbc"


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
