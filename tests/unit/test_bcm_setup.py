"""What the CAN_BCM reader asks of the kernel, built from a real config and catalog: which buses
use it, the per-message masks and timeouts, and the setup messages' layout (linux/can/bcm.h).
Reading from the kernel is tested on vcan (tests/vcan/test_bcm_vcan.py)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from agent.catalog import build_catalog
from agent.config import load_config
from agent.errors import ConfigError
from agent.sources import bcm
from tests.support.agentrun import write_config

DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Engine: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
 SG_ Counter : 60|4@1+ (1,0) [0|15] "" Vector__XXX
BO_ 2566844926 Fd: 16 ECU
 SG_ Wide : 96|32@1+ (1,0) [0|4294967295] "" Vector__XXX
BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_ "GenMsgCycleTime" BO_ 256 20;
"""


def _catalog(tmp_path: Path, extra: str = "", **bus: object):  # type: ignore[no-untyped-def]
    (tmp_path / "car.dbc").write_text(DBC)
    fields = {"name": "pt", "interface": "socketcan", "channel": "vcan0", "dbc": ["car.dbc"]}
    cfg = load_config(write_config(tmp_path / "agent.toml", [{**fields, **bus}], extra))
    return cfg, build_catalog(cfg).buses[0]


def test_masks_cover_the_selected_signals_only(tmp_path: Path) -> None:
    cfg, plan = _catalog(tmp_path, '[[signal]]\nmatch = "*.Speed"\n[[signal]]\nmatch = "Fd.*"\n')
    assert bcm.wanted(cfg.bus[0], plan.messages)
    by_id = {w.can_id: w for w in bcm.watches(cfg.bus[0], plan.messages)}
    engine, fd = by_id[0x100], by_id[0x18FEF1FE | 0x80000000]
    assert engine.mask == b"\xff\xff" + bytes(6) and not engine.fd
    # Three cycle times of the DBC's 20 ms; without a cycle time 1 s, capped at silent_after/2.
    assert engine.timeout == pytest.approx(0.06)
    assert fd.fd and len(fd.mask) == 64 and fd.mask[12:16] == b"\xff" * 4
    assert fd.timeout == pytest.approx(1.0)
    cfg, plan = _catalog(tmp_path, silent_after=0.5)
    timeouts = sorted(w.timeout for w in bcm.watches(cfg.bus[0], plan.messages))
    assert timeouts == pytest.approx([0.06, 0.25])


def test_which_buses_use_it(tmp_path: Path) -> None:
    cfg, plan = _catalog(tmp_path, change_detection="off")
    assert not bcm.wanted(cfg.bus[0], plan.messages)
    cfg, plan = _catalog(tmp_path, frame_id_mask=0x7F0)
    assert not bcm.wanted(cfg.bus[0], plan.messages)
    cfg, plan = _catalog(tmp_path, interface="virtual")
    assert not bcm.wanted(cfg.bus[0], plan.messages)


@pytest.mark.parametrize(
    "bus", [{"interface": "virtual"}, {"j1939": True}, {"frame_id_mask": 0x7F0}]
)
def test_forcing_it_where_it_cannot_work_is_a_config_error(
    tmp_path: Path, bus: dict[str, object]
) -> None:
    with pytest.raises(ConfigError, match=r"bus\[0\].*change_detection"):
        _catalog(tmp_path, change_detection="bcm", **bus)


def test_setup_layout_matches_linux_bcm_h() -> None:
    classic = bcm._setup(bcm.Watch(0x100, False, b"\xff" * 2 + bytes(6), 1.5))
    # bcm_msg_head is 56 bytes on 64-bit Linux (40 on 32-bit), then one can_frame.
    head = struct.calcsize("@3I4l2I")
    assert len(classic) == head + 16
    opcode, flags, count, s1, us1, s2, us2, can_id, nframes = struct.unpack_from("@3I4l2I", classic)
    assert (opcode, count, s1, us1, s2, us2, can_id, nframes) == (
        socket.CAN_BCM_RX_SETUP,
        0,
        1,
        500_000,
        0,
        0,
        0x100,
        1,
    )
    for flag in ("SETTIMER", "STARTTIMER", "RX_CHECK_DLC", "RX_ANNOUNCE_RESUME"):
        assert flags & getattr(socket, f"CAN_BCM_{flag}")
    assert not flags & socket.CAN_BCM_CAN_FD_FRAME
    assert classic[head + 8 :] == b"\xff" * 2 + bytes(6)
    fd = bcm._setup(bcm.Watch(0x80000001, True, bytes(64), 0.06))
    assert len(fd) == head + 72
    assert struct.unpack_from("@3I", fd)[1] & socket.CAN_BCM_CAN_FD_FRAME


def test_notification_layout_is_a_head_then_a_canfd_frame() -> None:
    """A notification is read as bcm_msg_head then a canfd_frame (a classic frame being its
    first 16 bytes): the record's fields fall where linux/can/bcm.h and linux/can.h put them."""
    head = struct.calcsize("@3I4l2I")
    assert bcm._RECORD.size == head + 72
    changed = struct.pack("@3I4l2I", socket.CAN_BCM_RX_CHANGED, 0, 0, 0, 0, 0, 0, 0x123, 1)
    changed += struct.pack("=IB3x8s", 0x123, 3, b"abc" + bytes(5)) + bytes(56)
    fields = bcm._RECORD.unpack(changed)
    assert fields[0] == socket.CAN_BCM_RX_CHANGED
    assert fields[7:11] == (0x123, 1, 0x123, 3)
    assert fields[12][:3] == b"abc"
