"""One turn of a paho client's network loop, run through paho's external-loop interface.

``turn(client, timeout)`` does what ``client.loop(timeout)`` does (wait until the socket is
readable, or writable while paho has bytes to send, or ``timeout`` passes; read, write, keepalive),
with paho's documented calls for an event loop of one's own: ``socket``, ``want_write``,
``loop_read``, ``loop_write``, ``loop_misc``. Why not ``loop``: its first call gives the client
a socket pair to interrupt the wait from other threads, and from then on every ``publish``
writes one byte into that pair, a system call per message (and a read of the pair per turn) that
a client driven by one thread never needs. The uplink's worker calls everything paho on its
own thread, so nothing has to interrupt its wait; with a downlink it waits on the socket and
its own wake-up pipe (agent.uplink.wakeup) when idle.

It does not connect, publish or decide when to wait: agent.uplink.session does.
"""

from __future__ import annotations

import select

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode


def turn(client: mqtt.Client, timeout: float) -> MQTTErrorCode:
    """Read, write and keep the connection alive, waiting at most ``timeout`` seconds for the
    socket. ``MQTT_ERR_SUCCESS``, or why the connection is over."""
    sock = client.socket()
    if sock is None:
        return MQTTErrorCode.MQTT_ERR_NO_CONN
    # TLS may hold decrypted bytes that select() cannot see.
    pending = bool(getattr(sock, "pending", lambda: 0)())
    try:
        readable, writable, _ = select.select(
            [sock], [sock] if client.want_write() else [], [], 0.0 if pending else timeout
        )
    except (OSError, ValueError, TypeError):
        return MQTTErrorCode.MQTT_ERR_CONN_LOST  # the socket was closed under the wait
    if readable or pending:
        rc = client.loop_read()
        # As loop(): a connection closed while reading (a DISCONNECT from the broker) is
        # reported by the callbacks and by the next turn.
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
            return rc
    if writable:
        rc = client.loop_write()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
            return rc
    return client.loop_misc()
