"""Runs the lifecycle's ``[power] sleep_command`` (argv, no shell) in its own thread.

The lifecycle must stay free to react while the command runs: a car that wakes while the
command still runs (hung, or slower than the wake) is served at once, and the command, moot by
then, is ended. A command that exits non-zero, cannot be started, outlives ``sleep_timeout`` or
is still running at the wake is a failed sleep: logged once (one ERROR line per failure) and
counted in the status (``power.sleep``). At most one runs at a time: a park while the previous
command still runs does not start another. It does not decide when to sleep (agent.lifecycle
does).
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# How much of the command's stderr a failure quotes.
_STDERR_CHARS = 200


class SleepCommand:
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._ended_because: str | None = None
        self.runs = 0
        self.failures = 0
        self.last_error: str | None = None

    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Run the command in the background (not if the previous one still runs)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                log.warning("power: sleep command %s still runs: not started again", self.argv[0])
                return
            self.runs += 1
            self._ended_because = None
            self._thread = threading.Thread(target=self._run, name="sleep-command", daemon=True)
            self._thread.start()

    def end(self, because: str, wait: float = 5.0) -> None:
        """End a command still running (the car woke, or the agent stops) and wait for it."""
        with self._lock:
            proc, thread = self._proc, self._thread
            if thread is None or not thread.is_alive():
                return
            if proc is not None and proc.poll() is not None:
                return  # it ended by itself
            self._ended_because = because
        if proc is not None:
            proc.kill()  # (not started yet: _run kills it as soon as it is)
        thread.join(wait)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "runs": self.runs,
                "failures": self.failures,
                "last_error": self.last_error,
                "running": self._thread is not None and self._thread.is_alive(),
            }

    def _fail(self, why: str) -> None:
        # Logged before counted: a failure in the status is already in the log.
        log.error("power: sleep command %s failed: %s", self.argv[0], why)
        with self._lock:
            self.failures += 1
            self.last_error = why

    def _run(self) -> None:
        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as err:
            self._fail(str(err))
            return
        with self._lock:
            self._proc = proc
            early = self._ended_because
        if early is not None:
            proc.kill()
        try:
            _, stderr = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self._fail(f"timed out after {self.timeout:g} s (killed)")
            return
        finally:
            with self._lock:
                self._proc = None
        with self._lock:
            because = self._ended_because
        if because is not None and proc.returncode != 0:
            self._fail(f"still running when {because} (killed)")
        elif proc.returncode != 0:
            text = stderr.decode(errors="replace").strip()[:_STDERR_CHARS]
            self._fail(f"exited {proc.returncode}" + (f": {text}" if text else ""))
