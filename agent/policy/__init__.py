"""Pure decisions of the data path: trigger expressions, pre-trigger rings and capture windows.

Nothing here imports an I/O library or reads a clock: callers pass data times (Unix ms from the
frames) and scheduling times (seconds on a monotonic clock).
"""
