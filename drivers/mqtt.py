"""MQTT sensor driver (placeholder until implemented)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drivers.base import SampleSink
from gridwatch.contract import DeviceHealth
from gridwatch.gatewayconf import ResolvedDevice


class MqttDriver:
    def __init__(self, bus: Any, devices: Sequence[ResolvedDevice]) -> None:
        raise NotImplementedError("the MQTT sensor driver is not written yet")

    async def run(self, sink: SampleSink) -> None:
        raise NotImplementedError

    async def write(self, device: str, point: str, value: float | int | bool) -> None:
        raise NotImplementedError

    def health(self) -> list[DeviceHealth]:
        return []
