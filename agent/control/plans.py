"""Collection plans on the box: parse, decide, store and expire the backend's desired selection.

A plan is JSON ``{"id", "version", "expires"?, "signal"?: [...], "trigger"?: [...]}``; its
sections are validated by the config's own models (agent.config.PlanModel) and replace the
config's sections of the same name. It arrives as a ``plan`` command or as the signed retained
message on ``<prefix>/<vin>/plan`` (``open_retained``: the same envelope as commands, checked
for key, signature, VIN, command and expiry; no replay memory, because a retained message is
re-delivered at every connect by design: re-applying the same id and version is a no-op).

``PlanBook`` holds what was decided: the plan in force (stored atomically next to the outbox
so it survives restarts), the latest decision for the status (``applied``, ``rejected`` or
``expired``, with a reason), and when the plan in force expires. Applying a config is the
daemon's job (the same path as a SIGHUP reload); this module reads no clock of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent.atomicfile import write_atomic
from agent.catalog import Catalog
from agent.config import Config, ConsentConfig, PlanModel, format_validation_error, merge_plan
from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:  # cryptography is loaded only when a signed plan arrives, not at start-up
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

APPLIED, REJECTED, EXPIRED = "applied", "rejected", "expired"
# A plan larger than this is refused unread (an envelope is bounded at 64 KiB anyway).
MAX_PLAN_BYTES = 64 * 1024


@dataclass(frozen=True)
class PlanStatus:
    id: str | None
    version: int | None
    state: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "state": self.state, "reason": self.reason}


def parse_plan(doc: Any) -> PlanModel:
    """Validate a plan document (a mapping, or its JSON text); ConfigError lists every problem,
    one line each, naming the field."""
    if isinstance(doc, (bytes, str)):
        if len(doc) > MAX_PLAN_BYTES:
            raise ConfigError(f"plan: {len(doc)} bytes (limit {MAX_PLAN_BYTES})")
        try:
            doc = json.loads(doc)
        except (ValueError, RecursionError) as err:
            raise ConfigError(f"plan: not JSON ({type(err).__name__}: {err})"[:200]) from None
    if not isinstance(doc, dict):
        raise ConfigError("plan: must be a JSON object")
    name = doc.get("id")
    where = f"plan {name!r}" if isinstance(name, str) and len(name) <= 128 else "plan"
    try:
        return PlanModel.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(*format_validation_error(where, err)) from None


def _ids(doc: Any) -> tuple[str | None, int | None]:
    """Best-effort id and version of a plan that failed validation, for its status."""
    if not isinstance(doc, dict):
        return None, None
    pid, version = doc.get("id"), doc.get("version")
    return (
        pid[:128] if isinstance(pid, str) else None,
        version if isinstance(version, int) and not isinstance(version, bool) else None,
    )


def open_retained(data: bytes, key: Ed25519PublicKey, *, vin: str, now_ms: int) -> Any:
    """The plan document inside a signed retained message; ConfigError says why not."""
    from agent.control.envelope import EnvelopeError, open_envelope
    from agent.control.remote import check_args

    try:
        cmd = open_envelope(data, key)
    except EnvelopeError as err:
        raise ConfigError(f"retained plan refused: {err.kind}: {err.detail}") from None
    if cmd.vin != vin:
        raise ConfigError(f"retained plan refused: signed for vehicle {cmd.vin}, this is {vin}")
    if cmd.command != "plan":
        raise ConfigError(f"retained plan refused: command is {cmd.command[:32]!r}, not 'plan'")
    if now_ms >= cmd.expires:
        raise ConfigError("retained plan refused: its envelope expired")
    # The same envelope as the plan command, so one signed message can be sent either way.
    problem = check_args(cmd)
    if problem is not None:
        raise ConfigError(f"retained plan refused: {problem}")
    return cmd.args["plan"]


class PlanBook:
    """The plan in force, its stored copy, and the latest decision."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.plan: PlanModel | None = None  # applied (or expired) plan, as stored
        self.plan_state = APPLIED  # of self.plan: applied or expired
        self.status: PlanStatus | None = None

    # -- decisions --------------------------------------------------------------------------

    def check(self, doc: Any, now_ms: int) -> PlanModel | list[str]:
        """The plan to apply, or the problems that reject it (recorded in the status). A plan
        equal in id and version to the stored one is returned as is: the caller skips it."""
        try:
            plan = parse_plan(doc)
        except ConfigError as err:
            pid, version = _ids(doc if not isinstance(doc, (bytes, str)) else None)
            return self.reject(pid, version, list(err.problems))
        cur = self.plan
        if cur is not None and cur.id == plan.id and plan.version < cur.version:
            return self.reject(
                plan.id,
                plan.version,
                [f"plan {plan.id!r}: version {plan.version} is older than {cur.version} in force"],
            )
        if plan.expires is not None and plan.expires <= now_ms and not self.same(plan):
            return self.reject(
                plan.id, plan.version, [f"plan {plan.id!r}: expired before it arrived"]
            )
        return plan

    def same(self, plan: PlanModel) -> bool:
        return self.plan is not None and (self.plan.id, self.plan.version) == (
            plan.id,
            plan.version,
        )

    def reject(self, pid: str | None, version: int | None, problems: list[str]) -> list[str]:
        self.status = PlanStatus(pid, version, REJECTED, "\n".join(problems))
        if self.plan is not None and self.plan_state == APPLIED:
            log.warning("plan %s rejected; plan %s stays in force", pid, self.plan.id)
        for line in problems:
            log.error("plan rejected: %s", line)
        return problems

    def applied(self, plan: PlanModel, reason: str = "") -> None:
        """Record ``plan`` as in force and store it (atomically) so it survives restarts."""
        self.plan, self.plan_state = plan, APPLIED
        self.status = PlanStatus(plan.id, plan.version, APPLIED, reason)
        self._save(plan)
        log.info(
            "plan %s version %s applied%s", plan.id, plan.version, f" ({reason})" if reason else ""
        )

    def expired(self, plan: PlanModel) -> None:
        self.plan, self.plan_state = plan, EXPIRED
        self.status = PlanStatus(
            plan.id, plan.version, EXPIRED, "the config's own selection is in force"
        )
        log.warning(
            "plan %s version %s expired: back to the config's own selection", plan.id, plan.version
        )

    def in_force(self, now_ms: int) -> PlanModel | None:
        """The plan that applies now (None: the config's own selection)."""
        plan = self.plan
        if plan is None or self.plan_state == EXPIRED:
            return None
        if plan.expires is not None and plan.expires <= now_ms:
            return None
        return plan

    def status_doc(self) -> dict[str, Any] | None:
        if self.status is None:
            return None
        doc = self.status.to_json()
        if self.plan is not None and self.status.state == REJECTED and self.plan_state == APPLIED:
            doc["in_force"] = {"id": self.plan.id, "version": self.plan.version}
        return doc

    # -- storage -----------------------------------------------------------------------------

    def load(self, now_ms: int) -> PlanModel | None:
        """Read the stored plan at start; return it if it still applies. A stored plan that
        expired meanwhile is reported ``expired``; an unreadable one is reported and ignored."""
        if self.path is None or not self.path.exists():
            return None
        try:
            plan = parse_plan(self.path.read_bytes())
        except (OSError, ConfigError) as err:
            problems = err.problems if isinstance(err, ConfigError) else [str(err)]
            self.reject(None, None, [f"{self.path}: stored plan unreadable: {p}" for p in problems])
            return None
        self.plan = plan
        if plan.expires is not None and plan.expires <= now_ms:
            self.expired(plan)
            return None
        return plan

    def _save(self, plan: PlanModel) -> None:
        if self.path is None:
            return
        data = json.dumps(plan.model_dump(mode="json", exclude_none=True), indent=1).encode()
        try:
            write_atomic(self.path, data, mode=0o600)
        except OSError as err:
            # The plan is in force now; it will not survive a restart: say so.
            log.error("%s: cannot store the plan: %s", self.path, err.strerror or err)


Prepare = Callable[[Config], Catalog]


class Planner:
    """The config in force under the plans: the config file's own (``base``) with the plan in
    force merged in. Returns configs for the daemon to apply; applies nothing itself. Times
    are Unix milliseconds passed in (a plan's expiry is wall time)."""

    def __init__(self, path: Path | None, base: Config, prepare: Prepare) -> None:
        self.book = PlanBook(path)
        self.base = base
        self.prepare = prepare

    def start(self, catalog: Catalog, now_ms: int) -> tuple[Config, Catalog]:
        """At start: the stored plan, if one applies, on top of the config."""
        plan = self.book.load(now_ms)
        if plan is None:
            return self.base, catalog
        built = self._build(self.base, plan)
        if isinstance(built, list):
            return self.base, catalog
        self.book.applied(plan, _notes(built[1]))
        return built

    def rebase(self, base: Config, catalog: Catalog, now_ms: int) -> tuple[Config, Catalog]:
        """A reloaded config file: the plan in force on top of it (if it still fits)."""
        self.base = base
        plan = self.book.in_force(now_ms)
        if plan is None:
            return base, catalog
        built = self._build(base, plan)
        if isinstance(built, list):
            self.book.plan = None
            return base, catalog
        return built

    def apply(
        self, doc: Any, consent: ConsentConfig | None, now_ms: int
    ) -> tuple[list[str], tuple[Config, Catalog] | None]:
        """Problems (empty: accepted) and the config to switch to (None: nothing changes,
        also when this id and version are already in force)."""
        checked = self.book.check(doc, now_ms)
        if isinstance(checked, list):
            return checked, None
        if self.book.same(checked):
            return [], None
        # The consent in force (maybe changed remotely since the file was read) bounds the plan.
        built = self._build(self.base.model_copy(update={"consent": consent}), checked)
        if isinstance(built, list):
            return built, None
        self.book.applied(checked, _notes(built[1]))
        return [], built

    def expire(
        self, plan: PlanModel, consent: ConsentConfig | None
    ) -> tuple[Config, Catalog] | None:
        """The config's own selection, if ``plan`` is still the one in force. The caller marks
        the plan expired (``book.expired``) once it switched, so the status never reports the
        expiry before the selection went back."""
        if self.book.plan is not plan:
            return None
        if self.book.plan_state != APPLIED:
            return None
        base = self.base.model_copy(update={"consent": consent})
        return base, self.prepare(base)

    def _build(self, base: Config, plan: PlanModel) -> tuple[Config, Catalog] | list[str]:
        try:
            cfg = merge_plan(base, plan)
            # Problems name the plan, not the config file.
            catalog = self.prepare(cfg.model_copy(update={"source": Path(f"plan {plan.id!r}")}))
        except AgentError as err:
            return self.book.reject(plan.id, plan.version, list(err.problems))
        return cfg, catalog


def _notes(catalog: Catalog) -> str:
    """What the applied plan could not have: signals and triggers consent leaves out."""
    notes = [f"left out: {why} ({n})" for why, n in sorted(catalog.excluded.items())]
    notes += [f"trigger {name} not armed: {why}" for name, why in sorted(catalog.disabled.items())]
    return "; ".join(notes)
