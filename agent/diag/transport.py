"""Which ISO-TP transport a ``[[diagnostics]]`` section uses (its ``isotp`` key), and opening it.

``"user"``: can-isotp's user-space stack over a python-can bus of its own (agent.diag.link),
on any python-can interface. ``"kernel"``: the kernel's can_isotp sockets (agent.diag.kernel),
SocketCAN only: less CPU, no Python per frame. A bus not on SocketCAN is refused by the config
(agent.config); a system without CAN_ISOTP sockets is refused at start (``check_kernel``).
``"auto"`` (the default): the kernel's where the bus is on SocketCAN and such a socket opens
on its channel, else user space; decided again at every (re)open of the link, so the kernel's
is taken up once the channel or the module appears. Both transports meet the poller through
the one interface agent.diag.link.Transport.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import isotp

from agent.config import BusConfig
from agent.diag.kernel import KernelIsoTpLink, open_socket
from agent.diag.link import OBD_11BIT, IsoTpLink, LinkError, Transport
from agent.diag.settings import DiagnosticsConfig
from agent.errors import ConfigError
from agent.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)


def kernel_isotp_problem(channel: str | None) -> str | None:
    """Why the kernel's ISO-TP cannot be used (on ``channel``, if given), or None. The probe
    binds a send-only socket, which receives nothing and sends nothing."""
    try:
        if channel is None:
            isotp.socket().close()
        else:
            functional = OBD_11BIT[0]
            open_socket(channel, functional, functional ^ 1, extended=False, broadcast=True).close()
    except (NotImplementedError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def check_kernel(cfg: DiagnosticsConfig, bus: BusConfig) -> None:
    """At start: ``isotp = "kernel"`` on a system without CAN_ISOTP sockets is a config error."""
    if cfg.isotp != "kernel":
        return
    why = kernel_isotp_problem(None)
    if why is not None:
        raise ConfigError(
            f'[[diagnostics]] bus {bus.name!r}: isotp = "kernel", but this system has no '
            f"kernel ISO-TP sockets (AF_CAN, CAN_ISOTP: load the can_isotp module, or use "
            f'isotp = "auto" or "user"): {why}'
        )


def choose(cfg: DiagnosticsConfig, bus: BusConfig) -> tuple[str, str | None]:
    """The transport to open now, ``"kernel"`` or ``"user"``, and why ``auto`` did not take the
    kernel's (None when it did, or was not asked to)."""
    if cfg.isotp == "user":
        return "user", None
    if cfg.isotp == "kernel":
        return "kernel", None
    if bus.interface != "socketcan":
        return "user", f"interface {bus.interface!r} is not socketcan"
    why = kernel_isotp_problem(bus.channel or "")
    return ("user", why) if why is not None else ("kernel", None)


def open_transport(
    cfg: DiagnosticsConfig, bus: BusConfig, clock: Callable[[], float] = time.monotonic
) -> Transport:
    """The section's ISO-TP link on its bus, opened; failures raise LinkError or OSError."""
    extended = cfg.addressing == "29bit"
    pairs = {e.rx: e.tx for e in cfg.uds_ecus}
    kind, why = choose(cfg, bus)
    if kind == "kernel":
        try:
            return KernelIsoTpLink(bus.channel or "", extended=extended, pairs=pairs, clock=clock)
        except (NotImplementedError, OSError, ValueError) as err:
            raise LinkError(f"kernel ISO-TP on {bus.channel}: {type(err).__name__}: {err}") from err
    if why is not None and bus.interface == "socketcan":
        rlog.log(
            logging.INFO,
            ("auto", bus.name),
            "diagnostics %s: kernel ISO-TP not available (%s): ISO-TP in user space",
            bus.name,
            why,
        )
    return IsoTpLink.open(bus, extended=extended, pairs=pairs, clock=clock)
