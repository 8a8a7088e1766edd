"""Field drivers: read devices and hand :class:`PollOutcome` s to the edge.

The edge builds one driver per bus from the table below::

    from drivers import build_drivers
    for driver in build_drivers(resolved_devices):   # grouped by bus
        tg.create_task(driver.run(sink))

or ``DRIVERS[bus.type](bus, devices_of_that_bus)`` for one bus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from drivers.base import Driver, PollOutcome, Sample, SampleSink
from drivers.errors import (
    BadConfig,
    CommunicationError,
    DeviceRefused,
    DriverError,
    EncodeError,
    IllegalAddress,
    PayloadError,
    UnknownPoint,
)
from drivers.modbus import ModbusDriver
from gridwatch.ground.gatewayconf import ResolvedDevice

DriverFactory = Callable[[Any, Sequence[ResolvedDevice]], Driver]


def _mqtt(bus: Any, devices: Sequence[ResolvedDevice]) -> Driver:
    from drivers.mqtt import MqttDriver  # aiomqtt is loaded only where a gateway uses it

    driver: Driver = MqttDriver(bus, devices)
    return driver


DRIVERS: dict[str, DriverFactory] = {
    "modbus_tcp": ModbusDriver,
    "modbus_rtu": ModbusDriver,
    "mqtt": _mqtt,
}


def build_drivers(devices: Sequence[ResolvedDevice]) -> list[Driver]:
    """One driver per bus that has devices, in the order the buses first appear."""
    by_bus: dict[str, list[ResolvedDevice]] = {}
    for d in devices:
        by_bus.setdefault(d.bus.id, []).append(d)
    return [DRIVERS[group[0].bus.type](group[0].bus, group) for group in by_bus.values()]


__all__ = [
    "DRIVERS",
    "BadConfig",
    "CommunicationError",
    "DeviceRefused",
    "Driver",
    "DriverError",
    "DriverFactory",
    "EncodeError",
    "IllegalAddress",
    "ModbusDriver",
    "PayloadError",
    "PollOutcome",
    "Sample",
    "SampleSink",
    "UnknownPoint",
    "build_drivers",
]
