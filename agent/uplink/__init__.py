"""The MQTT uplink: publishes rows of the durable outbox to the broker, one paho session at a time.

One worker thread owns everything paho: it connects (TLS or plain TCP, MQTT 5 or 3.1.1), sends
the schemas and a retained "online" status, then publishes outbox rows on
``<prefix>/<vin>/data`` within an in-flight window and acks rows in the outbox only on a
successful PUBACK. When the link drops, everything in flight is simply no longer in flight: the
rows are still in the outbox and are sent again on the next connection (duplicates possible,
losses not). Reconnects wait with exponential backoff and full jitter (agent.backoff).

The parts: ``uplink`` (the worker thread, public API, reconnects), ``requests`` (what other
threads ask of the worker), ``waits`` (reconnect delays, the pause, the stop), ``wire`` (topics,
status documents, the paho client), ``session`` (one connection's state, created fresh per
connection), ``window`` (what is in flight, the PUBACK watchdog), ``readahead`` (outbox rows read
ahead), ``netloop`` (one turn of paho's network loop), ``pacing`` (drain rate, refusal pause,
PUBLISH size), ``linkreport`` (link up/down reports), ``stats`` (counters read by other threads)
and ``wakeup`` (the idle wait with a downlink).

It leaves to others: what goes into the outbox (pipeline), its storage (agent.outbox), choosing
a modem (agent.modem, told of link changes through ``on_link``) and wiring (agent.daemon).
"""

from agent.mqttclient import describe_error, tls_context
from agent.uplink.session import OutboxLike, Outgoing
from agent.uplink.stats import UplinkStats
from agent.uplink.uplink import Uplink

__all__ = ["OutboxLike", "Outgoing", "Uplink", "UplinkStats", "describe_error", "tls_context"]
