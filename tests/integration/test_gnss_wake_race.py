"""A wake that comes while the pipeline opens the GNSS receiver (a box started in a running car:
the lifecycle's first decision and the pipeline's first turn at the same moment) is not lost.

The receiver is a real NMEA source on a pseudo-terminal, wired into a real pipeline; the
lifecycle's ``resume`` is called from another thread at the one moment that matters, inside
the opening (the real ``open_gnss`` wrapped to get there), as the lifecycle's thread would.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent import gnss_wiring
from agent.config import load_config
from agent.daemon import prepare
from agent.gnss_wiring import Location
from agent.pipeline import Pipeline
from tests.support.nmea import open_on
from tests.support.power import WAIT, power_config
from tests.support.wait import wait_for

GNSS = '[consent]\ngranted = ["location"]\n'


def test_a_wake_while_the_receiver_opens_reads_it(
    tmp_path: Path, pty: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = pty
    channel = f"wake-race-{uuid.uuid4().hex[:8]}"
    cfg = load_config(power_config(tmp_path, channel, f'[gnss]\nport = "{path}"\n{GNSS}'))
    pipeline = Pipeline(cfg, prepare(cfg), boot=bytes(8), sink=lambda update: None)
    location = Location(pipeline)
    location.pause("started")  # as the agent does with [power]: until the inputs decide
    woken = threading.Thread(target=location.resume, name="lifecycle")
    real_open = gnss_wiring.open_gnss

    def opening(*args: Any) -> Any:
        source = real_open(*args)
        real_pause = source.pause

        def pause(reason: str = "paused", timeout: float = 5.0) -> bool:
            # The wake comes now, between the opening and the start paused. Once the opening
            # and the wake exclude each other, the wake waits for the opening: the join ends
            # at its timeout, which only bounds how long the wake had to get in first.
            woken.start()
            woken.join(0.5)
            return real_pause(reason, timeout)

        source.pause = pause  # type: ignore[method-assign]
        return source

    monkeypatch.setattr(gnss_wiring, "open_gnss", opening)
    location.poll()  # the pipeline's first turn: the receiver opened
    try:
        woken.join(WAIT)
        assert not woken.is_alive()
        src = location.source
        assert src is not None
        # Woken: the receiver is read, not left paused with nothing to resume it.
        assert src.paused is None
        wait_for(lambda: open_on(path) == 2, WAIT, "the port open")
    finally:
        location.close()
