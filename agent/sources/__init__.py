"""Inputs beside agent.can_source: GNSS receivers that turn what they read into timestamped
values for the pipeline, and the SocketCAN readers agent.can_source hands a live bus to
(kernel-side change detection: agent.sources.bcm, agent.sources.bcmmask).

``open_gnss`` is the one place that maps ``[gnss] source`` to a receiver object. Every receiver
has the interface of ``agent.sources.gnss.NmeaSource`` (``GnssSource`` below): its own thread
(``start``/``stop``), privacy zones, sampling and trip ends applied on that thread, the fixes
that may be stored handed out by ``take`` from a bounded queue (``dropped`` counts what it
lost), ``state`` (``fix``, ``no fix``, ``gnss down``, ``in privacy zone``, ``paused``), and
``pause``/``resume`` (the receiver not read, nor any thread woken for it, while the car is
parked: agent.sources.fixsource).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from agent.config import GnssConfig, PrivacyConfig
from agent.errors import ConfigError
from agent.feed import Feed
from agent.policy.geo import Fix
from agent.policy.privacy import PrivacyFilter, Zone
from agent.policy.track import TrackPolicy, TrackSampler

if TYPE_CHECKING:
    from agent.sources.atgnss import ModemCommands


class GnssSource(Protocol):
    state: str
    fixes: Feed[Fix]  # what ``take`` hands out; its drops counted
    track: TrackSampler
    privacy: PrivacyFilter

    def start(self) -> None: ...

    def stop(self, timeout: float = 5.0) -> None: ...

    def pause(self, reason: str = "paused", timeout: float = 5.0) -> bool: ...

    def resume(self) -> None: ...

    def take(self) -> list[Fix]: ...

    def set_zones(self, zones: tuple[Zone, ...]) -> int: ...


def zones(cfg: PrivacyConfig) -> tuple[Zone, ...]:
    return tuple(Zone(z.name, z.lat, z.lon, z.radius) for z in cfg.zones)


def track_policy(cfg: GnssConfig) -> TrackPolicy:
    return TrackPolicy(
        mode=cfg.mode,
        tolerance=cfg.tolerance,
        max_delay=cfg.max_delay,
        max_points=cfg.max_points,
        min_interval=cfg.min_interval,
        max_interval=cfg.max_interval,
        parked_interval=cfg.parked_interval,
        parked_speed=cfg.parked_speed,
        distance=cfg.distance,
        heading=cfg.heading,
        speed_change=cfg.speed_change,
    )


def open_gnss(
    cfg: GnssConfig, privacy: PrivacyConfig, modems: ModemCommands | None = None
) -> GnssSource:
    """The receiver ``cfg`` names, not started. ``modems`` is the modem manager, which owns the
    AT ports: without one (a dry run, ``check``) an "at" receiver cannot be built (ConfigError)."""
    # What every receiver is built with, whatever it reads.
    common: dict[str, Any] = {
        "track": TrackSampler(track_policy(cfg)),
        "privacy": PrivacyFilter(zones=zones(privacy), trip_end_radius=privacy.trip_end_radius),
        "down_after": cfg.down_after,
        "trip_gap": privacy.trip_gap,
        "queue_limit": cfg.queue_limit,
    }
    if cfg.source == "nmea":
        from agent.sources.gnss import NmeaSource

        assert isinstance(cfg.port, str)  # checked by GnssConfig
        return NmeaSource(
            cfg.port,
            baudrate=cfg.baudrate,
            **common,
        )
    if cfg.source == "gpsd":
        from agent.sources.gpsd import GpsdSource

        return GpsdSource(
            cfg.host,
            cfg.gpsd_port,
            **common,
        )
    assert cfg.modem is not None  # checked by GnssConfig
    if modems is None:
        raise ConfigError(
            f'gnss.source: "at" polls modem {cfg.modem} through the modem manager, which runs '
            "only when the agent publishes (not in a dry run)"
        )
    from agent.sources.atgnss import AtGnssSource

    return AtGnssSource(
        modems,
        cfg.modem,
        vendor=cfg.vendor,
        interval=cfg.poll_interval,
        **common,
    )
