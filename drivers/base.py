"""What every driver gives the edge: samples, poll outcomes and device health.

The hot path carries plain slotted dataclasses, not pydantic models: the edge turns samples
into contract readings only when it serialises a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gridwatch.ground.contract import BusHealth, DeviceHealth, Quality, Value


@dataclass(frozen=True, slots=True)
class Sample:
    device: str
    point: str
    value: Value
    unit: str
    ts: int  # epoch milliseconds
    quality: Quality


@dataclass(slots=True)
class PollOutcome:
    """One poll (or one received payload) of one device."""

    device: str
    ts: int  # epoch milliseconds
    samples: list[Sample]
    ok: bool  # the device answered; individual samples may still be invalid
    error: str = ""
    response_ms: float | None = None
    events: list[dict[str, object]] = field(default_factory=list)  # camera detections etc.


SampleSink = Callable[[PollOutcome], None]
"""Called by a driver for every outcome; must not block (the edge only queues it)."""


class Driver(Protocol):
    async def run(self, sink: SampleSink) -> None:
        """Poll or listen until cancelled, reporting every outcome to ``sink``."""

    async def write(self, device: str, point: str, value: float | int | bool) -> None:
        """Write one point (a command); raises drivers.errors.DriverError on failure."""

    def health(self) -> list[DeviceHealth]:
        """Per-device health counters for the gateway's health report."""

    def bus_health(self) -> BusHealth:
        """The bus's own state (reachable or not) for the gateway's health report."""
