"""The catalog: which signals of which buses are transmitted, under which ids and policies.

Joins the configuration with the loaded DBC files: applies the ``[[signal]]`` globs (first
matching entry wins), assigns schema ids and wire names, builds the spime schema, the frame
lookup keys and the kernel CAN filters for each bus. Resolves the ``[[trigger]]`` sections: the
signals their conditions read (decoded even when not sent, "read-only") and the signals they
capture (added to the schema as capture-only when not otherwise sent); consent bounds both.
Names the closest signals when a glob selects nothing, and lists every ``Message.Signal`` of a
config's buses. It reads cantools objects but does not decode frames (agent.decode) nor hold
runtime state (agent.pipeline).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.config import COARSE_LOCATION, BusConfig, Config, SignalConfig
from agent.decode import DbcFile, Message, load_dbc
from agent.errors import ConfigError, DbcError
from agent.locationschema import LocationPlan, add_location
from agent.policy.expr import parse as parse_condition
from agent.policy.trigger import TriggerSpec
from agent.spime import Schema, SignalDef

if TYPE_CHECKING:
    from agent.canposition import PositionPlan

EXTENDED = 1 << 31
# SocketCAN takes at most this many filters per socket (CAN_RAW_FILTER_MAX).
MAX_KERNEL_FILTERS = 512


def frame_key(arbitration_id: int, is_extended: bool, mask: int | None) -> int:
    """Lookup key of a frame: its (masked) id, with bit 31 set for 29-bit ids, because an
    11-bit and a 29-bit frame may carry the same number."""
    if mask is not None:
        arbitration_id &= mask
    return arbitration_id | EXTENDED if is_extended else arbitration_id


@dataclass(frozen=True)
class Policy:
    deadband: float = 0.0
    min_interval: float = 0.0
    max_interval: float = 0.0
    event: bool = False

    @classmethod
    def of(cls, entry: SignalConfig | None) -> Policy:
        if entry is None:
            return cls()
        return cls(
            deadband=entry.deadband,
            min_interval=entry.min_interval,
            max_interval=entry.max_interval,
            event=entry.priority == "event",
        )


@dataclass(frozen=True)
class Selected:
    """One transmitted signal."""

    sid: int
    bus: str
    message: str
    signal: str
    wire: str
    policy: Policy
    category: str | None
    coarse: bool  # location sent only at the reduced precision the owner consented to
    definition: SignalDef
    # In the schema only for triggered captures: never sampled on its own.
    capture_only: bool = False
    # "latitude" or "longitude": a coordinate of the CAN position (agent.canposition).
    position: str = ""


@dataclass(frozen=True)
class Read:
    """A signal a trigger condition reads: decoded even when it is not sent."""

    slot: int
    bus: str
    message: str
    signal: str
    name: str  # as written in the condition
    scale: float
    offset: float


@dataclass(frozen=True)
class PowerRead:
    """A signal the lifecycle reads ([power] ignition or voltage): decoded even when not sent."""

    role: str  # "ignition" or "voltage"
    bus: str
    message: str
    signal: str
    scale: float
    offset: float
    choices: dict[int, str] = field(default_factory=dict)


# The lifecycle's event signal in the data (README, Lifecycle): one sample per transition.
POWER_SIGNAL = "Vehicle.PowerState"
POWER_CHOICES = {0: "driving", 1: "parked", 2: "low_voltage"}
POWER_CATEGORY = "driving"


@dataclass(frozen=True)
class MessagePlan:
    message: Message
    signals: tuple[Selected, ...]
    reads: tuple[Read, ...] = ()
    power: tuple[PowerRead, ...] = ()


@dataclass(frozen=True)
class BusPlan:
    config: BusConfig
    messages: dict[int, MessagePlan]
    can_filters: list[dict[str, Any]] | None


@dataclass(frozen=True)
class Catalog:
    schema: Schema
    selected: tuple[Selected, ...]
    buses: tuple[BusPlan, ...]
    dbc_files: tuple[DbcFile, ...]
    warnings: tuple[str, ...] = field(default=())
    # Signals left out for lack of consent, counted by reason.
    excluded: dict[str, int] = field(default_factory=dict)
    triggers: tuple[TriggerSpec, ...] = ()
    reads: tuple[Read, ...] = ()
    # Triggers not armed, with the reason (a condition reading an unconsented signal).
    disabled: dict[str, str] = field(default_factory=dict)
    power: tuple[PowerRead, ...] = ()
    # Schema id of POWER_SIGNAL when [power] is configured.
    power_sid: int | None = None
    # The GNSS signals when [gnss] is configured and consent covers location.
    location: LocationPlan | None = None
    # Wire name -> schema id of the diagnostics' signals (agent.diag.signals).
    diag_ids: dict[str, int] = field(default_factory=dict)
    # The CAN position checked against the privacy zones (agent.canposition).
    position: PositionPlan | None = None

    @property
    def message_count(self) -> int:
        return sum(len(f.messages) for f in self.dbc_files)


def _definition(
    sid: int, wire: str, source: str, sig: Any, event: bool, category: str | None
) -> SignalDef:
    kind = "int"
    if sig.is_float:
        kind = "f32" if sig.length == 32 else "f64"
    return SignalDef(
        id=sid,
        name=wire,
        kind=kind,  # type: ignore[arg-type]
        scale=sig.scale,
        offset=sig.offset,
        unit=sig.unit or "",
        choices={int(k): str(v) for k, v in (sig.choices or {}).items()},
        priority="event" if event else "telemetry",
        source=source,
        category=category or "",
    )


def _category(cfg: Config, qualified: str, entry: SignalConfig | None) -> str | None:
    if entry is not None and entry.consent:
        return entry.consent
    if cfg.consent is None:
        return None
    for rule in cfg.consent.rules:
        if fnmatch.fnmatchcase(qualified, rule.match):
            return rule.category
    return cfg.consent.default_category


def _consent(cfg: Config, category: str | None) -> str | None:
    """ "exact", "coarse", or None when the owner's consent does not cover the category."""
    if cfg.consent is None:
        return "exact"  # not activated: no consent configured, nothing to enforce
    granted = cfg.consent.granted
    if category is not None and category in granted:
        return "exact"
    if category == "location" and COARSE_LOCATION in granted:
        return "coarse"
    return None


def _kernel_filters(bus: BusConfig, messages: Iterable[Message]) -> list[dict[str, Any]] | None:
    mask = bus.id_mask
    filters = []
    for msg in messages:
        full = 0x1FFFFFFF if msg.is_extended_frame else 0x7FF
        filters.append(
            {
                "can_id": msg.frame_id & (mask if mask is not None else full),
                "can_mask": mask if mask is not None else full,
                "extended": msg.is_extended_frame,
            }
        )
    # Beyond the kernel's limit the software lookup alone filters; correct, only slower.
    return filters if len(filters) <= MAX_KERNEL_FILTERS else None


def load_dbcs(cfg: Config) -> dict[str, list[DbcFile]]:
    """Load every bus's DBC files once (files shared by buses are loaded once per mode)."""
    cache: dict[tuple[str, bool], DbcFile] = {}
    problems: list[str] = []
    out: dict[str, list[DbcFile]] = {}
    for bus in cfg.bus:
        files = []
        for path in bus.dbc:
            key = (str(path), bus.lenient_dbc)
            if key not in cache:
                try:
                    cache[key] = load_dbc(path, lenient=bus.lenient_dbc)
                except DbcError as err:
                    problems.extend(err.problems)
                    continue
            files.append(cache[key])
        out[bus.name] = files
    if problems:
        raise DbcError(*dict.fromkeys(problems))
    return out


def signal_names(cfg: Config, dbcs: dict[str, list[DbcFile]]) -> list[tuple[str, str]]:
    """(bus, ``Message.Signal``) of every signal in the DBCs of each bus, in DBC order."""
    out: list[tuple[str, str]] = []
    for bus in cfg.bus:
        seen: set[str] = set()
        for dbc in dbcs[bus.name]:
            for msg in dbc.messages:
                for sig in msg.signals:
                    name = f"{msg.name}.{sig.name}"
                    if name not in seen:
                        seen.add(name)
                        out.append((bus.name, name))
    return out


def closest_names(pattern: str, names: Iterable[str], n: int = 3) -> list[str]:
    """The names nearest to a pattern that matched none of them, best first. Case is ignored
    (a wrong case is the commonest miss); a glob's message part is also compared with
    ``Message.*``, so ``ECM_Engin1.*`` finds ``ECM_Engine1.*``."""
    candidates: dict[str, str] = {}
    for name in names:
        candidates.setdefault(name.casefold(), name)
        message = name.split(".", 1)[0]
        if any(c in pattern for c in "*?["):
            candidates.setdefault(f"{message}.*".casefold(), f"{message}.*")
    found = difflib.get_close_matches(pattern.casefold(), candidates, n=n, cutoff=0.6)
    return [candidates[f] for f in found]


def build_catalog(cfg: Config, dbcs: dict[str, list[DbcFile]] | None = None) -> Catalog:
    """Select the signals the config asks for; raise ConfigError naming every problem."""
    dbcs = dbcs if dbcs is not None else load_dbcs(cfg)
    src = str(cfg.source or "config")
    problems: list[str] = []
    candidates: list[tuple[BusConfig, Message, Any, SignalConfig | None]] = []
    used_entries: set[int] = set()
    for bus in cfg.bus:
        seen: dict[int, str] = {}
        for dbc in dbcs[bus.name]:
            for msg in dbc.messages:
                key = frame_key(msg.frame_id, msg.is_extended_frame, bus.id_mask)
                if key in seen and seen[key] != str(dbc.path):
                    problems.append(
                        f"{src}: bus {bus.name!r}: message {msg.name} (0x{msg.frame_id:x}) of "
                        f"{dbc.path} is also defined in {seen[key]}; fix: keep one definition"
                    )
                    continue
                seen[key] = str(dbc.path)
                for sig in msg.signals:
                    qualified = f"{msg.name}.{sig.name}"
                    if not cfg.signal:
                        candidates.append((bus, msg, sig, None))
                        continue
                    for i, entry in enumerate(cfg.signal):
                        if entry.matches(bus.name, qualified):
                            used_entries.add(i)
                            candidates.append((bus, msg, sig, entry))
                            break
    unused = [i for i in range(len(cfg.signal)) if i not in used_entries]
    known = signal_names(cfg, dbcs) if unused else []
    for i in unused:
        entry = cfg.signal[i]
        where = f" on bus {entry.bus!r}" if entry.bus else ""
        near = closest_names(entry.match, (n for b, n in known if entry.bus in (None, b)))
        hint = (
            f"; closest: {', '.join(near)}"
            if near
            else f"; `spime-agent check --list --config {src}` lists them"
        )
        problems.append(
            f"{src}: signal[{i}].match {entry.match!r} matches no signal{where} "
            f"(patterns are Message.Signal as in the DBC, case-sensitive){hint}"
        )
    from agent import canposition

    positions = canposition.roles(cfg, candidates, lambda q, e: _category(cfg, q, e), problems)
    # Consent: signals of categories the owner did not grant are not selected at all, so
    # their frames are never decoded and their values never stored or sent.
    consented: list[tuple[BusConfig, Message, Any, SignalConfig | None, str | None, bool]] = []
    excluded: dict[str, int] = {}
    for cand in candidates:
        category = _category(cfg, f"{cand[1].name}.{cand[2].name}", cand[3])
        mode = _consent(cfg, category)
        if mode is None:
            why = f"no consent for {category}" if category else "no consent category"
            excluded[why] = excluded.get(why, 0) + 1
            continue
        consented.append((*cand, category, mode == "coarse"))
    # Default wire names are Message.Signal; only when buses share one, the bus prefixes it.
    qual_count: dict[str, int] = {}
    for _, msg, sig, *_ in consented:
        qual_count[f"{msg.name}.{sig.name}"] = qual_count.get(f"{msg.name}.{sig.name}", 0) + 1
    selected: list[Selected] = []
    names: set[str] = set()
    for sid, (bus, msg, sig, chosen, category, coarse) in enumerate(consented):
        qualified = f"{msg.name}.{sig.name}"
        wire = chosen.name if chosen is not None and chosen.name else qualified
        if (chosen is None or not chosen.name) and qual_count[qualified] > 1:
            wire = f"{bus.name}/{qualified}"
        if wire in names:
            problems.append(f"{src}: wire name {wire!r} is given to two signals")
        names.add(wire)
        policy = Policy.of(chosen)
        selected.append(
            Selected(
                sid=sid,
                bus=bus.name,
                message=msg.name,
                signal=sig.name,
                wire=wire,
                policy=policy,
                category=category,
                coarse=coarse,
                definition=_definition(
                    sid, wire, f"{bus.name}:{qualified}", sig, policy.event, category
                ),
                position=positions.get((bus.name, msg.name, sig.name), ""),
            )
        )
    origins: list[tuple[BusConfig, Message]] = [(c[0], c[1]) for c in consented]
    trig = _Triggers(cfg, dbcs, selected, origins, names, excluded, problems)
    power, power_origins = _power_reads(cfg, dbcs, src, problems)
    if problems:
        raise ConfigError(*problems)
    plans = []
    for bus in cfg.bus:
        by_msg: dict[int, list[Selected]] = {}
        reads_by: dict[int, list[Read]] = {}
        msgs: dict[int, Message] = {}
        for s, (b, msg) in zip(selected, origins, strict=True):
            if b is bus:
                key = frame_key(msg.frame_id, msg.is_extended_frame, bus.id_mask)
                by_msg.setdefault(key, []).append(s)
                msgs[key] = msg
        for r, (b, msg) in zip(trig.reads, trig.read_origins, strict=True):
            if b is bus:
                key = frame_key(msg.frame_id, msg.is_extended_frame, bus.id_mask)
                reads_by.setdefault(key, []).append(r)
                msgs[key] = msg
        power_by: dict[int, list[PowerRead]] = {}
        for pr, (b, msg) in zip(power, power_origins, strict=True):
            if b is bus:
                key = frame_key(msg.frame_id, msg.is_extended_frame, bus.id_mask)
                power_by.setdefault(key, []).append(pr)
                msgs[key] = msg
        messages = {
            k: MessagePlan(
                msgs[k],
                tuple(by_msg.get(k, ())),
                tuple(reads_by.get(k, ())),
                tuple(power_by.get(k, ())),
            )
            for k in msgs
        }
        plans.append(BusPlan(bus, messages, _kernel_filters(bus, msgs.values())))
    files = {id(f): f for fs in dbcs.values() for f in fs}
    warnings = tuple(w for f in files.values() for w in f.warnings)
    defs = [s.definition for s in selected]
    power_sid = None
    # Trips (when the car is driven and parked) are driving data: sent only with that consent;
    # the lifecycle itself runs either way.
    if cfg.power is not None and _consent(cfg, POWER_CATEGORY) == "exact":
        power_sid = len(defs)
        defs.append(
            SignalDef(
                id=power_sid,
                name=POWER_SIGNAL,
                choices=POWER_CHOICES,
                priority="event",
                source="power",
                category=POWER_CATEGORY,
            )
        )
    location = None
    if cfg.gnss is not None:
        grid = cfg.consent.coarse_grid if cfg.consent is not None else 0.0
        location = add_location(defs, _consent(cfg, "location"), grid, src)
    position = None
    if sum(1 for s in selected if s.position) == 2:
        if location is not None:
            state_sid = location.state_sid
        elif canposition.STATE_SIGNAL in names:
            raise ConfigError(
                f"{src}: {canposition.STATE_SIGNAL}: the CAN position's state signal is named "
                "so; the name is given to another signal ([[signal]] name): choose another"
            )
        else:
            state_sid = len(defs)
            defs.append(canposition.state_definition(state_sid))
        # The pair itself always (also unactivated, without categories), and every other
        # signal of a location category.
        private = frozenset(
            s.sid for s in selected if s.position or s.category in canposition.PRIVATE_CATEGORIES
        )
        position = canposition.PositionPlan(state_sid, private)
    diag_ids: dict[str, int] = {}
    if cfg.diagnostics:
        from agent.diag.signals import definitions

        diag_defs, diag_ids, diag_excluded = definitions(
            cfg.diagnostics, len(defs), lambda c: _consent(cfg, c) == "exact"
        )
        defs.extend(diag_defs)
        for why, n in diag_excluded.items():
            excluded[why] = excluded.get(why, 0) + n
    return Catalog(
        schema=Schema.build(defs),
        selected=tuple(selected),
        buses=tuple(plans),
        dbc_files=tuple(files.values()),
        warnings=warnings,
        excluded=excluded,
        triggers=tuple(trig.specs),
        reads=tuple(trig.reads),
        disabled=trig.disabled,
        power=tuple(power),
        power_sid=power_sid,
        location=location,
        diag_ids=diag_ids,
        position=position,
    )


def _power_reads(
    cfg: Config, dbcs: dict[str, list[DbcFile]], src: str, problems: list[str]
) -> tuple[list[PowerRead], list[tuple[BusConfig, Message]]]:
    """The [power] ignition and voltage signals, found in the buses' DBCs (the first bus that
    has one wins)."""
    reads: list[PowerRead] = []
    origins: list[tuple[BusConfig, Message]] = []
    if cfg.power is None:
        return reads, origins
    for role, name in (("ignition", cfg.power.ignition), ("voltage", cfg.power.voltage)):
        if name is None:
            continue
        found = None
        for bus in cfg.bus:
            for dbc in dbcs[bus.name]:
                for msg in dbc.messages:
                    for sig in msg.signals:
                        if found is None and f"{msg.name}.{sig.name}" == name:
                            found = (bus, msg, sig)
        if found is None:
            problems.append(
                f"{src}: power.{role}: {name!r} is no signal of the buses' DBCs "
                "(Message.Signal, case-sensitive)"
            )
            continue
        bus, msg, sig = found
        choices = {int(k): str(v) for k, v in (sig.choices or {}).items()}
        reads.append(PowerRead(role, bus.name, msg.name, sig.name, sig.scale, sig.offset, choices))
        origins.append((bus, msg))
    return reads, origins


_Sig = tuple[BusConfig, Message, Any]


class _Triggers:
    """Resolves the triggers of a config against the DBCs and the selection: which signals
    their conditions read and which they capture. Appends capture-only signals to
    ``selected``/``origins``, counts consent exclusions and collects problems."""

    def __init__(
        self,
        cfg: Config,
        dbcs: dict[str, list[DbcFile]],
        selected: list[Selected],
        origins: list[tuple[BusConfig, Message]],
        names: set[str],
        excluded: dict[str, int],
        problems: list[str],
    ) -> None:
        self.specs: list[TriggerSpec] = []
        self.reads: list[Read] = []
        self.read_origins: list[tuple[BusConfig, Message]] = []
        self.disabled: dict[str, str] = {}
        if not cfg.trigger:
            return
        src = str(cfg.source or "config")
        self.cfg = cfg
        # Every DBC signal by Message.Signal (maybe on several buses) and by bus/Message.Signal.
        self.qualified: dict[str, list[_Sig]] = {}
        self.prefixed: dict[str, _Sig] = {}
        for bus in cfg.bus:
            for dbc in dbcs[bus.name]:
                for msg in dbc.messages:
                    for sig in msg.signals:
                        q = f"{msg.name}.{sig.name}"
                        self.qualified.setdefault(q, []).append((bus, msg, sig))
                        self.prefixed[f"{bus.name}/{q}"] = (bus, msg, sig)
        by_origin = {
            (b.name, m.name, s.signal): s for s, (b, m) in zip(selected, origins, strict=True)
        }
        wire = {s.wire: s for s in selected}
        slots: dict[str, int] = {}
        for i, tc in enumerate(cfg.trigger):
            where = f"{src}: trigger[{i}]"
            cond = parse_condition(tc.when)
            reads: list[tuple[str, _Sig]] = []
            for name in cond.names:
                found = self._find(name, wire, f"{where}.when", problems)
                if found is not None:
                    reads.append((name, found))
            capture: list[int] = []
            for j, pattern in enumerate(tc.capture):
                hits = self._glob(pattern, wire)
                if not hits:
                    problems.append(
                        f"{where}.capture[{j}]: {pattern!r} matches no signal "
                        "(patterns are wire names or Message.Signal, case-sensitive)"
                    )
                for bus, msg, sig in hits:
                    sid = self._capture_id(
                        bus, msg, sig, by_origin, selected, origins, names, excluded
                    )
                    if sid is not None and sid not in capture:
                        capture.append(sid)
            if len(reads) != len(cond.names):
                continue
            refused = [
                f"{name} ({cat or 'no category'})"
                for name, (bus, msg, sig) in reads
                if _consent(cfg, (cat := self._category(bus, msg, sig))) != "exact"
            ]
            if refused:
                self.disabled[tc.name] = "reads signals without consent: " + ", ".join(refused)
                continue
            for name, (bus, msg, sig) in reads:
                # One slot per name as written: two triggers naming a signal alike share it.
                if name not in slots:
                    slots[name] = len(self.reads)
                    self.reads.append(
                        Read(
                            len(self.reads),
                            bus.name,
                            msg.name,
                            sig.name,
                            name,
                            sig.scale,
                            sig.offset,
                        )
                    )
                    self.read_origins.append((bus, msg))
            self.specs.append(
                TriggerSpec(
                    tc.name, cond, tc.edge, tc.min_interval, tc.before, tc.after, tuple(capture)
                )
            )

    def _category(self, bus: BusConfig, msg: Message, sig: Any) -> str | None:
        q = f"{msg.name}.{sig.name}"
        entry = next((e for e in self.cfg.signal if e.matches(bus.name, q)), None)
        return _category(self.cfg, q, entry)

    def _find(
        self,
        name: str,
        wire: dict[str, Selected],
        where: str,
        problems: list[str],
    ) -> _Sig | None:
        if name in wire:
            s = wire[name]
            return self.prefixed[f"{s.bus}/{s.message}.{s.signal}"]
        if name in self.prefixed:
            return self.prefixed[name]
        hits = self.qualified.get(name, [])
        if len(hits) == 1:
            return hits[0]
        if hits:
            buses = ", ".join(f"`{b.name}/{name}`" for b, _, _ in hits)
            problems.append(f"{where}: {name} is on several buses: write one of {buses}")
        else:
            problems.append(
                f"{where}: no signal named {name!r} (write a wire name, Message.Signal or "
                "`bus/Message.Signal`, case-sensitive)"
            )
        return None

    def _glob(
        self,
        pattern: str,
        wire: dict[str, Selected],
    ) -> list[_Sig]:
        out: dict[tuple[str, str, str], _Sig] = {}
        for w, s in wire.items():
            if fnmatch.fnmatchcase(w, pattern):
                out[(s.bus, s.message, s.signal)] = self.prefixed[f"{s.bus}/{s.message}.{s.signal}"]
        for p, hit in self.prefixed.items():
            if fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p.split("/", 1)[1], pattern):
                out[(hit[0].name, hit[1].name, hit[2].name)] = hit
        return list(out.values())

    def _capture_id(
        self,
        bus: BusConfig,
        msg: Message,
        sig: Any,
        by_origin: dict[tuple[str, str, str], Selected],
        selected: list[Selected],
        origins: list[tuple[BusConfig, Message]],
        names: set[str],
        excluded: dict[str, int],
    ) -> int | None:
        """The schema id a captured signal is sent under (added capture-only if needed), or
        None when consent does not allow capturing it at full precision."""
        key = (bus.name, msg.name, sig.name)
        category = self._category(bus, msg, sig)
        mode = _consent(self.cfg, category)
        if mode != "exact":
            why = (
                "coarse location is not captured"
                if mode == "coarse"
                else (f"no consent for {category}" if category else "no consent category")
            )
            excluded[why] = excluded.get(why, 0) + 1
            return None
        if key in by_origin:
            return by_origin[key].sid
        q = f"{msg.name}.{sig.name}"
        wire = q if q not in names and len(self.qualified[q]) == 1 else f"{bus.name}/{q}"
        names.add(wire)
        sid = len(selected)
        sel = Selected(
            sid=sid,
            bus=bus.name,
            message=msg.name,
            signal=sig.name,
            wire=wire,
            policy=Policy(),
            category=category,
            coarse=False,
            definition=_definition(sid, wire, f"{bus.name}:{q}", sig, False, category),
            capture_only=True,
        )
        selected.append(sel)
        origins.append((bus, msg))
        by_origin[key] = sel
        return sid
