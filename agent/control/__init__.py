"""The downlink's pure middle: signed command envelopes, authorization and the decisions about
what a remote command may do. Nothing here imports paho, sqlite3, pyserial or python-can; the
daemon wires the transport (agent.uplink) to these decisions and applies what they allow.
"""
