"""Smoke tests of python-can and can-utils on a real SocketCAN vcan0.

They pin down what the agent's CAN source relies on: delivery between sockets, kernel filters,
CAN FD and extended ids, what python-can raises when the link goes down or disappears (the
reopen logic depends on it), and candump files replayed by canplayer. They test the libraries
and the kernel, not the agent's own modules.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import can
import pytest

if TYPE_CHECKING:
    from tests.vcan.conftest import ScratchLink

# Generous: the suite runs under software emulation on a loaded machine.
RECV_TIMEOUT = 20.0
OpenBus = Callable[..., can.BusABC]


def classic(arbitration_id: int, data: bytes, *, extended: bool = False) -> can.Message:
    return can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=extended)


def receive(bus: can.BusABC) -> can.Message:
    msg = bus.recv(timeout=RECV_TIMEOUT)
    assert msg is not None, f"no frame within {RECV_TIMEOUT} s"
    return msg


def test_frames_sent_on_one_bus_arrive_on_another(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()

    tx.send(classic(0x123, b"\x01\x02\x03\x04\x05\x06\x07\x08"))

    msg = receive(rx)
    assert (msg.arbitration_id, msg.data, msg.dlc) == (0x123, bytearray(range(1, 9)), 8)
    assert not msg.is_extended_id
    assert not msg.is_fd
    assert msg.channel == "vcan0"
    # Stamped by the kernel on arrival: a wall-clock time, not zero.
    assert msg.timestamp > 1e9


def test_kernel_filter_drops_unmatched_ids(open_bus: OpenBus) -> None:
    tx = open_bus()
    rx = open_bus(can_filters=[{"can_id": 0x200, "can_mask": 0x7F0, "extended": False}])

    for arbitration_id in (0x100, 0x1FF, 0x210, 0x205):
        tx.send(classic(arbitration_id, b"\xaa"))

    # vcan keeps order, so had 0x100, 0x1FF or 0x210 passed the filter it would come first.
    assert receive(rx).arbitration_id == 0x205


def test_filtered_bus_still_receives_every_matching_frame(open_bus: OpenBus) -> None:
    tx = open_bus()
    rx = open_bus(can_filters=[{"can_id": 0x18DAF100, "can_mask": 0x1FFFFF00, "extended": True}])
    sent = [0x18DAF110, 0x18DAF210, 0x18DAF1F1, 0x100]

    for arbitration_id in sent:
        tx.send(classic(arbitration_id, b"\x01", extended=arbitration_id > 0x7FF))
    tx.send(classic(0x18DAF1FF, b"\xff", extended=True))

    got = [receive(rx).arbitration_id for _ in range(3)]
    assert got == [0x18DAF110, 0x18DAF1F1, 0x18DAF1FF]


def test_canfd_64_byte_frame_arrives(open_bus: OpenBus, canfd_link: str) -> None:
    tx, rx = open_bus(canfd_link), open_bus(canfd_link)
    payload = bytes(range(64))

    tx.send(
        can.Message(
            arbitration_id=0x456,
            data=payload,
            is_extended_id=False,
            is_fd=True,
            bitrate_switch=True,
        )
    )

    msg = receive(rx)
    assert msg.is_fd
    assert msg.bitrate_switch
    assert (msg.arbitration_id, bytes(msg.data), msg.dlc) == (0x456, payload, 64)


def test_extended_29_bit_id_arrives(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()

    tx.send(classic(0x1FFFFFFF, b"\x10\x20", extended=True))
    tx.send(classic(0x7FF, b"\x30", extended=False))

    first, second = receive(rx), receive(rx)
    assert (first.arbitration_id, first.is_extended_id, bytes(first.data)) == (
        0x1FFFFFFF,
        True,
        b"\x10\x20",
    )
    # The same numeric range with the other id format stays a distinct, standard frame.
    assert (second.arbitration_id, second.is_extended_id) == (0x7FF, False)


def test_link_down_raises_can_operation_error_with_enetdown(
    open_bus: OpenBus, link_control: Callable[[str], None]
) -> None:
    tx, rx = open_bus(), open_bus()

    link_control("down")

    with pytest.raises(can.CanOperationError) as sent:
        tx.send(classic(0x10, b"\x00"))
    assert sent.value.error_code == errno.ENETDOWN
    assert isinstance(sent.value.__cause__, OSError)
    # The receiving socket reports the link change once, as a pending socket error...
    with pytest.raises(can.CanOperationError) as received:
        rx.recv(timeout=RECV_TIMEOUT)
    assert received.value.error_code == errno.ENETDOWN
    # ...after which recv() just times out: a reader must not take None for "link is fine".
    assert rx.recv(timeout=0.2) is None


def test_link_up_again_works_with_a_new_bus(
    open_bus: OpenBus, link_control: Callable[[str], None]
) -> None:
    link_control("down")
    # Opening succeeds while the link is down; only traffic fails.
    early = open_bus()
    with pytest.raises(can.CanOperationError):
        early.send(classic(0x20, b"\x00"))

    link_control("up")
    tx, rx = open_bus(), open_bus()
    tx.send(classic(0x21, b"\x21"))
    assert receive(rx).arbitration_id == 0x21
    # On vcan a bus opened before the outage works again too: the socket stays bound.
    early.send(classic(0x22, b"\x22"))
    assert receive(rx).arbitration_id == 0x22


def test_vanished_interface_raises_enodev_and_reopen_raises_oserror(
    open_bus: OpenBus, scratch_vcan: ScratchLink
) -> None:
    bus = open_bus(scratch_vcan.name)

    scratch_vcan.delete()

    # Like a USB adapter unplugged: the socket reports ENODEV once, sending gives ENXIO.
    with pytest.raises(can.CanOperationError) as received:
        bus.recv(timeout=RECV_TIMEOUT)
    assert received.value.error_code == errno.ENODEV
    with pytest.raises(can.CanOperationError) as sent:
        bus.send(classic(0x30, b"\x00"))
    assert sent.value.error_code == errno.ENXIO
    # Opening a missing interface raises a plain OSError, not a CanError.
    with pytest.raises(OSError) as opened:
        open_bus(scratch_vcan.name)
    assert not isinstance(opened.value, can.CanError)
    assert opened.value.errno == errno.ENODEV


def test_canplayer_replays_a_candump_file(
    open_bus: OpenBus, vcan0: str, canplayer: str, tmp_path: Path
) -> None:
    log = tmp_path / "drive.log"
    log.write_text(
        "(1700000000.000000) can0 123#DEADBEEF\n"
        "(1700000000.001000) can0 18DAF110#0102030405060708\n"
        "(1700000000.002000) can0 7FF#R\n"
        "(1700000000.003000) can0 321#\n"
    )
    rx = open_bus()

    proc = subprocess.run(
        [canplayer, "-I", str(log), f"{vcan0}=can0"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr

    got = [receive(rx) for _ in range(4)]
    assert [
        (m.arbitration_id, m.is_extended_id, m.is_remote_frame, bytes(m.data)) for m in got
    ] == [
        (0x123, False, False, b"\xde\xad\xbe\xef"),
        (0x18DAF110, True, False, bytes(range(1, 9))),
        (0x7FF, False, True, b""),
        (0x321, False, False, b""),
    ]
