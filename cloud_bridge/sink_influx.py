"""TelemetrySink over InfluxDB's v2 write API (``/api/v2/write``), which VictoriaMetrics accepts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.domain.write_precision import WritePrecision

from cloud_bridge.errors import SinkError
from cloud_bridge.labels import NO_FACTS
from cloud_bridge.lineproto import batch_lines
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import TelemetryBatch

logger = logging.getLogger(__name__)

_OFFLOAD_READINGS = 5_000
# the client's constants are plain strings typed as the enum-like class
_MS: WritePrecision = WritePrecision.MS  # type: ignore[assignment]


class InfluxSink:
    name = "influx"

    def __init__(
        self, url: str, bucket: str = "gridwatch", org: str = "gridwatch", token: str = "unused",
        measurement: str = "gridwatch", timeout_ms: int = 30_000,
    ) -> None:  # fmt: skip
        # token/org/bucket are required by the client; VictoriaMetrics ignores them
        self._client = InfluxDBClientAsync(url=url, token=token, org=org, timeout=timeout_ms)
        self._write = self._client.write_api()
        self.url, self.bucket, self.org, self.measurement = url, bucket, org, measurement

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except InfluxDBError as exc:
            raise SinkError(self.name, f"{self.url} refused the write: {exc}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SinkError(self.name, f"{self.url} unreachable: {exc!r}") from exc

    async def write(
        self, batches: Sequence[TelemetryBatch], facts: DeviceFacts = NO_FACTS
    ) -> tuple[int, int]:
        if sum(len(b.readings) for b in batches) > _OFFLOAD_READINGS:
            # 100s of ms of CPU for a big step: a worker thread keeps the event loop responsive
            body, lines, skipped = await asyncio.to_thread(self._body, batches, facts)
        else:
            body, lines, skipped = self._body(batches, facts)
        if lines:
            async with self._errors():
                await self._write.write(
                    bucket=self.bucket, org=self.org, record=body, write_precision=_MS
                )
        return lines, skipped

    def _body(
        self, batches: Sequence[TelemetryBatch], facts: DeviceFacts
    ) -> tuple[bytes, int, int]:
        lines: list[str] = []
        skipped = 0
        for batch in batches:
            skipped += batch_lines(batch, self.measurement, lines, facts)
        return "\n".join(lines).encode(), len(lines), skipped

    async def maintain(self, now: int) -> None:
        """Retention is the server's business."""

    async def close(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]
