"""The vehicle lifecycle as a pure state machine: driving, parked, low voltage.

Input is a snapshot of what the car says (``PowerInputs``: when each bus last delivered a frame,
the last ignition value and when it came, the last battery voltage); output is the state with
its reason and, at each transition, the ordered actions that the caller carries out (pause or
read the GNSS receiver, commit the open batch, upload until a deadline, modem to low or full
power, run the sleep command, resume input). The state is derived from the inputs each time,
never remembered across a restart: an agent started in a parked car parks again as soon as the
inputs say so.

A new machine has no evidence of a drive: it reports ``parked`` (reason ``started``) and does
nothing until the inputs decide; that first decision is a transition from ``started`` (the
previous state named in the Transition, never a state of its own), so a restarted agent in a
parked car puts the box back to sleep without waking the modem, and one in a driving car
switches the radio on (it may have been left in low power).

Rules (README, Lifecycle):
- parked when the ignition signal (if configured and seen within ``park_after`` seconds: the
  message is cyclic, an older value is stale) is not one of ``ignition_on``, or when every bus
  has been silent for ``park_after`` seconds;
- driving when the ignition is on, or, while no fresh ignition value is known, when a bus
  delivered a frame within ``park_after`` seconds (after a start, with an ignition signal
  configured, frames alone decide only once ``park_after`` passed without an ignition value:
  the first frames of a parked car must not look like a drive);
- low voltage, above both, when the battery stayed below ``cutoff_volts`` for ``cutoff_after``
  seconds; left only once it reads at least ``resume_volts``.

No I/O, no threads, no wall clock: the monotonic clock is passed in, the caller decides when
to call ``step`` again from ``next_check``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from agent.config import PowerConfig

DRIVING, PARKED, LOW_VOLTAGE = "driving", "parked", "low_voltage"
STATES = (DRIVING, PARKED, LOW_VOLTAGE)
# Only as Transition.previous: the first state the inputs decided after a start.
STARTED = "started"


class Action(StrEnum):
    COMMIT = "commit"  # close and commit the open update batch
    UPLOAD = "upload"  # publish the backlog until Transition.upload_deadline
    MODEM_LOW = "modem_low_power"
    MODEM_FULL = "modem_full_power"
    SLEEP = "sleep"  # run the sleep command (or simply wait)
    RESUME = "resume"  # input and uplink back to normal
    GNSS_OFF = "gnss_off"  # the GNSS receiver paused; its trip and the CAN position's end
    GNSS_ON = "gnss_on"  # the GNSS receiver read again; a new CAN position trip


# What each transition asks for, in the order it must be done.
# The receiver is paused first (its last fixes go into the commit; a modem's GNSS engine is
# switched off before the radio) and read again first (a wake's position is wanted at once).
_PARK = (Action.GNSS_OFF, Action.COMMIT, Action.UPLOAD, Action.MODEM_LOW, Action.SLEEP)
_CUT = (Action.GNSS_OFF, Action.COMMIT, Action.MODEM_LOW, Action.SLEEP)
_WAKE = (Action.GNSS_ON, Action.MODEM_FULL, Action.RESUME)
ACTIONS: dict[tuple[str, str], tuple[Action, ...]] = {
    (DRIVING, PARKED): _PARK,
    (DRIVING, LOW_VOLTAGE): _CUT,
    # Parked, the receiver is already paused.
    (PARKED, LOW_VOLTAGE): (Action.COMMIT, Action.MODEM_LOW, Action.SLEEP),
    (PARKED, DRIVING): _WAKE,
    (LOW_VOLTAGE, DRIVING): _WAKE,
    # The battery recovered but the car is still parked: it stays asleep.
    (LOW_VOLTAGE, PARKED): (),
    # After a start the radio may still be in the low power a previous run left it in.
    (STARTED, DRIVING): _WAKE,
    (STARTED, PARKED): _PARK,
    (STARTED, LOW_VOLTAGE): _CUT,
}


@dataclass(frozen=True)
class PowerSettings:
    """The [power] values the machine needs (agent.config.PowerConfig carries them)."""

    ignition_on: Sequence[int | float | str] = (1,)
    has_ignition: bool = False
    park_after: float = 60.0
    park_upload: float = 30.0
    cutoff_volts: float = 12.2
    cutoff_after: float = 240.0
    resume_volts: float = 12.6


@dataclass(frozen=True)
class PowerInputs:
    """What the car said, as last seen. Times are on the same monotonic clock as the machine."""

    last_frame: Mapping[str, float | None] = field(default_factory=dict)
    ignition: int | float | str | None = None  # decoded value (number) or its label
    ignition_label: str | None = None
    ignition_at: float | None = None
    volts: float | None = None


@dataclass(frozen=True)
class Transition:
    state: str
    previous: str
    since: float  # monotonic
    reason: str
    volts: float | None
    actions: tuple[Action, ...]
    upload_deadline: float | None = None  # monotonic; set when UPLOAD is among the actions


class Lifecycle:
    """Derives the lifecycle state from ``PowerInputs``; ``step`` returns a Transition when the
    state changed (once per change) or was first decided after the start, else None."""

    def __init__(
        self, settings: PowerSettings, clock: Callable[[], float], *, reason: str = "started"
    ) -> None:
        self.settings = settings
        self.clock = clock
        # Until the inputs decide (``settled``): parked, doing nothing.
        self.state = PARKED
        self.settled = False
        self.since = clock()
        self.reason = reason
        self.volts: float | None = None
        self._below_since: float | None = None

    def ignition_is_on(self, inputs: PowerInputs) -> bool | None:
        """On, off, or None when no fresh ignition value is known."""
        s = self.settings
        if not s.has_ignition or inputs.ignition is None or inputs.ignition_at is None:
            return None
        if self.clock() - inputs.ignition_at >= s.park_after:
            return None  # ignition messages are cyclic: one this old is stale
        for want in s.ignition_on:
            if isinstance(want, str):
                if want in (inputs.ignition_label, inputs.ignition):
                    return True
            elif not isinstance(inputs.ignition, str) and inputs.ignition == want:
                return True
        return False

    def _all_silent(self, inputs: PowerInputs) -> bool:
        """Every bus silent for ``park_after`` (counted from the start, or from entering
        driving, when no frame came since)."""
        frames = [t for t in inputs.last_frame.values() if t is not None]
        latest = max(frames, default=None)
        if latest is None:
            if self.settled and self.state != DRIVING:
                return True
            latest = self.since
        return self.clock() - latest >= self.settings.park_after

    def _wanted(self, inputs: PowerInputs) -> tuple[str, str] | None:
        """The state the inputs ask for with its reason; None while they do not decide yet."""
        s, now = self.settings, self.clock()
        volts = inputs.volts
        # No reading (none yet, or the source lost): no cut-off is decided on a guess.
        if volts is None or volts >= s.cutoff_volts:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        if self.state == LOW_VOLTAGE and (volts is None or volts < s.resume_volts):
            return LOW_VOLTAGE, self.reason
        if (
            volts is not None
            and self._below_since is not None
            and (now - self._below_since >= s.cutoff_after)
        ):
            return LOW_VOLTAGE, (
                f"battery {volts:.2f} V below {s.cutoff_volts:g} V for {s.cutoff_after:g} s"
            )
        on = self.ignition_is_on(inputs)
        if on is True:
            return DRIVING, "ignition on"
        if on is False:
            return PARKED, "ignition off"
        if self._all_silent(inputs):
            return PARKED, f"every bus silent for {s.park_after:g} s"
        if not self.settled and (
            all(t is None for t in inputs.last_frame.values())
            # Frames but no ignition value yet: it is the better witness, give it time.
            or (s.has_ignition and now - self.since < s.park_after)
        ):
            return None
        if self.state != DRIVING:
            return DRIVING, "bus activity"
        return DRIVING, self.reason

    def step(self, inputs: PowerInputs) -> Transition | None:
        self.volts = inputs.volts
        wanted = self._wanted(inputs)
        if wanted is None or (self.settled and wanted[0] == self.state):
            return None
        state, reason = wanted
        now = self.clock()
        if self.state == LOW_VOLTAGE and state in (DRIVING, PARKED):
            reason = f"battery {inputs.volts:.2f} V back above {self.settings.resume_volts:g} V"
            reason += f"; {'ignition on' if state == DRIVING else 'still parked'}"
        previous = self.state if self.settled else STARTED
        self.settled = True
        self.state, self.since, self.reason = state, now, reason
        actions = ACTIONS[(previous, state)]
        deadline = now + self.settings.park_upload if Action.UPLOAD in actions else None
        return Transition(state, previous, now, reason, inputs.volts, actions, deadline)

    def next_check(self, inputs: PowerInputs) -> float | None:
        """Seconds until ``step`` could change the state with no new input (a silence or a
        sag reaching its limit), or None when only new input can change it."""
        now, s = self.clock(), self.settings
        due: list[float] = []
        if not self.settled:
            due.append(self.since + s.park_after)
        elif self.state == DRIVING:
            frames = [t for t in inputs.last_frame.values() if t is not None]
            latest = max(frames, default=self.since)
            due.append(latest + s.park_after)
        if self._below_since is not None and self.state != LOW_VOLTAGE:
            due.append(self._below_since + s.cutoff_after)
        if not due:
            return None
        return max(0.0, min(due) - now)


def settings_of(cfg: PowerConfig) -> PowerSettings:
    return PowerSettings(
        ignition_on=tuple(cfg.ignition_on),
        has_ignition=cfg.ignition is not None,
        park_after=cfg.park_after,
        park_upload=cfg.park_upload,
        cutoff_volts=cfg.cutoff_volts,
        cutoff_after=cfg.cutoff_after,
        resume_volts=cfg.resume_volts,
    )
