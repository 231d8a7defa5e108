"""Link bring-up: run a configured command (argv, never a shell) with a timeout.

Used by the manager when a modem becomes active (``link_up``) or is left (``link_down``). The
modem's name, port, APN and ICCID are passed in the environment (``SPIME_MODEM_*``) so that one
script can serve every modem. It only runs the command and says how it went.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkResult:
    ok: bool
    detail: str


def run_link_command(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> LinkResult:
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        done = subprocess.run(
            list(argv),
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return LinkResult(False, f"{argv[0]}: still running after {timeout:g} s, killed")
    except OSError as err:
        return LinkResult(False, f"{argv[0]}: cannot run: {err.strerror or err}")
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return LinkResult(False, f"{argv[0]}: exit status {done.returncode} {tail[0]}".rstrip())
    return LinkResult(True, f"{argv[0]}: ok")
