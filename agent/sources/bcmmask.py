"""Content masks for kernel-side change detection (SocketCAN's broadcast manager, CAN_BCM).

The kernel compares each frame of a watched id with the previous one under a mask and hands it
to user space only when a masked bit (or, with RX_CHECK_DLC, the length) changed. The mask of a
message covers exactly the bits of the signals the agent decodes from it, plus, where one of
them is multiplexed, the bits of its multiplexer (and of that multiplexer's own multiplexer,
for cascaded multiplexing): a change of multiplexer value changes which signals the frame
carries. It is one flat mask per message: the kernel's per-multiplexer-value mode (``nframes >
1``) is not used, because it misses changes.

Pure: computes bytes from cantools message objects; it neither opens sockets (agent.sources.bcm)
nor chooses signals (agent.catalog).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.decode import signal_bits

__all__ = ["CLASSIC_DATA", "FD_DATA", "content_mask", "mask_bits"]

# Data bytes of a classic and of a CAN FD frame (struct can_frame / canfd_frame).
CLASSIC_DATA = 8
FD_DATA = 64


def _with_multiplexers(message: Any, names: Iterable[str]) -> list[Any]:
    """The named signals of ``message`` and every multiplexer one of them depends on."""
    by_name = {s.name: s for s in message.signals}
    wanted: dict[str, Any] = {}
    todo = [by_name[n] for n in names if n in by_name]
    while todo:
        sig = todo.pop()
        if sig.name in wanted:
            continue
        wanted[sig.name] = sig
        parent = sig.multiplexer_signal
        if parent is not None and parent in by_name:
            todo.append(by_name[parent])
    return list(wanted.values())


def _value_bits(sig: Any) -> list[int]:
    """The signal's bit positions, least significant value bit first."""
    bits = signal_bits(sig)
    return bits if sig.byte_order == "little_endian" else bits[::-1]


def _undecodable_bits(message: Any) -> set[int]:
    """Bits of a multiplexer whose flip can turn a value the DBC defines into one it does not:
    cantools cannot decode such a frame, so every value of it is affected."""
    defined: dict[str, set[int]] = {}
    for sig in message.signals:
        if sig.multiplexer_signal is not None:
            defined.setdefault(sig.multiplexer_signal, set()).update(sig.multiplexer_ids or ())
    bits: set[int] = set()
    for sig in message.signals:
        values = defined.get(sig.name)
        if not values:
            continue
        for k, b in enumerate(_value_bits(sig)):
            if any(v ^ (1 << k) not in values for v in values):
                bits.add(b)
    return bits


def mask_bits(message: Any, names: Iterable[str]) -> set[int]:
    """Bit positions (byte * 8 + bit, bit 0 the least significant of a byte) that carry the
    named signals of ``message`` or a multiplexer they depend on, within its length. Where a
    multiplexer does not define every value its bits can take, the bits that can make a frame
    undecodable count for every signal: such a frame must reach the decoder as it would on the
    raw path, or a value it carries could be taken for one already seen."""
    size = message.length * 8
    signals = _with_multiplexers(message, names)
    bits: set[int] = set()
    for sig in signals:
        bits.update(signal_bits(sig))
    if signals:
        bits |= _undecodable_bits(message)
    return {b for b in bits if 0 <= b < size}


def content_mask(message: Any, names: Iterable[str], size: int | None = None) -> bytes:
    """The mask as frame data of ``size`` bytes (default: the message's length): 1 bits are
    compared by the kernel, 0 bits ignored."""
    out = bytearray(message.length if size is None else size)
    for b in mask_bits(message, names):
        if b // 8 < len(out):
            out[b // 8] |= 1 << (b % 8)
    return bytes(out)
