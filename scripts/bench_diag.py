"""The VM part of the bench for the diagnostics' two ISO-TP transports on real SocketCAN.

Runs where SocketCAN with can_isotp exists (vcan0 up): on a host without it, ``scripts/bench
--diag`` runs it inside scripts/vcan-vm. Two simulated ECUs on the kernel's ISO-TP sockets
(tests/support/ecusim.py, their CPU is not the agent's) answer the same exchanges through the
kernel transport (agent.diag.kernel) and the user-space one (agent.diag.link, can-isotp over
python-can), rounds interleaved: a functional request of six PIDs (an 18-byte answer of three
frames from one ECU, a single frame from the other) and a stored-DTC read (20 codes, 42 bytes
in six frames, from one ECU; none from the other). Measured per exchange: the CPU time of the
thread that asks (the poller's work: sending, waiting, reassembly in user space), the wall
time, and the bus bits each
transport charges to the load cap (the user-space one counts real frames, the kernel one counts
from the answer lengths: the two should agree). Prints Markdown; numbers only. Writes the table
to ``out/bench-diag.md`` too (the VM shares the checkout).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.config import BusConfig  # noqa: E402
from agent.diag.kernel import KernelIsoTpLink  # noqa: E402
from agent.diag.link import IsoTpLink  # noqa: E402
from tests.support.ecusim import Ecu, EcuSim  # noqa: E402

CHANNEL = "vcan0"
PIDS = bytes([0x01, 0x0C, 0x0D, 0x05, 0x2F, 0xA6, 0x42])
DTCS = [0x0100 + i for i in range(20)]
ROUNDS = 3


def exchange(link: Any, expected: int, payload: bytes) -> int:
    """One functional request and its answers; how many answers came."""
    link.discard()
    link.send_functional(payload)
    got = 0
    deadline = time.monotonic() + 2.0
    while got < expected:
        answer = link.poll(deadline - time.monotonic())
        if answer is None:
            break
        got += 1
    return got


def measure(link: Any, n: int) -> dict[str, float]:
    bits = link.stats.bits
    cpu, wall = time.thread_time(), time.monotonic()
    answers = 0
    for _ in range(n):
        answers += exchange(link, 2, PIDS)
        answers += exchange(link, 2, bytes([0x03]))  # the gearbox answers: no codes
    cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
    return {
        "cpu_ms": 1000 * cpu / (2 * n),
        "wall_ms": 1000 * wall / (2 * n),
        "bits": (link.stats.bits - bits) / (2 * n),
        "lost": 4 * n - answers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_diag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=200, help="per transport and round")
    args = parser.parse_args(argv)
    if not Path("/sys/class/net", CHANNEL).exists():
        print(f"bench_diag: no {CHANNEL} here (run it in scripts/vcan-vm)", file=sys.stderr)
        return 2
    engine = Ecu(
        0x7E8,
        pids={0x0C: 3000, 0x0D: 72, 0x05: 130, 0x2F: 128, 0xA6: 123456, 0x42: 13800},
        dtcs={0x03: DTCS},
    )
    gearbox = Ecu(0x7E9, pids={0x0D: 71})
    dbc = Path("/tmp/bench-diag-empty.dbc")
    dbc.write_text('VERSION ""\n\nBS_:\n\nBU_:\n')
    bus = BusConfig(name="pt", interface="socketcan", channel=CHANNEL, dbc=[dbc])
    runs: dict[str, list[dict[str, float]]] = {"kernel": [], "user": []}
    with EcuSim([engine, gearbox], interface="socketcan", channel=CHANNEL, kernel=True):
        for r in range(ROUNDS):
            for kind in ("kernel", "user"):
                link: Any = (
                    KernelIsoTpLink(CHANNEL, extended=False)
                    if kind == "kernel"
                    else IsoTpLink.open(bus, extended=False, pairs={})
                )
                try:
                    exchange(link, 2, PIDS)  # warm-up: imports, first allocations
                    runs[kind].append(measure(link, args.exchanges))
                finally:
                    link.close()
                print(f"bench_diag: round {r + 1} {kind}: {runs[kind][-1]}", file=sys.stderr)
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in runs.items()}
    body = [
        "## Diagnostics: kernel ISO-TP against user-space ISO-TP (vcan0)",
        "",
        f"{ROUNDS} interleaved rounds of {args.exchanges} x (six-PID request to two ECUs, "
        "stored-DTC read of 20 codes); medians per exchange.",
        "",
        "| transport | CPU of the asking thread | wall time | bus bits charged | answers lost |",
        "|---|---|---|---|---|",
    ]
    for kind in ("kernel", "user"):
        m = med[kind]
        body.append(
            f"| {kind} | {m['cpu_ms']:.2f} ms | {m['wall_ms']:.2f} ms | {m['bits']:.0f} | "
            f"{m['lost']:.0f} |"
        )
    body += [
        "",
        f"CPU ratio kernel / user: {med['kernel']['cpu_ms'] / med['user']['cpu_ms']:.2f}.",
    ]
    text = "\n".join(body) + "\n"
    out = ROOT / "out" / "bench-diag.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
