"""The command worker: remember before executing, refuse what cannot be remembered, bound the
queue, count refusals by reason; the consent change kept on the box."""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.config import parse_config
from agent.control.consent import ConsentStore
from agent.control.envelope import Command, generate_key, seal
from agent.control.remote import OK, Authorizer, Response
from agent.control.service import CommandService, Request, SeenStore
from tests.support.wait import wait_for

VIN = "WVWZZZ1JZXW000001"
KEY = generate_key()


def _service(
    tmp_path: Path,
    executed: list[str],
    answers: list[Response] | None = None,
    queue_size: int = 32,
    rate: float = 20.0,
) -> CommandService:
    store = SeenStore(tmp_path / "control" / "seen.json")
    auth = Authorizer(
        vin=VIN, key=KEY.public_key(), seen=store.load(), clock=lambda: int(time.time() * 1000)
    )

    def execute(cmd: Command) -> Response:
        executed.append(cmd.id)
        return Response(cmd.id, OK, "done")

    return CommandService(
        auth,
        store,
        execute=execute,
        answer=lambda req, resp: (answers if answers is not None else []).append(resp),
        queue_size=queue_size,
        rate=rate,
    )


def _ping(cid: str) -> bytes:
    now = int(time.time() * 1000)
    return seal(KEY, vin=VIN, command="ping", issued=now, expires=now + 60_000, command_id=cid)[1]


def test_ids_are_stored_before_execution_and_survive_a_new_service(tmp_path: Path) -> None:
    executed: list[str] = []
    svc = _service(tmp_path, executed)
    assert svc.handle(_ping("a")).status == "ok"
    stored = json.loads((tmp_path / "control" / "seen.json").read_text())
    assert "a" in stored["seen"]
    again = _service(tmp_path, executed)
    r = again.handle(_ping("a"))
    assert (r.status, r.reason) == ("rejected", "replayed")
    assert executed == ["a"]


def test_an_id_that_cannot_be_stored_is_not_executed(tmp_path: Path) -> None:
    executed: list[str] = []
    (tmp_path / "control").write_text("a file where the folder should be")
    svc = _service(tmp_path, executed)
    r = svc.handle(_ping("b"))
    assert r.status == "failed" and "cannot record" in r.detail
    assert executed == []
    assert "b" not in svc.authorizer.seen  # a later retry may still run once


def test_a_flood_is_bounded_dropped_and_counted(tmp_path: Path) -> None:
    answers: list[Response] = []
    svc = _service(tmp_path, [], answers, queue_size=4, rate=1000.0)
    for _ in range(50):  # not started yet: nothing is taken from the queue
        svc.submit(Request(b"garbage"))
    assert svc.status()["dropped"] == 46
    svc.start()
    try:
        wait_for(lambda: len(answers) == 4, 10, "the queued messages answered")
        assert svc.status()["rejected"] == {"malformed": 4}
    finally:
        svc.stop()


def _cfg(tmp_path: Path, granted: str) -> object:
    return parse_config(
        {
            "vehicle": {"vin": VIN},
            "bus": [{"name": "b", "interface": "virtual", "channel": "x", "dbc": ["a.dbc"]}],
            "consent": {"granted": json.loads(granted)},
        },
        base=tmp_path,
        source="t",
    )


def test_remote_consent_change_applies_until_the_config_changes(tmp_path: Path) -> None:
    store = ConsentStore(tmp_path / "consent.json")
    base = _cfg(tmp_path, '["location", "driving"]')
    assert store.apply(base) is base  # nothing stored
    store.save(base, frozenset({"driving"}), "now")  # type: ignore[arg-type]
    assert store.apply(base).consent.granted == ["driving"]  # type: ignore[attr-defined]
    # A new activation with another consent: the newer local decision is in force.
    other = _cfg(tmp_path, '["vehicle_health"]')
    assert store.apply(other) is other
    # A tampered file cannot grant an unknown category.
    (tmp_path / "consent.json").write_text(
        json.dumps({"config": ["driving", "location"], "granted": ["driving", "secrets"]})
    )
    assert store.apply(base).consent.granted == ["driving"]  # type: ignore[attr-defined]
