"""Child process for the outbox kill test: puts, flushes and acks until it is killed.

Usage: python -m tests.support.outbox_child DB_PATH RUN

Prints ``committed <marker>`` after each flush (every marker put so far is then on disk) and
``acked <marker> ...`` before it acks rows, so the parent knows what must survive a SIGKILL.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox


def main() -> None:
    path, run = Path(sys.argv[1]), sys.argv[2]
    ob = Outbox(OutboxConfig(path=path, commit_interval=600))
    ob.open()
    out = sys.stdout
    i = 0
    while True:
        for _ in range(5):
            prio = "event" if i % 7 == 0 else "telemetry"
            ob.put(f"{run}:{i}".encode() + b"." * (i % 300), prio)
            i += 1
        ob.flush()
        out.write(f"committed {run}:{i - 1}\n")
        out.flush()
        if i % 20 == 0:
            batch = ob.next_batch(8)
            out.write("acked " + " ".join(e.payload.split(b".")[0].decode() for e in batch) + "\n")
            out.flush()
            ob.ack(e.id for e in batch)


if __name__ == "__main__":
    main()
