"""Where the repository, the demo vehicle and the shared corpus are; making demo drives; what
cantools itself decodes from a log, for the tests that hold the agent's values to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import cantools

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
DEMO_DBC = REPO / "dbc" / "demo_vehicle.dbc"

# A two-message vehicle for reload, consent, command and plan tests: one health signal and one
# location signal, so a consent category can be granted or revoked on its own.
HEALTH_POS_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Health: 8 ECU
 SG_ Coolant : 0|8@1+ (1,-40) [-40|215] "degC" Vector__XXX
BO_ 257 Pos: 8 ECU
 SG_ Lat : 0|32@1- (1E-007,0) [-90|90] "deg" Vector__XXX
"""

# Engine.Speed on a classic frame and Fd.Wide at bytes 12-15 of a CAN FD frame with an extended
# id: live buses, the kernel's filters and CAN FD.
SPEED_FD_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Engine: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
BO_ 2566844926 Fd: 16 ECU
 SG_ Wide : 96|32@1+ (1,0) [0|4294967295] "" Vector__XXX
"""

# Engine.Speed and Engine.Temp (a signed byte with an offset) on one classic frame: the replay
# tests' car, to which each adds a second message of its own.
ENGINE_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Engine: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
 SG_ Temp : 56|8@1- (1,-40) [-40|200] "degC" Vector__XXX
"""


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


def cantools_changes(
    log: Path, db: cantools.database.Database
) -> dict[str, list[tuple[int, object]]]:
    """Each signal's changes of raw value in ``log``, as cantools decodes it frame by frame:
    (milliseconds, physical value or value-table label), by ``Message.Signal``."""
    # Imported here: the conftest imports this module, and the VM run starts faster without.
    import can
    import cantools

    by_key = {(m.frame_id, m.is_extended_frame): m for m in db.messages}
    last_raw: dict[str, object] = {}
    out: dict[str, list[tuple[int, object]]] = {}
    for frame in can.LogReader(str(log)):
        if frame.is_error_frame or frame.is_remote_frame:
            continue
        msg = by_key.get((frame.arbitration_id, frame.is_extended_id))
        if msg is None:
            continue
        data = bytes(frame.data)
        try:
            raw = msg.decode(data, decode_choices=False, scaling=False, allow_truncated=True)
            phys = msg.decode(data, allow_truncated=True)
        except cantools.database.DecodeError:
            continue
        for name, value in raw.items():
            key = f"{msg.name}.{name}"
            if last_raw.get(key, object()) != value:
                last_raw[key] = value
                v = phys[name]
                out.setdefault(key, []).append(
                    (int(frame.timestamp * 1000), str(v) if hasattr(v, "name") else v)
                )
    return out
