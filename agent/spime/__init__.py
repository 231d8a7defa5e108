"""spime updates: the wire format and its schema; importable by a backend on its own.

Only the Python standard library is used here (no python-can, cantools or paho), so a fleet
backend can ``pip install`` the agent and ``import agent.spime`` to decode what cars send.
"""

from agent.spime.codec import (
    Header,
    Sample,
    decode_samples,
    decode_update,
    encode_update,
    peek_header,
    peek_schema_id,
)
from agent.spime.schema import Schema, SignalDef

__all__ = [
    "Header",
    "Sample",
    "Schema",
    "SignalDef",
    "decode_samples",
    "decode_update",
    "encode_update",
    "peek_header",
    "peek_schema_id",
]
