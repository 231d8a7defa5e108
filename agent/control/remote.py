"""Remote commands: who may command this car, and what a command may do. Pure: no I/O, no
threads, the wall clock passed in (unix milliseconds, because a command's expiry is wall time).

``Authorizer.decide`` turns the bytes of one message into either a command to execute or an
answer that refuses it, with one reason per refusal (the keys of the rejection counters):
default deny without a command key; size, shape, key id and signature (agent.control.envelope);
the VIN inside the signed payload; expiry (answered ``expired``, never executed, also when it
arrives late); a lifetime bound and a clock-skew bound; replayed ids; unknown commands and bad
arguments. An id is executed at most once: ``SeenIds`` remembers ids until their expiry,
bounded, and is saved by the caller before the command runs (agent.control.service).

Consent is the upper bound of everything remote: ``consent_change`` computes the categories
granted after a remote consent command; a grant is refused unless the activation allowed it.
Executing a command and sending the answer are the daemon's job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config import GRANTABLE
from agent.control.envelope import Command, EnvelopeError, key_id, open_envelope
from agent.control.zones import ZONE_ARGS, check_zone_args

OK, REJECTED, FAILED, EXPIRED = "ok", "rejected", "failed", "expired"

# Reasons beyond the envelope's own (oversized, malformed, unsigned, bad_signature, wrong_key).
DISABLED = "disabled"
WRONG_VIN = "wrong_vin"
REPLAYED = "replayed"
TOO_LONG = "lifetime"
FUTURE = "not_yet_valid"
REPLAY_FULL = "replay_memory_full"
UNKNOWN_COMMAND = "unknown_command"
BAD_ARGS = "bad_args"
NOT_ALLOWED = "not_allowed"

COMMANDS = ("ping", "snapshot", "resend", "consent", "plan", "diag")
# A command may live at most this long: ids are remembered until they expire, so this bounds
# how long the replay memory holds one.
MAX_LIFETIME_MS = 7 * 24 * 3600 * 1000
# A command issued further in the future than this is refused: the car's or sender's clock is
# wrong, and its expiry cannot be judged.
MAX_SKEW_MS = 5 * 60 * 1000
MAX_SEEN = 4096


@dataclass(frozen=True)
class Response:
    """The answer to one command, as published."""

    id: str | None
    status: str
    detail: str = ""
    result: Any = None
    reason: str | None = field(default=None, compare=False)  # counter key; not published

    def to_json(self) -> bytes:
        doc = {"id": self.id, "status": self.status, "detail": self.detail, "result": self.result}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()


@dataclass(frozen=True)
class Decision:
    """Either ``command`` is set (execute it, after saving the seen ids) or ``response``."""

    command: Command | None = None
    response: Response | None = None


def refuse(reason: str, detail: str, command_id: str | None = None) -> Decision:
    return Decision(response=Response(command_id, REJECTED, f"{reason}: {detail}", None, reason))


class SeenIds:
    """Ids of executed commands with their expiry (unix ms); bounded by ``limit``.

    Expired ids are forgotten: a replay of such a command is refused as expired anyway.
    """

    def __init__(self, limit: int = MAX_SEEN, entries: Mapping[str, int] | None = None) -> None:
        self.limit = limit
        self._ids: dict[str, int] = dict(entries or {})

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def prune(self, now_ms: int) -> None:
        self._ids = {i: e for i, e in self._ids.items() if e >= now_ms}

    def add(self, command_id: str, expires: int, now_ms: int) -> bool:
        """Remember an id; False if the memory is full of unexpired ids (then refuse the
        command: forgetting an id would allow a replay)."""
        if len(self._ids) >= self.limit:
            self.prune(now_ms)
            if len(self._ids) >= self.limit:
                return False
        self._ids[command_id] = expires
        return True

    def discard(self, command_id: str) -> None:
        self._ids.pop(command_id, None)

    def to_doc(self) -> dict[str, int]:
        return dict(self._ids)

    @classmethod
    def from_doc(cls, doc: Any, limit: int = MAX_SEEN) -> SeenIds:
        """From a stored document; entries of the wrong type are skipped, never trusted."""
        entries: dict[str, int] = {}
        if isinstance(doc, dict):
            for k, v in doc.items():
                if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool):
                    entries[k] = v
        # Keep the ids that expire last if the stored file holds more than the limit.
        kept = sorted(entries.items(), key=lambda kv: kv[1])[-limit:] if limit else []
        return cls(limit, dict(kept))


def _categories(value: Any, name: str) -> list[str] | str:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        return f"args.{name} must be a non-empty list of category names"
    unknown = [c for c in value if c not in GRANTABLE]
    if unknown:
        return f"args.{name}: unknown categories {', '.join(unknown)[:100]}; known: " + ", ".join(
            GRANTABLE
        )
    return list(value)


def check_args(cmd: Command) -> str | None:
    """A problem with the command's arguments, or None."""
    args = cmd.args
    if cmd.command in ("ping", "snapshot", "resend", "diag"):
        return None if not args else f"{cmd.command} takes no arguments"
    if cmd.command == "plan":
        if set(args) != {"plan"} or not isinstance(args["plan"], dict):
            return 'plan takes args {"plan": {...}} (a plan object)'
        return None
    if cmd.command == "consent":
        extra = sorted(set(args) - {"revoke", "grant", *ZONE_ARGS})
        if extra or not args:
            return (
                'consent takes args {"revoke": [...]}, {"grant": [...]}, {"add_zones": [...]} '
                'and/or {"remove_zones": [...]}'
            )
        zone_problem = check_zone_args(args)
        if zone_problem is not None:
            return zone_problem
        for name in ("revoke", "grant"):
            if name in args:
                got = _categories(args[name], name)
                if isinstance(got, str):
                    return got
        overlap = set(args.get("revoke", ())) & set(args.get("grant", ()))
        if overlap:
            return f"categories both revoked and granted: {', '.join(sorted(overlap))}"
        return None
    return "unknown command"


def consent_change(
    granted: Iterable[str] | None, args: Mapping[str, Any], *, allow_grant: bool
) -> frozenset[str] | str:
    """Categories granted after a consent command (``granted`` None: everything), or why it is
    refused. Revoking is always allowed; granting only where the activation allowed it."""
    now = frozenset(GRANTABLE) if granted is None else frozenset(granted)
    grant = frozenset(args.get("grant", ()))
    if grant - now and not allow_grant:
        return (
            f"{NOT_ALLOWED}: granting consent remotely is not allowed on this car "
            "(activate with --allow-remote-consent)"
        )
    # Exactly the categories named: revoking "location" leaves "coarse_location" as it was.
    return (now | grant) - frozenset(args.get("revoke", ()))


class Authorizer:
    """Decides about one message at a time. Not thread-safe: one worker owns it."""

    def __init__(
        self,
        *,
        vin: str,
        key: Ed25519PublicKey | None,
        seen: SeenIds,
        clock: Callable[[], int],
    ) -> None:
        self.vin = vin
        self.key = key
        self.kid = key_id(key) if key is not None else None
        self.seen = seen
        self.clock = clock

    def decide(self, data: bytes) -> Decision:
        if self.key is None:
            return refuse(DISABLED, "this car accepts no remote commands (no [remote] key)")
        try:
            cmd = open_envelope(data, self.key, self.kid)
        except EnvelopeError as err:
            return refuse(err.kind, err.detail, err.command_id)
        now = self.clock()
        if cmd.vin != self.vin:
            return refuse(WRONG_VIN, f"signed for vehicle {cmd.vin}, this is {self.vin}", cmd.id)
        if cmd.expires <= cmd.issued:
            return refuse("malformed", "expires must be after issued", cmd.id)
        if now >= cmd.expires:
            late = (now - cmd.expires) / 1000
            return Decision(
                response=Response(
                    cmd.id, EXPIRED, f"expired {late:.1f} s before it arrived", None, EXPIRED
                )
            )
        if cmd.expires - cmd.issued > MAX_LIFETIME_MS:
            return refuse(TOO_LONG, "a command may live at most 7 days", cmd.id)
        if cmd.issued > now + MAX_SKEW_MS:
            ahead = (cmd.issued - now) / 1000
            return refuse(FUTURE, f"issued {ahead:.0f} s in the future (clock skew)", cmd.id)
        if cmd.id in self.seen:
            return refuse(REPLAYED, "this command id was already executed", cmd.id)
        if cmd.command not in COMMANDS:
            return refuse(UNKNOWN_COMMAND, f"unknown command {cmd.command[:32]!r}", cmd.id)
        problem = check_args(cmd)
        if problem is not None:
            return refuse(BAD_ARGS, problem, cmd.id)
        if not self.seen.add(cmd.id, cmd.expires, now):
            return refuse(REPLAY_FULL, "too many unexpired commands remembered", cmd.id)
        return Decision(command=cmd)
