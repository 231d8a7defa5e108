"""scripts/bench part: location (issue 11). Imported by scripts/bench.py (``--location``).

A 1 Hz drive with turns, stops and a motorway part (tests/support/nmea.py) is written as NMEA
and read back by the agent's own parser (agent.sources.nmea), so the fixes carry a receiver's
precision. Measured:

* fixes sent by the default sampling (curve logging, 10 m) and by tracker rules, and the
  farthest dropped fix from the track a backend reconstructs: the sent fixes as decoded
  (1e-7 degree) joined by straight lines in time;
* bytes per sent fix inside a 1 s update: each sent fix's changed values are added to a real
  1 s update of the demo drive (CAN data, as the agent writes it: deflate, its own time group)
  and the update re-encoded; the growth of the whole MQTT PUBLISH (spime header and body,
  sample and time-group headers, MQTT framing) is the fix's cost. A fix alone in its own
  update is shown for comparison.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Protocol

from agent.config import GnssConfig
from agent.locationschema import add_location, raw_values
from agent.policy.geo import Fix, segment_distance_m
from agent.policy.track import TrackPolicy, TrackSampler
from agent.sources import track_policy
from agent.sources.nmea import NmeaReader
from agent.spime import Schema, SignalDef, decode_samples, encode_update, peek_header
from agent.spime.codec import uvarint_len
from tests.support.nmea import drive, epoch

LAT0, LON0 = 48.1, 11.5
VIN = "WVWZZZ1JZXW000001"
TOPIC_LEN = len(f"spime/v1/{VIN}/data")


class Report(Protocol):
    def section(self, title: str, *lines: str) -> None: ...

    def verdict(self, name: str, target: str, measured: str, passed: bool | None) -> None: ...


def _publish_size(payload_len: int) -> int:
    # QoS 1 MQTT 5 PUBLISH without properties (as scripts/bench.py's publish_size)
    remaining = 2 + TOPIC_LEN + 2 + 1 + payload_len
    return 1 + uvarint_len(remaining) + remaining


def receiver_fixes() -> list[Fix]:
    """The drive as the agent's NMEA parser reads it."""
    reader = NmeaReader(down_after=3.0)
    out: list[Fix] = []
    for second, p in enumerate(drive(LAT0, LON0)):
        data = epoch("GN", second, p.lat, p.lon, p.speed_kmh, p.heading)
        out += reader.feed(data, float(second))
    return out


def _decoded(fix: Fix) -> Fix:
    return Fix(fix.t, round(fix.lat * 1e7) * 1e-7, round(fix.lon * 1e7) * 1e-7)


def worst_miss(fixes: list[Fix], kept: list[Fix]) -> float:
    """The farthest fix from the kept fixes (as decoded) joined by straight lines in time."""
    sent = [_decoded(k) for k in kept]
    worst, j = 0.0, 0
    for f in fixes:
        while j + 1 < len(sent) and sent[j + 1].t <= f.t:
            j += 1
        if sent[j].t == f.t or j + 1 >= len(sent):
            continue
        worst = max(worst, segment_distance_m(sent[j], sent[j + 1], f))
    return worst


def sample(policy: TrackPolicy, fixes: list[Fix]) -> list[Fix]:
    s = TrackSampler(policy)
    return [k for f in fixes for k in s.offer(f)] + s.flush()


@dataclass(frozen=True)
class Bytes:
    inside: float  # mean bytes a fix adds to a 1 s update of CAN data
    inside_max: int
    alone: float  # mean bytes of an update holding one fix and nothing else


def fix_bytes(kept: list[Fix], updates: list[bytes], can_schema: Schema) -> Bytes:
    defs = list(can_schema.signals)
    plan = add_location(defs, "exact", 0.0, "bench")
    assert plan is not None
    schema = Schema.build(defs)
    only: list[SignalDef] = []
    own = add_location(only, "exact", 0.0, "bench")
    assert own is not None
    own_schema = Schema.build(only)
    # Values are sent on change, as the sampler does.
    last: dict[int, int] = {}
    per_fix: list[list[tuple[int, int]]] = []
    for fix in kept:
        changed = []
        for _, sid, raw in raw_values(plan, fix):
            if last.get(sid) != raw:
                changed.append((sid, raw))
                last[sid] = raw
        per_fix.append(changed)
    base = [u for u in updates if not peek_header(u).snapshot]
    own_ids = {d.name: d.id for d in own_schema.signals}
    inside, alone = [], []
    for i, changed in enumerate(per_fix):
        payload = base[i % len(base)]
        head, samples = decode_samples(payload, can_schema)
        t = samples[0][0] + 500  # receiver time: a time group of its own
        args: dict[str, Any] = {"boot": bytes.fromhex(head.boot), "seq": head.seq, "vin": VIN}
        plain = encode_update(schema, samples=sorted(samples), **args)
        more = sorted([*samples, *((t, sid, raw) for sid, raw in changed)])
        with_fix = encode_update(schema, samples=more, **args)
        inside.append(_publish_size(len(with_fix)) - _publish_size(len(plain)))
        mine = [(t, own_ids[schema.by_id[sid].name], raw) for sid, raw in changed]
        alone.append(_publish_size(len(encode_update(own_schema, samples=mine, **args))))
    return Bytes(statistics.mean(inside), max(inside), statistics.mean(alone))


def bench_location(report: Report, updates: list[bytes], can_schema: Schema) -> None:
    fixes = receiver_fixes()
    default = track_policy(GnssConfig(port="/dev/null"))
    kept = sample(default, fixes)
    miss = worst_miss(fixes, kept)
    rules = sample(TrackPolicy(mode="rules"), fixes)
    rules_miss = worst_miss(fixes, rules)
    b = fix_bytes(kept, updates, can_schema)
    share = len(kept) / len(fixes)
    report.section(
        "12. Location: fixes sent and bytes per fix",
        f"A 1 Hz drive of {len(fixes)} fixes (a parked minute, town with four right-angle "
        "turns, a red light, a roundabout, 15 minutes of motorway with gentle bends, a parked "
        "minute), written as NMEA and read by the agent's parser (1e-4 minute precision). The "
        "reconstructed track joins the sent fixes, as decoded (1e-7 degree), with straight "
        "lines in time; the miss is the farthest fix from it.",
        "",
        "| sampling | fixes sent | share | farthest fix from the track |",
        "|---|---|---|---|",
        f"| curve logging, tolerance {default.tolerance:g} m (default) | {len(kept)} | "
        f"{share:.1%} | {miss:.2f} m |",
        f"| tracker rules (defaults) | {len(rules)} | {len(rules) / len(fixes):.1%} | "
        f"{rules_miss:.1f} m |",
        "",
        "Bytes per sent fix (its changed values: latitude, longitude and whatever else "
        "changed), MQTT 5 PUBLISH framing, spime header and body all counted, deflate as the "
        f"agent writes: inside a 1 s update of the demo drive's CAN data **{b.inside:.1f}** "
        f"on average (at most {b.inside_max}); alone in an update of its own {b.alone:.1f}.",
    )
    report.verdict(
        "12. location: fixes sent (curve, 10 m)",
        "<= 20 %, every dropped fix within 10 m",
        f"{share:.1%}, farthest {miss:.2f} m",
        share <= 0.2 and miss <= 10.0,
    )
    report.verdict(
        "12. location: bytes per fix inside a 1 s update",
        "<= 8",
        f"{b.inside:.1f} (alone: {b.alone:.1f})",
        b.inside <= 8,
    )
