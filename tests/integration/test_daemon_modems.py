"""The whole agent with three simulated SIM modems: a failover while data keeps flowing.

The agent runs in this process (a thread) so that python-can's ``virtual`` bus can feed it;
the modems are simulators on real pseudo-terminals; updates and the retained status go through
a real mosquitto.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from agent.daemon import Agent
from agent.modem.simulator import ModemSimulator
from agent.spime import decode_update
from tests.support.agentrun import Running
from tests.support.broker import Mosquitto, Subscriber, wait_until
from tests.support.e2e import DATA_TOPIC, STATUS_TOPIC, retained_status
from tests.support.power import ENGINE, car_bus, frame, power_config, publishing

WAIT = 30.0
WEAK_CHECKS = 2
SIGNAL = "Engine.Counter"


def _config(tmp_path: Path, channel: str, port: int, sims: dict[str, ModemSimulator]) -> Path:
    modems = "".join(f'[[modem]]\nname = "{n}"\nport = "{s.port}"\n\n' for n, s in sims.items())
    return power_config(
        tmp_path,
        channel,
        publishing(port, tmp_path)
        + modems
        + f"[modems]\ncheck_interval = 0.05\nweak_checks = {WEAK_CHECKS}\n"
        f'pin_ledger = "{tmp_path / "pins"}"\n'
        "command_timeout = 2.0\nreturn_delay = 3600.0\n",
    )


class Values:
    """Values of SIGNAL in every update received on the data topic (decoded with the schema)."""

    def __init__(self, sub: Subscriber, agent: Agent) -> None:
        self.sub, self.agent = sub, agent

    def get(self) -> set[int]:
        out: set[int] = set()
        for m in self.sub.messages:
            doc = decode_update(m.payload, self.agent.catalog.schema)
            out.update(int(s["value"]) for s in doc["samples"] if s["signal"] == SIGNAL)
        return out

    def wait(self, want: set[int]) -> None:
        assert wait_until(lambda: want <= self.get(), WAIT), f"missing {sorted(want - self.get())}"


def _modem(doc: dict[str, Any]) -> dict[str, Any]:
    m = doc.get("modems")
    return m if isinstance(m, dict) else {}


def test_primary_fades_the_agent_switches_modem_and_data_keeps_flowing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    channel = f"modems-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        sims = {
            "a": stack.enter_context(ModemSimulator("healthy", ident=1)),
            "b": stack.enter_context(ModemSimulator("healthy", ident=2, iccid_command="AT+CCID")),
            "c": stack.enter_context(ModemSimulator("healthy", ident=3, iccid_command="AT+CRSM")),
        }
        run = Running(_config(tmp_path, channel, broker.port, sims), dry_run=False)
        agent = run.agent
        data = stack.enter_context(Subscriber(broker, DATA_TOPIC))
        status = stack.enter_context(Subscriber(broker, STATUS_TOPIC))
        car = stack.enter_context(car_bus(channel))
        values = Values(data, agent)
        with run:
            assert wait_until(
                lambda: (
                    agent.modems is not None
                    and agent.uplink is not None
                    and agent.pipeline.source_states().get("car") == "up"
                ),
                WAIT,
            )
            mgr = agent.modems
            # Observe each switch as it happens, with the manager's check count at that moment.
            switches: list[tuple[str | None, str, int]] = []
            inner = mgr.on_switch

            def spy(active: str | None, reason: str) -> None:
                switches.append((active, reason, mgr.status()["counters"]["checks"]))
                if inner is not None:
                    inner(active, reason)

            mgr.on_switch = spy
            assert wait_until(lambda: mgr.active() == "a", WAIT)

            before = set(range(1, 21))
            for v in sorted(before):
                frame(car, ENGINE, v)
            values.wait(before)

            sims["a"].set(rssi=2)  # -109 dBm, under the -105 dBm minimum
            checks_at_fade = mgr.status()["counters"]["checks"]
            during: set[int] = set()
            v = 100
            # Frames keep coming while the manager decides (bounded: the wait below fails first).
            while mgr.active() == "a" and v < 100 + 20_000:
                frame(car, ENGINE, v)
                during.add(v)
                v += 1
                time.sleep(0.005)  # pacing the frames, like a real bus
            assert mgr.active() == "b"
            after = set(range(30_000, 30_020))
            for x in sorted(after):
                frame(car, ENGINE, x)
            values.wait(before | during | after)
            assert during, "no frame was sent while the switch was being decided"

            assert wait_until(lambda: any(s[0] == "b" for s in switches), WAIT)
            to_b = next(s for s in switches if s[0] == "b")
            assert to_b[1] == "weak_signal"
            # One check may have been under way when the signal faded; then WEAK_CHECKS in a row.
            assert to_b[2] <= checks_at_fade + 1 + WEAK_CHECKS

            # The status on MQTT names the new modem and why, and is retained.
            def switched(doc: dict[str, Any]) -> bool:
                m = _modem(doc)
                return m.get("active") == "b" and m.get("reason", {}).get("code") == "weak_signal"

            assert status.wait_for(
                lambda msgs: any(switched(json.loads(x.payload)) for x in msgs), WAIT
            )
            doc = retained_status(broker)
            assert doc["state"] == "online" and switched(doc)
            assert "-109" in _modem(doc)["reason"]["text"]
            assert _modem(doc)["modems"]["a"]["problem"]["code"] == "weak_signal"
            assert agent.pipeline.stats.decode_errors == 0
        assert run.result is not None and run.result.exit_code == 0
