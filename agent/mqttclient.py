"""What every paho client of the agent shares: the one TLS context builder, one-line
descriptions of connection failures, paho's own log lines kept out of the log, and the MQTT 5
properties of an answer to a request (``response_properties``: the daemon answers commands
without importing paho).

The uplink (agent.uplink), ``listen`` (agent.listen), ``command`` (agent.sender) and the
activation broker probe (agent.brokerprobe) build their TLS context here, so a CA or client
certificate that works for one works for all. paho logs a socket error on every failed attempt
("failed to receive on socket: [Errno 104] ..."); ``PahoLog`` keeps those lines at DEBUG and
hands the last one to the caller, who names it in its own failure reason and logs that once
per change, never per attempt. Backend-side tools (``listen``, ``command``) take their broker
options from ``add_client_arguments`` (``command`` names the TLS key ``--client-key``: its
``--key`` is the command key) and connect with ``connect_client``: MQTT 5, or 3.1.1 when asked
(``--protocol 3.1.1``) or when the broker refuses 5. It does not publish, subscribe or retry.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import TlsConfig
from agent.errors import AgentError, ConfigError

log = logging.getLogger(__name__)


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client TLS context: the CA file (or the system CAs), the client certificate and key if
    given, and hostname checking as configured. ConfigError names the file that fails."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"mqtt.tls.ca: cannot load CA file {tls.ca}: {err}") from None
    if tls.cert is not None and tls.key is not None:
        try:
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(
                f"mqtt.tls.cert: cannot load client certificate {tls.cert} / key {tls.key}: {err}"
            ) from None
    ctx.check_hostname = tls.check_hostname
    return ctx


def response_properties(correlation: bytes | None) -> Properties:
    """MQTT 5 PUBLISH properties of an answer to a request: its Correlation Data, if any."""
    props = Properties(PacketTypes.PUBLISH)
    if correlation:
        props.CorrelationData = correlation
    return props


def describe_error(err: BaseException, host: str, port: int) -> str:
    """One line naming the layer that failed: DNS, TCP or TLS."""
    where = f"{host}:{port}"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS to {where}: certificate verify failed ({err.verify_message})"
    if isinstance(err, ssl.SSLError):
        return f"TLS to {where}: {err.reason or err}"
    if isinstance(err, socket.gaierror):
        return f"DNS: cannot resolve {host} ({err.strerror})"
    if isinstance(err, ConnectionRefusedError):
        return f"TCP to {where}: connection refused"
    if isinstance(err, TimeoutError):
        return f"TCP to {where}: connection timed out"
    if isinstance(err, OSError):
        return f"TCP to {where}: {err.strerror or err}"
    return f"{where}: {type(err).__name__}: {err}"


class PahoLog(logging.Logger):
    """paho's logger (``client.enable_logger(paho_log)``): every line goes to ``logger`` at
    DEBUG; the first warning or error since ``take()`` is kept so that the caller's failure
    reason can name it.

    A logger of its own, outside logging's tree (it holds one client's state and only forwards
    to ``logger``): through the tree paho would log each socket error at ERROR, once per
    attempt, which is exactly the repetition the agent promises not to make. Not ``on_log``
    either: with it paho formats every line, two per message published (about 3 % of the
    uplink's work in a backlog drain), where a logger is asked first whether anyone reads them.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(f"{logger.name}.paho")
        self.target = logger
        self._first: str | None = None

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """The one method paho calls (``Client._easy_log``), with its format and arguments."""
        if level >= logging.WARNING and self._first is None:
            # The first is the cause; "not connected" lines follow it.
            self._first = str(msg) % args if args else str(msg)
        if self.target.isEnabledFor(logging.DEBUG):
            self.target.debug("paho: " + str(msg), *args)

    def take(self) -> str | None:
        """The first problem paho reported since the previous call, if any."""
        first, self._first = self._first, None
        return first


# ---- backend-side tools (listen, command): broker options and a connected client ------------

PROTOCOLS = ("5", "3.1.1")
_PAHO_PROTOCOL = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
_UNSUPPORTED_PROTOCOL = 0x84  # MQTT 5 reason code; paho maps a 3.1.1 CONNACK code 1 onto it
CONNECT_TIMEOUT = 15.0


class BrokerError(AgentError):
    """The broker cannot be reached or refuses the connection."""


@dataclass(frozen=True)
class ClientOptions:
    """Where and how a backend tool connects. ``protocol`` None: MQTT 5, or 3.1.1 when the
    broker refuses 5 (NATS's and RabbitMQ's MQTT gateways speak 3.1.1 only)."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: TlsConfig | None = None
    username: str | None = None
    password: str | None = None
    protocol: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, tls_key: str = "key") -> ClientOptions:
        """``tls_key``: the attribute holding the TLS client key (see add_client_arguments)."""
        tls = None
        if args.tls or args.ca or args.cert:
            try:
                tls = TlsConfig(ca=args.ca, cert=args.cert, key=getattr(args, tls_key))
            except ValueError as err:  # pydantic: cert without key and the like
                raise ConfigError(f"--cert/--key: {err}") from None
        return cls(
            host=args.host,
            port=args.port,
            tls=tls,
            username=args.username,
            password=os.environ.get("SPIME_MQTT_PASSWORD"),
            protocol=args.protocol,
        )


def add_client_arguments(parser: argparse.ArgumentParser, tls_key: str = "--key") -> None:
    """The broker options every backend-side tool takes (read back with ClientOptions);
    ``tls_key`` names the TLS client key's flag where ``--key`` means something else."""
    g = parser.add_argument_group("broker")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=1883)
    g.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="MQTT version (default: 5, falling back to 3.1.1 if the broker refuses 5)",
    )
    g.add_argument("--tls", action="store_true", help="connect with TLS (system CAs)")
    g.add_argument("--ca", type=Path, help="CA file for TLS")
    g.add_argument("--cert", type=Path, help="client certificate for TLS")
    g.add_argument(tls_key, type=Path, help="client key for TLS")
    g.add_argument("--username", help="password from $SPIME_MQTT_PASSWORD")


def connect_client(
    opts: ClientOptions,
    *,
    client_id: str = "",
    setup: Callable[[mqtt.Client], None] | None = None,
    logger: logging.Logger | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> mqtt.Client:
    """A paho client whose connection the broker accepted (CONNACK received), its network loop
    not started. ``setup`` attaches the caller's callbacks before connecting; its ``on_connect``
    runs on every CONNACK, reconnects included. BrokerError says why not."""
    ctx = tls_context(opts.tls) if opts.tls is not None else None
    versions = [opts.protocol] if opts.protocol else ["5", "3.1.1"]
    why = ""
    for version in versions:
        client, reason = _try_connect(opts, version, ctx, client_id, setup, logger, timeout)
        if client is not None:
            return client
        why = reason
        if not (version == "5" and _refused_v5(reason)):
            break
        (logger or log).info("%s:%d refuses MQTT 5; trying 3.1.1", opts.host, opts.port)
    raise BrokerError(why)


def _refused_v5(reason: str) -> bool:
    # A 3.1.1-only broker answers an MQTT 5 CONNECT with code 1 or simply closes.
    return "Unsupported protocol version" in reason or "before CONNACK" in reason


def _try_connect(
    opts: ClientOptions,
    version: str,
    ctx: ssl.SSLContext | None,
    client_id: str,
    setup: Callable[[mqtt.Client], None] | None,
    logger: logging.Logger | None,
    timeout: float,
) -> tuple[mqtt.Client | None, str]:
    where = f"{opts.host}:{opts.port}"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=_PAHO_PROTOCOL[version]
    )
    paho_log = PahoLog(logger or log)
    client.enable_logger(paho_log)
    if ctx is not None:
        client.tls_set_context(ctx)
    if opts.username is not None:
        client.username_pw_set(opts.username, opts.password)
    if setup is not None:
        setup(client)
    answer: list[Any] = []
    theirs: Callable[..., None] | None = client.on_connect

    def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        answer.append(rc)
        if theirs is not None:
            theirs(c, u, flags, rc, props)

    client.on_connect = on_connect
    try:
        client.connect(opts.host, opts.port)
    except (OSError, ValueError) as err:
        return None, describe_error(err, opts.host, opts.port)
    deadline = time.monotonic() + timeout
    while not answer:
        if time.monotonic() >= deadline:
            client.disconnect()
            return None, f"{where}: no CONNACK from the broker within {timeout:g} s"
        if client.loop(0.2) != MQTTErrorCode.MQTT_ERR_SUCCESS and not answer:
            detail = paho_log.take()
            return None, f"{where}: connection closed before CONNACK" + (
                f" ({detail})" if detail else ""
            )
    if answer[0].is_failure:
        client.disconnect()
        return None, f"{where}: refused by broker: {answer[0]} (MQTT {version})"
    return client, ""
