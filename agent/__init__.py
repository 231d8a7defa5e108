"""spime-agent: MQTT edge agent for in-car telematics units."""

__version__ = "0.1.0"
