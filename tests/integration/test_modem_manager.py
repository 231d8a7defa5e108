"""The manager thread with three simulated modems on real pseudo-terminals.

Waits are conditions polled with generous deadlines; the check interval is tiny.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agent.config import ModemConfig, ModemPolicyConfig
from agent.modem.handle import Recovery
from agent.modem.manager import ModemManager
from agent.modem.simulator import FOREIGN_OPERATOR, ModemSimulator
from tests.support.wait import wait_for

DEADLINE = 30.0


class Rig:
    def __init__(self, stack: ExitStack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.sims: dict[str, ModemSimulator] = {}
        self.switches: list[tuple[str | None, str]] = []
        self._lock = threading.Lock()
        self.manager: ModemManager | None = None

    def sim(self, name: str, scenario: str = "healthy", **kw: Any) -> ModemSimulator:
        sim = self.stack.enter_context(ModemSimulator(scenario, **kw))
        self.sims[name] = sim
        return sim

    def on_switch(self, active: str | None, reason: str) -> None:
        with self._lock:
            self.switches.append((active, reason))

    def start(
        self,
        modems: list[ModemConfig] | None = None,
        *,
        search: tuple[str, ...] = (),
        recovery: Recovery | None = None,
        **policy: Any,
    ) -> ModemManager:
        params: dict[str, Any] = {
            "check_interval": 0.05,
            "command_timeout": 1.0,
            "weak_checks": 2,
            "min_rssi_dbm": -105.0,
            "return_delay": 3600.0,
        }
        params.update(policy)
        if modems is None:
            modems = [ModemConfig(name=n, port=s.port) for n, s in self.sims.items()]
        mgr = ModemManager(
            modems,
            ModemPolicyConfig(**params),
            on_switch=self.on_switch,
            search=search,
            recovery=recovery
            or Recovery(
                reopen_interval=0.0, reset_after=3, reset_interval=60.0, rescan_interval=0.0
            ),
        )
        self.manager = mgr
        mgr.start()
        self.stack.callback(mgr.stop)
        wait_for(lambda: mgr.active() is not None, DEADLINE, "a first choice")
        # The policy's choice is visible before the manager has reported it to on_switch.
        wait_for(lambda: self.switches, DEADLINE, "the first choice reported to on_switch")
        return mgr


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with ExitStack() as stack:
        yield Rig(stack, tmp_path)


def three(rig: Rig, **primary: Any) -> None:
    rig.sim("a", ident=1, **primary)
    rig.sim("b", ident=2, iccid_command="AT+CCID")
    rig.sim("c", ident=3, iccid_command="AT+CRSM")


def switched_to(mgr: ModemManager, name: str, code: str) -> bool:
    return mgr.active() == name and mgr.status()["reason"]["code"] == code


def test_primary_fades_out_and_the_link_command_runs(rig: Rig) -> None:
    three(rig)
    marker = rig.tmp / "link-up"
    script = (
        "import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text("
        "os.environ['SPIME_MODEM_NAME'] + ' ' + os.environ['SPIME_MODEM_ICCID'])"
    )
    modems = [
        ModemConfig(name="a", port=rig.sims["a"].port),
        ModemConfig(
            name="b", port=rig.sims["b"].port, link_up=[sys.executable, "-c", script, str(marker)]
        ),
        ModemConfig(name="c", port=rig.sims["c"].port),
    ]
    mgr = rig.start(modems)
    assert mgr.active() == "a"
    assert rig.switches[0] == ("a", "initial")

    rig.sims["a"].set(rssi=2)  # -109 dBm, below -105
    wait_for(
        lambda: switched_to(mgr, "b", "weak_signal"),
        DEADLINE,
        "a switch away from the weak primary",
    )
    status = mgr.status()
    assert "-109" in status["reason"]["text"]
    assert status["switches"][-1]["from"] == "a" and status["switches"][-1]["to"] == "b"
    assert status["modems"]["a"]["problem"]["code"] == "weak_signal"
    # link_up runs first, then the uplink is told (on_switch).
    wait_for(lambda: ("b", "weak_signal") in rig.switches, DEADLINE, "the on_switch callback")
    assert marker.exists()
    assert marker.read_text() == f"b {status['modems']['b']['report']['iccid']}"
    json.dumps(status)  # JSON-able


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"sim": "absent"}, "sim_missing"),
        ({"sim": "pin"}, "sim_locked"),
        ({"sim": "puk"}, "sim_puk"),
        ({"reg": 3}, "denied"),
        ({"reg": 2}, "not_registered"),
        ({"reg": 5, "operator": FOREIGN_OPERATOR}, "roaming"),
        ({"reg": 2, "creg": 1}, "no_packet_service"),
        ({"attached": False}, "not_attached"),
        ({"hung": True, "obeys_reset": False}, "not_responding"),
    ],
)
def test_primary_failure_switches_with_its_reason(
    rig: Rig, change: dict[str, Any], code: str
) -> None:
    three(rig)
    # Short timeouts only where a silent modem is expected: healthy ones get slack for load.
    mgr = rig.start(command_timeout=0.5 if change.get("hung") else 2.0)
    assert mgr.active() == "a"
    rig.sims["a"].set(**change)
    wait_for(lambda: switched_to(mgr, "b", code), DEADLINE, f"a switch for {code}")
    assert mgr.status()["modems"]["a"]["usable"] is False


def test_garbage_and_urc_storm_do_not_cause_switches(rig: Rig) -> None:
    rig.sim("a", "garbage", ident=1)
    rig.sim("b", "urc_storm", ident=2)
    mgr = rig.start(primary="b", fallback=["a"], command_timeout=2.0)
    assert mgr.active() == "b"
    wait_for(lambda: mgr.status()["counters"]["checks"] >= 8, DEADLINE, "several checks")
    status = mgr.status()
    assert [s["code"] for s in status["switches"]] == ["initial"]
    assert status["modems"]["a"]["counters"]["noise_bytes"] > 0
    assert status["modems"]["b"]["counters"]["urcs"] > 0
    assert all(m["usable"] for m in status["modems"].values())


def test_data_path_failures_switch(rig: Rig) -> None:
    three(rig)
    mgr = rig.start(data_failures=3, command_timeout=2.0)
    for _ in range(3):
        mgr.report_data_failure("broker unreachable through a")
    wait_for(lambda: switched_to(mgr, "b", "data_failure"), DEADLINE, "a data-failure switch")
    mgr.report_data_ok()
    assert mgr.status()["data_failures"] == 0


@pytest.mark.parametrize("stuck", ["hung", "wedged"])
def test_hung_primary_is_reset_and_taken_back(rig: Rig, stuck: str) -> None:
    # hung: silent; wedged: answers AT, then nothing. Both are escalated to a reset.
    three(rig)
    mgr = rig.start(command_timeout=0.5, return_delay=0.5)
    sim_a = rig.sims["a"]
    sim_a.set(**{stuck: True, "obeys_reset": True})
    wait_for(
        lambda: switched_to(mgr, "b", "not_responding"), DEADLINE, "a switch away from the hung one"
    )
    wait_for(lambda: sim_a.resets >= 1, DEADLINE, "AT+CFUN=1,1 reaching the modem")
    counters = mgr.status()["modems"]["a"]["counters"]
    assert counters["reopens"] >= 1 and counters["resets"] >= 1
    wait_for(
        lambda: switched_to(mgr, "a", "return_to_primary"), DEADLINE, "the return to the primary"
    )
    codes = [s["code"] for s in mgr.status()["switches"]]
    assert codes[:2] == ["initial", "not_responding"] and codes[-1] == "return_to_primary"


def test_re_enumerated_modem_is_found_again_by_iccid(rig: Rig) -> None:
    byid = rig.tmp / "by-id"
    for i, n in enumerate("abc", start=1):
        rig.sim(n, ident=i, link=byid / f"usb-modem-{n}")
    mgr = rig.start(search=(str(byid / "usb-*"),), command_timeout=0.5)
    iccid_a = wait_for(
        lambda: mgr.status()["modems"]["a"]["report"]["iccid"], DEADLINE, "a's ICCID"
    )

    new_path = rig.sims["a"].reenumerate(byid / "usb-modem-a-if02")
    assert not (byid / "usb-modem-a").exists()

    def found() -> bool:
        m = mgr.status()["modems"]["a"]
        r = m["report"]
        return bool(m["port"] == new_path and r["responding"] and r["iccid"] == iccid_a)

    wait_for(found, DEADLINE, "a at its new path")
    assert mgr.status()["modems"]["a"]["counters"]["found_again"] >= 1
    assert mgr.active() in ("a", "b")


def test_hung_modem_never_blocks_status_or_stop(rig: Rig) -> None:
    rig.sim("a", "hang", ident=1)
    rig.sim("b", ident=2)
    mgr = rig.start(command_timeout=0.5)
    assert mgr.active() == "b"
    wait_for(
        lambda: mgr.status()["modems"]["a"]["counters"]["failures"] >= 2,
        DEADLINE,
        "two failed checks",
    )
    status = mgr.status()
    assert status["modems"]["a"]["problem"]["code"] == "not_responding"
    start = time.monotonic()
    mgr.stop()
    assert time.monotonic() - start < DEADLINE


def test_deprecated_min_signal_dbm_is_warned_about(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    modems = [ModemConfig(name="a", port=str(tmp_path / "none"))]
    with caplog.at_level(logging.WARNING, logger="agent.modem.manager"):
        ModemManager(modems, ModemPolicyConfig(min_signal_dbm=-100.0, pin_ledger=None))
        ModemManager(modems, ModemPolicyConfig(home_networks=["26201"], pin_ledger=None))
        ModemManager(modems, ModemPolicyConfig(pin_ledger=None))
    warned = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warned) == 2
    assert "min_rsrp_dbm" in warned[0] and "-100" in warned[0]
    assert "home_networks" in warned[1] and "IMSI" in warned[1]


def test_a_wedged_standby_does_not_delay_the_failover_of_the_active_modem(rig: Rig) -> None:
    # b answers AT, then nothing; with a 60 s command timeout its probe outlasts every wait
    # here, so a first choice or a failover that waited for it would time out.
    rig.sim("a", ident=1)
    rig.sim("b", "half_wedged", ident=2, iccid_command="AT+CCID", obeys_reset=False)
    rig.sim("c", ident=3, iccid_command="AT+CRSM")
    mgr = rig.start(command_timeout=60.0)
    assert mgr.active() == "a"
    seen_by_b: list[list[str]] = []

    def spy(active: str | None, reason: str) -> None:
        seen_by_b.append(list(rig.sims["b"].commands))
        rig.on_switch(active, reason)

    mgr.on_switch = spy
    sim_b = rig.sims["b"]
    wait_for(lambda: sim_b.commands == ["AT", "ATE0"], DEADLINE, "b waiting for its ATE0 answer")
    rig.sims["a"].set(sim="absent")
    wait_for(lambda: switched_to(mgr, "c", "sim_missing"), DEADLINE, "the failover to c")
    wait_for(lambda: seen_by_b, DEADLINE, "the switch reported to on_switch")
    assert seen_by_b == [["AT", "ATE0"]]  # b was still in its first probe
    status = mgr.status()
    assert status["modems"]["b"]["problem"]["code"] == "not_responding"
    assert status["modems"]["b"]["report"] is None  # never reported yet: never a candidate
    # Stopping abandons b's command in flight instead of waiting out its timeout.
    start = time.monotonic()
    mgr.stop(timeout=DEADLINE)
    assert time.monotonic() - start < DEADLINE / 2
