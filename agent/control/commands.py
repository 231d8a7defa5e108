"""What each remote command does, in terms of a few operations the daemon offers (``Target``).

``execute`` maps an authorized command (agent.control.remote already checked its signature,
expiry, replay and arguments) to the daemon's operations and turns the outcome into the answer:
``ping`` (the status summary), ``snapshot`` (a snapshot update now, as an event), ``resend``
(the retained schema and status again), ``diag`` (every DTC list read now; only where the
owner granted ``diagnostics``), ``consent`` (revoke, or grant where the activation
allowed it: the owner's consent bounds everything remote) and ``plan`` (a collection plan, when
the daemon supports plans). It does not publish the answer (agent.control.service) nor
implement the operations (agent.daemon).
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.config import ZoneConfig
from agent.control.envelope import Command
from agent.control.remote import FAILED, NOT_ALLOWED, OK, REJECTED, Response, consent_change
from agent.control.zones import zone_change


class Target(Protocol):
    def status(self) -> dict[str, Any]: ...

    def request_snapshot(self, timeout: float) -> int | None:
        """Write a snapshot update now, as an event; samples written, or None if the pipeline
        is not running."""

    def resend(self) -> None: ...

    def consent_granted(self) -> list[str] | None:
        """Categories granted now (None: the car has no [consent] section)."""

    def change_consent(
        self, granted: frozenset[str], zones: list[ZoneConfig] | None = None
    ) -> list[str]:
        """Apply, store and purge (``zones``: the privacy zones too); problems (empty list:
        applied)."""

    def privacy_zones(self) -> list[ZoneConfig]:
        """The privacy zones in force."""

    def purged(self) -> dict[str, Any] | None:
        """What the last purge of stored updates took back (a new object per purge), or None."""


SNAPSHOT_WAIT = 5.0
_ZONE_KEYS = {"add_zones", "remove_zones"}
# A DTC read asks every list of every ECU; with "response pending" answers it takes seconds.
DIAG_WAIT = 20.0


def summary(status: dict[str, Any]) -> dict[str, Any]:
    """The status summary a ping answers with: who, what runs, and how it is doing."""
    keep = ("vin", "boot", "version", "started", "schema", "buses", "consent", "plan", "remote")
    doc = {k: status[k] for k in keep if k in status}
    pipeline = status.get("pipeline", {})
    doc["pipeline"] = {k: pipeline.get(k) for k in ("frames", "updates", "samples")}
    if "outbox" in status:
        doc["outbox"] = {k: status["outbox"].get(k) for k in ("rows", "oldest_age")}
    if "uplink" in status:
        doc["uplink"] = {k: status["uplink"].get(k) for k in ("state", "acked")}
    if isinstance(status.get("modems"), dict):
        doc["modem"] = status["modems"].get("active")
    return doc


def execute(target: Target, cmd: Command, *, allow_consent_grant: bool) -> Response:
    if cmd.command == "ping":
        return Response(cmd.id, OK, "pong", summary(target.status()))
    if cmd.command == "snapshot":
        written = target.request_snapshot(SNAPSHOT_WAIT)
        if written is None:
            return Response(cmd.id, FAILED, "the pipeline is not running", None)
        return Response(cmd.id, OK, f"snapshot of {written} samples queued", {"samples": written})
    if cmd.command == "resend":
        target.resend()
        return Response(cmd.id, OK, "schema and status queued again", None)
    if cmd.command == "consent":
        return _consent(target, cmd, allow_consent_grant)
    if cmd.command == "diag":
        return _diag(target, cmd)
    if cmd.command == "plan":
        # Plans are optional for a target: apply_plan(doc) -> problems, one line each.
        apply_plan = getattr(target, "apply_plan", None)
        if apply_plan is None:
            return Response(cmd.id, FAILED, "plans not supported", None)
        problems = list(apply_plan(cmd.args["plan"]))
        if problems:
            return Response(cmd.id, REJECTED, "\n".join(problems), None, "bad_plan")
        return Response(cmd.id, OK, "plan applied", target.status().get("plan"))
    return Response(cmd.id, REJECTED, "unknown_command: unknown command", None, "unknown_command")


def _diag(target: Target, cmd: Command) -> Response:
    # Diagnostics are optional for a target: read_dtcs(timeout) -> bus -> ECU -> list -> codes
    # (or bus -> why not); None when no [[diagnostics]] section is configured; PermissionError
    # when the consent the diagnostics follow does not allow DTC reads (a revocation that
    # came while the read waited).
    read_dtcs = getattr(target, "read_dtcs", None)
    granted = target.consent_granted()
    refused = Response(
        cmd.id, REJECTED, f"{NOT_ALLOWED}: the owner has not granted diagnostics", None, NOT_ALLOWED
    )
    if granted is not None and "diagnostics" not in granted:
        return refused
    try:
        result = None if read_dtcs is None else read_dtcs(DIAG_WAIT)
    except PermissionError:
        return refused
    if result is None:
        return Response(cmd.id, FAILED, "no [[diagnostics]] configured", None)
    if all(isinstance(v, str) for v in result.values()):
        return Response(cmd.id, FAILED, "; ".join(f"{b}: {v}" for b, v in result.items()), result)
    return Response(cmd.id, OK, "DTCs read", result)


def _consent(target: Target, cmd: Command, allow_grant: bool) -> Response:
    before = target.consent_granted()
    if before is None:
        return Response(
            cmd.id,
            REJECTED,
            f"{NOT_ALLOWED}: this car has no [consent] section (not activated)",
            None,
            NOT_ALLOWED,
        )
    after = consent_change(before, cmd.args, allow_grant=allow_grant)
    if isinstance(after, str):
        return Response(cmd.id, REJECTED, after, None, NOT_ALLOWED)
    zones_before = target.privacy_zones() if _ZONE_KEYS & set(cmd.args) else None
    zones = None
    if zones_before is not None:
        # Adding a zone is stricter, so always allowed; removing one is not (allow_grant).
        changed = zone_change(zones_before, cmd.args, allow_loosen=allow_grant)
        if isinstance(changed, str):
            reason = NOT_ALLOWED if changed.startswith(NOT_ALLOWED) else "bad_args"
            return Response(cmd.id, REJECTED, changed, None, reason)
        zones = None if changed == zones_before else changed
    revoked = sorted(set(before) - after)
    granted = sorted(after - set(before))
    purge_before = target.purged()
    if revoked or granted or zones is not None:
        problems = (
            target.change_consent(after) if zones is None else target.change_consent(after, zones)
        )
        if problems:
            return Response(cmd.id, FAILED, "; ".join(problems), None)
    parts = [f"revoked {', '.join(revoked)}"] * bool(revoked)
    parts += [f"granted {', '.join(granted)}"] * bool(granted)
    if zones is not None:
        parts.append(f"privacy zones now {', '.join(z.name for z in zones) or 'none'}")
    detail = "; ".join(parts)
    result: dict[str, Any] = {
        "granted": sorted(after),
        "revoked": revoked,
        "newly_granted": granted,
    }
    if zones_before is not None:
        result["zones"] = [z.name for z in (zones if zones is not None else zones_before)]
    purge = target.purged()
    if purge is not None and purge is not purge_before:
        # Revoking a category or adding a zone took samples back from the updates not yet sent.
        result["purged"] = {k: purge[k] for k in ("rewritten", "deleted", "location_samples")}
        detail += f"; stored updates: {purge['rewritten']} rewritten, {purge['deleted']} deleted"
    return Response(cmd.id, OK, detail or "consent unchanged", result)
