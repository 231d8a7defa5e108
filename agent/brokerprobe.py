"""The activation's broker probe: one TLS handshake and one MQTT CONNECT with the car's config,
through paho and the uplink's own TLS context (agent.mqttclient), so what passes here is what
the agent will do.

It tells the dealer, before anything is written, whether the car will be able to connect, and
why not: the broker's certificate not trusted with the CA given, the client certificate
refused, the connection refused by the broker. A broker that cannot be reached now is a note,
not a problem (a car may be activated where it has no network yet). It does not check the TLS
files themselves (agent.tlscheck) nor write anything (agent.activation).
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import Config
from agent.mqttclient import PahoLog, tls_context

log = logging.getLogger(__name__)

BROKER_TIMEOUT = 10.0


@dataclass(frozen=True)
class BrokerCheck:
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _reason(err: OSError) -> str:
    if isinstance(err, ssl.SSLError):
        return str(err.reason or err)
    return err.strerror or str(err) or type(err).__name__


def check_broker(cfg: Config, timeout: float = BROKER_TIMEOUT) -> BrokerCheck:
    """A TLS handshake plus one MQTT CONNECT (clean, under a distinct client id) with the
    config's TLS material and protocol."""
    assert cfg.mqtt is not None
    m = cfg.mqtt
    tls = m.tls_config
    where = f"{m.host}:{m.port}"
    assert tls is not None and tls.cert is not None and tls.key is not None
    # A distinct client id: the car's own id would take over a running agent's session.
    client_id = f"{m.client_id or cfg.vehicle.vin}-activate"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311,
    )
    paho_log = PahoLog(log)
    client.enable_logger(paho_log)
    client.connect_timeout = timeout
    client.tls_set_context(tls_context(tls))
    if m.username is not None:
        client.username_pw_set(m.username, m.password)
    answer: list[Any] = []
    client.on_connect = lambda c, u, flags, rc, props: answer.append(rc)
    not_accepted = (
        f"broker {where}: ended the connection after the TLS handshake ({{}}): "
        f"it does not accept the client certificate {tls.cert}"
    )
    try:
        client.connect(m.host, m.port, keepalive=30)
    except ssl.SSLCertVerificationError as err:
        return BrokerCheck(
            (f"broker {where}: its certificate is not trusted with --ca: {err.verify_message}",)
        )
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as err:
        reason = _reason(err)
        # TLS 1.2 refuses a client certificate inside the handshake, with an alert.
        if "ALERT" in reason and any(w in reason for w in ("CA", "CERTIFICATE")):
            return BrokerCheck((not_accepted.format(reason),))
        return BrokerCheck((f"broker {where}: TLS handshake failed: {reason}",))
    except (OSError, ValueError) as err:
        why = _reason(err) if isinstance(err, OSError) else str(err)
        return BrokerCheck(notes=(f"broker {where} not reachable now ({why}): TLS not checked",))
    try:
        # With TLS 1.3 the server checks our certificate after the client's side of the
        # handshake is done: a refusal shows only as an alert (or a reset) on the first read.
        deadline = time.monotonic() + timeout
        while not answer:
            if time.monotonic() >= deadline:
                return BrokerCheck(
                    (f"broker {where}: no MQTT answer within {timeout:g} s after the handshake",)
                )
            if client.loop(0.2) != MQTTErrorCode.MQTT_ERR_SUCCESS and not answer:
                detail = paho_log.take() or "connection closed"
                if "Unrecognised command" in detail:
                    return BrokerCheck((f"broker {where}: did not answer as an MQTT broker",))
                return BrokerCheck((not_accepted.format(detail),))
    finally:
        client.disconnect()
        client.loop(0.1)
    if answer[0].is_failure:
        return BrokerCheck(
            notes=(
                f"broker {where}: TLS OK, but a test connection as {client_id} was refused "
                f"({answer[0]}); the agent connects as {m.client_id or cfg.vehicle.vin}",
            )
        )
    return BrokerCheck(notes=(f"broker {where}: TLS handshake and MQTT connection OK",))
