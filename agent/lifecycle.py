"""Runs the vehicle lifecycle (agent.control.power) against the live agent.

Its own thread, woken by events only: a [power] signal's new value or the first frames after
a silence (both handed over by the pipeline), a stop request, or the next instant the state
machine names (a silence or a sag reaching its limit); while parked nothing wakes it more often
than ``[power] heartbeat`` (the voltage file is read then). At each transition it logs once
with the reason, writes the state as an event sample into the data, and carries out the
actions through the parts that own them: the GNSS receiver is paused (agent.gnss_wiring: not
read while parked, its trip ended) or read again, the pipeline commits its open batch, the uplink
publishes the backlog until the deadline and then pauses its link (a clean disconnect, no
reconnect attempts until the wake) before the modem manager switches the radio to low power,
and the sleep command runs (agent.sleepcommand: in the background, so a wake is served while
it runs; ended at the wake). It decides nothing itself.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from agent.catalog import POWER_CHOICES, PowerRead
from agent.config import PowerConfig
from agent.control.power import (
    DRIVING,
    PARKED,
    Action,
    Lifecycle,
    PowerInputs,
    Transition,
    settings_of,
)
from agent.ratelimit import RateLimitedLog
from agent.sleepcommand import SleepCommand

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

_STATE_VALUE = {v: k for k, v in POWER_CHOICES.items()}
# Power changes wait at most this long for the modem manager.
MODEM_TIMEOUT = 15.0


class PipelineLike(Protocol):
    last_frame: list[float | None]

    def call_soon(self, fn: Callable[[], None]) -> None: ...
    def set_idle(self, timeout: float | None) -> None: ...
    def commit(self) -> None: ...
    def write_power_state(self, value: int, t_ms: int) -> None: ...
    def data_time_ms(self) -> int: ...
    def end_trip(self, why: str) -> None: ...


class PowerController:
    def __init__(
        self,
        cfg: PowerConfig,
        pipeline: PipelineLike,
        buses: list[str],
        *,
        upload: Callable[[float], bool] | None = None,
        modem_power: Callable[[str, bool], bool] | None = None,
        pause_link: Callable[[str | None], None] | None = None,
        pause_gnss: Callable[[str | None], None] | None = None,
        on_change: Callable[[Transition], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.buses = buses
        self.upload = upload
        self.modem_power = modem_power
        self.pause_link = pause_link
        self.pause_gnss = pause_gnss
        self.on_change = on_change
        self.clock = clock
        self.machine = Lifecycle(settings_of(cfg), clock)
        self.wall_since = time.time()
        # (read, physical value, label, when (monotonic), frame time in ms)
        self._values: collections.deque[tuple[PowerRead, float, str | None, float, int]] = (
            collections.deque(maxlen=256)
        )
        self.dropped_values = 0
        # Values handed over and values acted on (or dropped): what ``settle`` waits for.
        self._settle = threading.Condition()
        self._received = 0
        self._handled = 0
        self._ignition: tuple[float | str, str | None, float, str] | None = None
        self._volts: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="power", daemon=True)
        self.sleeper = (
            SleepCommand(cfg.sleep_command, cfg.sleep_timeout) if cfg.sleep_command else None
        )

    # -- inputs (other threads) ------------------------------------------------------------
    def on_value(self, read: PowerRead, raw: float, t_ms: int) -> None:
        """From the pipeline thread: a [power] signal's decoded (raw) value changed."""
        label = read.choices.get(int(raw)) if read.choices else None
        value = raw * read.scale + read.offset
        with self._settle:
            if len(self._values) == self._values.maxlen:
                self.dropped_values += 1
                self._handled += 1
            self._values.append((read, value, label, self.clock(), t_ms))
            self._received += 1
        self._wake.set()

    def on_activity(self, index: int) -> None:
        """From the pipeline thread, per batch of frames: wakes the controller only when the
        state could change with it (not while driving)."""
        if self.machine.state != DRIVING:
            self._wake.set()

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def settle(self, timeout: float) -> bool:
        """Wait until every value handed over so far was acted on (its transition and the
        actions done): the end of a replay must not cut the last transitions off. False if
        ``timeout`` passed first."""
        with self._settle:
            target = self._received
            self._wake.set()
            return self._settle.wait_for(lambda: self._handled >= target, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if self.sleeper is not None:
            self.sleeper.end("the agent stopped")

    def status(self) -> dict[str, Any]:
        m = self.machine
        doc: dict[str, Any] = {
            "state": m.state,
            "since": round(self.wall_since, 3),
            "reason": m.reason,
            "volts": m.volts,
        }
        if self.sleeper is not None:
            doc["sleep"] = self.sleeper.status()
        return doc

    # -- the thread --------------------------------------------------------------------------
    def _inputs(self) -> PowerInputs:
        last = dict(zip(self.buses, self.pipeline.last_frame, strict=True))
        ign = self._ignition
        if ign is None:
            return PowerInputs(last_frame=last, volts=self._volts)
        value, label, at, bus = ign
        # The ignition message is cyclic; an unchanged payload is not decoded again, so the
        # value is as fresh as the last frame of its bus.
        seen = last.get(bus)
        return PowerInputs(
            last_frame=last,
            ignition=value,
            ignition_label=label,
            ignition_at=max(at, seen) if seen is not None else at,
            volts=self._volts,
        )

    def _read_voltage_file(self) -> None:
        path = self.cfg.voltage_file
        if path is None:
            return
        try:
            self._volts = float(Path(path).read_text().split()[0]) * self.cfg.voltage_scale
        except (OSError, ValueError, IndexError) as err:
            self._volts = None
            rlog.warning(("voltage", str(path)), "power: cannot read %s: %s", path, err)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read_voltage_file()
            while True:
                with self._settle:
                    if not self._values:
                        break
                    read, value, label, at, t_ms = self._values.popleft()
                if read.role == "voltage":
                    self._volts = value
                else:
                    self._ignition = (value, label, at, read.bus)
                self._step(t_ms)
                with self._settle:
                    self._handled += 1
                    self._settle.notify_all()
            self._step()
            wait = self.machine.next_check(self._inputs())
            if self.cfg.voltage_file is not None or self.machine.state == DRIVING:
                wait = self.cfg.heartbeat if wait is None else min(wait, self.cfg.heartbeat)
            self._wake.wait(wait)
            self._wake.clear()

    def _step(self, t_ms: int | None = None) -> None:
        """One step of the machine; ``t_ms``: the time of the frame whose value is new (the
        transition's event carries it: a replay's data keeps the recording's clock)."""
        t = self.machine.step(self._inputs())
        if t is None:
            return
        self.wall_since = time.time() - (self.clock() - t.since)
        volts = "" if t.volts is None else f" (battery {t.volts:.2f} V)"
        log.warning("power: %s -> %s: %s%s", t.previous, t.state, t.reason, volts)
        value = _STATE_VALUE[t.state]
        if t_ms is None:
            t_ms = self.pipeline.data_time_ms()
        self.pipeline.call_soon(lambda: self.pipeline.write_power_state(value, t_ms))
        if self.on_change is not None:
            self.on_change(t)
        for action in t.actions:
            self._do(action, t)

    def _do(self, action: Action, t: Transition) -> None:
        if action is Action.COMMIT:
            done = threading.Event()

            def commit() -> None:
                self.pipeline.commit()
                done.set()

            self.pipeline.call_soon(commit)
            if not done.wait(10.0):
                log.warning("power: the pipeline did not commit within 10 s")
        elif action is Action.UPLOAD and self.upload is not None:
            assert t.upload_deadline is not None
            left = max(0.0, t.upload_deadline - self.clock())
            drained = self.upload(left)
            log.info(
                "power: backlog %s", "uploaded" if drained else f"not all uploaded in {left:g} s"
            )
        elif action is Action.MODEM_LOW:
            self.pipeline.set_idle(self.cfg.heartbeat)
            # Radio traffic ends with a clean disconnect, before the radio goes off under it.
            if self.pause_link is not None:
                self.pause_link("parked" if t.state == PARKED else "low voltage")
            if self.modem_power is not None:
                self.modem_power(self.cfg.modem_low_power, True)
        elif action is Action.MODEM_FULL:
            self.pipeline.set_idle(None)
            if self.sleeper is not None:
                self.sleeper.end("the car woke")
            if self.modem_power is not None:
                self.modem_power(self.cfg.modem_full_power, False)
        elif action is Action.RESUME:
            if self.pause_link is not None:
                self.pause_link(None)  # the radio is back: connect at once
        elif action is Action.SLEEP:
            self._sleep()
        elif action is Action.GNSS_OFF:
            # The trip ends at the park for the CAN position as for the receiver.
            why = "parked" if t.state == PARKED else "low voltage"
            self.pipeline.call_soon(lambda: self.pipeline.end_trip(why))
            if self.pause_gnss is not None:
                self.pause_gnss(why)
        elif action is Action.GNSS_ON:
            self.pipeline.call_soon(lambda: self.pipeline.end_trip("the car woke"))
            if self.pause_gnss is not None:
                self.pause_gnss(None)

    def _sleep(self) -> None:
        if self.sleeper is not None:
            self.sleeper.start()
