"""UDS (ISO 14229) ReadDTCInformation over agent.diag.link, through udsoncan's client.

udsoncan builds the request (0x19 0x02 <status mask>), parses the answer and handles the
negative responses, waiting through "response pending" (NRC 0x78) up to the P2* time. This
module only gives it a connection to one ECU over the shared ISO-TP link and counts what it
sees. It does not schedule reads (agent.diag.poller).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import udsoncan
from udsoncan.client import Client
from udsoncan.connections import BaseConnection
from udsoncan.exceptions import (
    InvalidResponseException,
    NegativeResponseException,
    TimeoutException,
    UnexpectedResponseException,
)

from agent.diag.link import Transport
from agent.diag.obd import NEGATIVE, RESPONSE_PENDING

READ_DTC = 0x19


class UdsError(Exception):
    """A read that gave no DTC list; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


# Entered around each send (the consent check, agent.diag.client.Asking); what it raises
# leaves read_dtcs unchanged.
Guard = Callable[[], AbstractContextManager[None]]


@dataclass
class UdsCounters:
    pending: int = 0  # "response pending" (0x78) answers seen


class _EcuConnection(BaseConnection):
    """A udsoncan connection to the ECU answering on ``rx``, over the shared link."""

    def __init__(
        self, link: Transport, rx: int, counters: UdsCounters, guard: Guard = nullcontext
    ) -> None:
        super().__init__(f"ecu-{rx:X}")
        self.link = link
        self.rx = rx
        self.counters = counters
        self.guard = guard

    def open(self) -> _EcuConnection:
        return self

    def close(self) -> None:
        return None

    def is_open(self) -> bool:
        return True

    def empty_rxqueue(self) -> None:
        self.link.discard()

    def specific_send(self, payload: bytes, timeout: float | None = None) -> None:
        with self.guard():
            self.link.send(self.rx, payload)

    def specific_wait_frame(self, timeout: float | None = None) -> bytes | None:
        left = 1.0 if timeout is None else timeout
        deadline = self.link.clock() + left
        while left > 0:
            got = self.link.poll(left)
            if got is None:
                break
            rx, payload = got
            if rx == self.rx:
                if payload[:1] == bytes([NEGATIVE]) and payload[2:3] == bytes([RESPONSE_PENDING]):
                    self.counters.pending += 1
                return payload
            left = deadline - self.link.clock()
        raise TimeoutException(f"no answer from ECU {self.rx:X}")


def read_dtcs(
    link: Transport,
    rx: int,
    status_mask: int,
    *,
    timeout: float,
    pending_timeout: float,
    counters: UdsCounters,
    guard: Guard = nullcontext,
) -> dict[int, int]:
    """DTC (3 bytes) -> status byte of the DTCs whose status matches ``status_mask``."""
    config: dict[str, Any] = dict(udsoncan.configs.default_client_config)
    config.update(
        {
            "p2_timeout": timeout,
            "p2_star_timeout": pending_timeout,
            "request_timeout": timeout + 2 * pending_timeout,
            "tolerate_zero_padding": True,
            "ignore_all_zero_dtc": True,
        }
    )
    client = Client(_EcuConnection(link, rx, counters, guard), config=config)  # type: ignore[arg-type]
    try:
        response = client.get_dtc_by_status_mask(status_mask)
    except TimeoutException as err:
        raise UdsError("timeouts", str(err)) from None
    except NegativeResponseException as err:
        raise UdsError("negative", f"negative response {err.response.code_name}") from None
    except (InvalidResponseException, UnexpectedResponseException, ValueError) as err:
        raise UdsError("malformed", str(err)) from None
    if response is None:  # only when the client suppresses positive responses
        raise UdsError("malformed", "no response")
    return {
        d.id: d.status.get_byte_as_int()
        for d in response.service_data.dtcs
        if d.status.get_byte_as_int() & status_mask
    }
