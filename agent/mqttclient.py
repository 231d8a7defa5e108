"""What every paho client of the agent shares: the one TLS context builder, one-line
descriptions of connection failures, and paho's own log lines kept out of the log.

The uplink (agent.uplink), ``listen`` (agent.listen) and the activation broker probe
(agent.tlscheck) build their TLS context here, so a CA or client certificate that works for
one works for all. paho logs a socket error on every failed attempt ("failed to receive on
socket: [Errno 104] ..."); ``PahoLog`` keeps those lines at DEBUG and hands the last one to the
caller, who names it in its own failure reason and logs that once per change, never per
attempt. It does not publish, subscribe or retry (the callers do).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt

from agent.config import TlsConfig
from agent.errors import ConfigError


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


class PahoLog:
    """paho's log callback (``client.on_log``): every line goes to ``logger`` at DEBUG; the last
    warning or error is kept until ``take()`` so that the caller's failure reason can name it.

    Set as ``on_log`` instead of ``enable_logger``: paho would log each socket error at ERROR,
    once per attempt, which is exactly the repetition the agent promises not to make.
    """

    _PROBLEMS = (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING)

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._last: str | None = None

    def __call__(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        if level in self._PROBLEMS:
            self._last = buf
        self.logger.debug("paho: %s", buf)

    def take(self) -> str | None:
        """The last problem paho reported since the previous call, if any."""
        last, self._last = self._last, None
        return last
