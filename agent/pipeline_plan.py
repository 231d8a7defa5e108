"""The pipeline's runtime state of the selected CAN messages of one bus (``plans``): per message
its decoder, its selected signals' sampling states, what triggers read or capture of it, its
[power] signals and its part in a CAN position (agent.canposition). It does not process
frames (agent.pipeline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.catalog import BusPlan, Catalog, MessagePlan, PowerRead
from agent.config import Config
from agent.decode import raw_decoder
from agent.sampling import Group, SignalState, grid_snapper


class Plan:
    """Runtime state of one selected CAN message."""

    __slots__ = (
        "name",
        "length",
        "decode",
        "signals",
        "group",
        "last",
        "values",
        "taps",
        "power",
        "position",
        "private",
        "private_group",
    )

    def __init__(self, name: str, length: int, decode: Callable[[bytes], dict[str, Any]]) -> None:
        self.name = name
        self.length = length
        self.decode = decode
        self.signals: dict[str, SignalState] = {}
        self.group = Group()
        self.last: bytes | None = None
        self.values: dict[str, Any] = {}
        # Signals triggers read or capture: name -> (condition slots, scale, offset, capture
        # id or -1); None when no trigger looks at this message.
        self.taps: dict[str, tuple[tuple[int, ...], float, float, int]] | None = None
        # [power] signals in this message (ignition, voltage), handed to ``on_power``.
        self.power: tuple[PowerRead, ...] = ()
        # The CAN position's coordinates in this message, and its location signals' names
        # (agent.canposition).
        self.position: tuple[tuple[str, bool, float, float], ...] = ()
        self.private: frozenset[str] = frozenset()
        # The location signals' group: their own while values wait for the trip's end, so
        # heartbeats and snapshots stamp a value with the latest frame that let one out, not
        # with the message's latest frame.
        self.private_group = self.group


def plans(
    cfg: Config,
    catalog: Catalog,
    bp: BusPlan,
    tapped: bool,
    captured: set[int],
    states: list[SignalState],
) -> dict[int, Plan]:
    """The plans of a bus's selected messages by (masked) id; each selected signal's sampling
    state is appended to ``states`` too. ``tapped``: triggers are armed (``captured``: the
    signal ids they capture)."""
    out: dict[int, Plan] = {}
    for key, mp in bp.messages.items():
        plan = Plan(mp.message.name, mp.message.length, raw_decoder(mp.message))
        if tapped:
            plan.taps = _taps(mp, captured)
        plan.power = mp.power
        if catalog.position is not None:
            private = catalog.position.private
            plan.private = frozenset(s.signal for s in mp.signals if s.sid in private)
            plan.position = tuple(
                (s.signal, s.position == "latitude", s.definition.scale, s.definition.offset)
                for s in mp.signals
                if s.position
            )
            if plan.private and cfg.privacy.trip_end_radius > 0:
                plan.private_group = Group()
        for sel in mp.signals:
            if sel.capture_only:
                continue
            d = sel.definition
            snap = None
            if sel.coarse and cfg.consent is not None:
                snap = grid_snapper(d.scale, d.offset, cfg.consent.coarse_grid, d.kind == "int")
            group = plan.private_group if sel.signal in plan.private else plan.group
            st = SignalState(sel.sid, sel.policy, d.scale, group, snap)
            plan.signals[sel.signal] = st
            states.append(st)
        out[key] = plan
    return out


def _taps(
    mp: MessagePlan, captured: set[int]
) -> dict[str, tuple[tuple[int, ...], float, float, int]] | None:
    slots: dict[str, list[int]] = {}
    scales: dict[str, tuple[float, float]] = {}
    sids: dict[str, int] = {}
    for r in mp.reads:
        slots.setdefault(r.signal, []).append(r.slot)
        scales[r.signal] = (r.scale, r.offset)
    for sel in mp.signals:
        if sel.sid in captured:
            sids[sel.signal] = sel.sid
    names = slots.keys() | sids.keys()
    if not names:
        return None
    return {
        n: (tuple(slots.get(n, ())), *scales.get(n, (1.0, 0.0)), sids.get(n, -1)) for n in names
    }
