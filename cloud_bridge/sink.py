"""Where telemetry goes: a small interface with two implementations.

``InfluxSink`` (influxdb-client's async write API; InfluxDB 2 or VictoriaMetrics) when a URL is
configured, ``SqliteSink`` (recent history in a local file) otherwise. ``write`` returns only once
the points are stored, because the bridge acknowledges the MQTT messages after it; it raises
``SinkError`` when they are not. Both label each reading the same way (``labels.series_labels``,
from the registry's facts on the step's devices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from cloud_bridge.labels import NO_FACTS
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import TelemetryBatch


class TelemetrySink(Protocol):
    name: str

    async def write(
        self, batches: Sequence[TelemetryBatch], facts: DeviceFacts = NO_FACTS
    ) -> tuple[int, int]:
        """Store the readings, labelled from ``facts`` (the registry's word on their devices);
        return (points written, readings skipped as not storable)."""
        ...

    async def maintain(self, now: int) -> None:
        """Periodic housekeeping (retention); ``now`` is epoch ms."""
        ...

    async def close(self) -> None: ...
