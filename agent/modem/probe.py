"""Probe one modem over an open AT transport and summarise it as a ``ModemReport``.

Runs the fixed sequence (AT, ATE0, AT+CMEE=1, SIM state, ICCID, IMSI, operator, signal,
registration, attach) with the transport's per-command timeouts, and enters a configured PIN at
most once per boot per SIM (never a PUK). ``AT`` is tried a few times; once it has answered, the
first command left without an answer ends the probe: a half-wedged modem (answers ``AT``, then
nothing) costs one timeout and is reported as not answering usefully, so that the handle's
escalation (reopen, reset) sees it. It leaves opening, reopening and resetting ports to the
modem handle, and deciding between modems to the policy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.atomicfile import write_atomic
from agent.config import ModemConfig
from agent.modem import fields as f
from agent.modem.report import AtTimeout, ModemReport
from agent.modem.transport import AtResponse, AtTransport

log = logging.getLogger(__name__)

# Quectel, 27.007-style, u-blox/Sierra, SIMCom, then the SIM file itself.
ICCID_COMMANDS: tuple[str, ...] = (
    "AT+QCCID",
    "AT+CCID",
    "AT+ICCID",
    "AT+CICCID",
    "AT+CRSM=176,12258,0,0,10",
)
AT_TRIES = 3
EF_AD_COMMAND = "AT+CRSM=176,28589,0,0,4"  # EF_AD: the length of the MNC in the IMSI


class PinLedger:
    """Which SIMs had their PIN entered this boot.

    With a ``path`` (on a tmpfs such as /run, emptied at boot) the record survives restarts of
    the agent, so a wrong PIN is never retried by a restart loop until the SIM locks.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._tried: set[str] = set()
        if path is not None:
            try:
                self._tried.update(path.read_text().split())
            except FileNotFoundError:
                pass
            except OSError as err:
                log.warning("%s: cannot read PIN ledger: %s", path, err)

    def tried(self, key: str) -> bool:
        with self._lock:
            return key in self._tried

    def mark(self, key: str) -> None:
        with self._lock:
            self._tried.add(key)
            if self._path is None:
                return
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                data = ("\n".join(sorted(self._tried)) + "\n").encode()
                write_atomic(self._path, data, mode=0o600)
            except OSError as err:
                log.warning("%s: cannot write PIN ledger: %s", self._path, err)


@dataclass
class ProbeMemory:
    """What a probe remembers about one modem between runs (owned by one modem handle)."""

    iccid_command: str | None = None
    mnc_length: dict[str, int | None] = field(default_factory=dict)  # per ICCID, from EF_AD
    pin_entries: int = 0
    warned: set[str] = field(default_factory=set)  # one warning per SIM problem, not per check

    def warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(msg, *args)


def _ask(t: AtTransport, cmd: str) -> AtResponse:
    """A command after ``AT`` answered: a timeout (AtTimeout) ends the probe."""
    return t.command(cmd)


def read_iccid(t: AtTransport, memory: ProbeMemory) -> str | None:
    """Try the vendor variants (the one that worked last time first)."""
    order: Iterable[str] = ICCID_COMMANDS
    if memory.iccid_command:
        order = (memory.iccid_command, *[c for c in ICCID_COMMANDS if c != memory.iccid_command])
    for cmd in order:
        r = _ask(t, cmd)
        if not r.ok:
            if r.code == f.CME_NO_SIM:
                return None
            continue
        iccid = f.parse_iccid(r.lines)
        if iccid:
            memory.iccid_command = cmd
            return iccid
    return None


def responds(t: AtTransport, tries: int = AT_TRIES) -> bool:
    for _ in range(tries):
        try:
            t.command("AT")
        except AtTimeout as err:
            log.debug("%s", err)
            continue
        return True
    return False


def _sim_state(t: AtTransport) -> str:
    r = _ask(t, "AT+CPIN?")
    if r.ok:
        return f.sim_state_from_cpin(r.lines)
    return f.sim_state_from_cme(r.code, r.final)


def _operator(t: AtTransport) -> str | None:
    """The registered network's numeric code, leaving the operator format as it was found.

    ``AT+COPS=3,2`` changes the format for every later ``AT+COPS?`` on the modem, also another
    user's; so the current format is read first and, when it was not numeric, put back.
    """
    r = _ask(t, "AT+COPS?")
    fmt = f.parse_cops_format(r.lines) if r.ok else None
    if fmt is None:
        return None  # not registered: no operator in any format
    if fmt == 2:
        return f.parse_cops_numeric(r.lines)
    if not _ask(t, "AT+COPS=3,2").ok:
        return None
    numeric = _ask(t, "AT+COPS?")
    _ask(t, f"AT+COPS=3,{fmt}")
    return f.parse_cops_numeric(numeric.lines) if numeric.ok else None


def _mnc_length(t: AtTransport, iccid: str | None, memory: ProbeMemory) -> int | None:
    """From the SIM's EF_AD, once per SIM (a modem without AT+CRSM answers ERROR: unknown)."""
    key = iccid or ""
    if key not in memory.mnc_length:
        r = _ask(t, EF_AD_COMMAND)
        memory.mnc_length[key] = f.parse_mnc_length(r.lines) if r.ok else None
    return memory.mnc_length[key]


def probe(
    t: AtTransport,
    cfg: ModemConfig,
    *,
    home_networks: Sequence[str] = (),
    memory: ProbeMemory | None = None,
    pins: PinLedger | None = None,
) -> ModemReport:
    """Ask everything once. ``pins`` None: never enter a PIN (observe only).

    Roaming is judged against the SIM's own home network (from its IMSI) plus the modem's
    ``home_networks`` (or, for a modem without its own list, the ``home_networks`` given here).

    Raises PortGone when the port fails; every other problem ends up in the report.
    """
    mem = memory if memory is not None else ProbeMemory()
    if not responds(t):
        return ModemReport(cfg.name, t.url, responding=False, error="no answer to AT")
    try:
        return _probe(t, cfg, home_networks, mem, pins)
    except AtTimeout as err:
        return ModemReport(
            cfg.name,
            t.url,
            responding=False,
            error=f"no useful answer: answers AT, then nothing to {err.command} "
            f"within {err.timeout:g} s",
        )


def _probe(
    t: AtTransport,
    cfg: ModemConfig,
    home_networks: Sequence[str],
    mem: ProbeMemory,
    pins: PinLedger | None,
) -> ModemReport:
    name, port = cfg.name, t.url
    for setup in ("ATE0", "AT+CMEE=1"):
        _ask(t, setup)

    sim = _sim_state(t)
    iccid = read_iccid(t, mem) if sim != f.SIM_ABSENT else None
    if sim == f.SIM_PIN and cfg.pin and pins is not None:
        key = iccid or f"modem:{name}"
        if pins.tried(key):
            mem.warn_once(
                f"pin-again:{key}",
                "modem %s: SIM %s still asks for its PIN; not retrying this boot",
                name,
                key,
            )
        else:
            # Marked before sending: a crash mid-command must not lead to a second attempt.
            pins.mark(key)
            mem.pin_entries += 1
            log.warning(
                "modem %s: entering the configured PIN for SIM %s (once per boot)", name, key
            )
            r = _ask(t, f'AT+CPIN="{cfg.pin}"')
            if not r.ok:
                log.warning("modem %s: PIN refused (%s)", name, r.final)
            sim = _sim_state(t)
            if sim == f.SIM_READY and iccid is None:
                iccid = read_iccid(t, mem)
    if sim == f.SIM_PUK:
        mem.warn_once(
            f"puk:{iccid}", "modem %s: SIM %s is PUK-locked; it needs a person", name, iccid or "?"
        )

    if sim != f.SIM_READY:
        return ModemReport(
            name, port, True, sim=sim, iccid=iccid, registration=f.REG_NONE, error=f"SIM {sim}"
        )

    imsi_r = _ask(t, "AT+CIMI")
    imsi = f.parse_imsi(imsi_r.lines) if imsi_r.ok else None
    operator = _operator(t)

    regs: dict[str, str | None] = {}
    for prefix, cmd in (("+CEREG:", "AT+CEREG?"), ("+CGREG:", "AT+CGREG?"), ("+CREG:", "AT+CREG?")):
        r = _ask(t, cmd)
        regs[prefix] = f.parse_reg(r.lines, prefix) if r.ok else None
    # Data needs packet service (EPS or GPRS); circuit service (CREG) only carries voice and
    # SMS. CREG stands in only for a modem that answers neither packet query.
    packet = [regs["+CEREG:"], regs["+CGREG:"]]
    if any(p is not None for p in packet):
        registration = f.best_registration(packet)
    else:
        registration = f.best_registration([regs["+CREG:"]])

    csq = _ask(t, "AT+CSQ")
    csq_dbm = f.parse_csq_dbm(csq.lines) if csq.ok else None
    cesq = _ask(t, "AT+CESQ")
    rsrp = f.parse_cesq_rsrp(cesq.lines) if cesq.ok else None
    lte = regs["+CEREG:"] in (f.REG_HOME, f.REG_ROAMING)
    signal: float | None
    source: str | None
    if rsrp is not None and (lte or csq_dbm is None):
        signal, source = rsrp, "rsrp"
    else:
        signal, source = csq_dbm, ("csq" if csq_dbm is not None else None)

    home = f.home_network(imsi, _mnc_length(t, iccid, mem) if imsi else None, operator)
    extra_home = cfg.home_networks if cfg.home_networks is not None else home_networks

    cgatt = _ask(t, "AT+CGATT?")
    attached = f.parse_cgatt(cgatt.lines) if cgatt.ok else None

    return ModemReport(
        name,
        port,
        True,
        sim=sim,
        iccid=iccid,
        imsi=imsi,
        operator=operator,
        registration=registration,
        roaming=f.roaming(registration, operator, home, extra_home),
        signal_dbm=signal,
        signal_source=source,
        attached=attached,
        cs_registration=regs["+CREG:"],
        home_network=home,
    )
