"""Diagnostics: OBD-II (SAE J1979) PIDs and trouble codes and UDS (ISO 14229) DTC reads over
ISO-TP (ISO 15765-2), as a polite, bounded source beside the broadcast buses.

``obd`` and ``schedule`` are pure (tables, parsing, pacing over an injected clock); ``link``
carries ISO-TP over python-can (can-isotp) and ``kernel`` on the kernel's can_isotp sockets,
``transport`` picks one, ``uds`` asks through udsoncan, ``poller`` owns
the thread of one bus, ``wiring`` joins it to the agent (schema signals, pipeline, status,
the ``diag`` command).
"""
