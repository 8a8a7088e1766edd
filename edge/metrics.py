"""The edge agent's Prometheus metrics, read at scrape time from the counters the outbox, the
pipeline, the uplink and the drivers keep anyway (``gridwatch.ground.metrics``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry

from drivers.base import Driver
from edge.outbox import Outbox
from edge.pipeline import Pipeline
from edge.uplink import Uplink
from gridwatch.ground.metrics import counter, gauge, registry_of


class MeteredAgent(Protocol):
    """What the metrics read of the edge agent: its parts, not the composition root that builds
    them (which imports this module; the import rule forbids the reverse)."""

    @property
    def drivers(self) -> Mapping[str, Driver]: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def uplink(self) -> Uplink: ...


def edge_registry(agent: MeteredAgent) -> CollectorRegistry:
    def per_device(field: str) -> dict[str, float]:
        return {h.device: float(getattr(h, field)) for d in agent.drivers.values()
                for h in d.health()}  # fmt: skip

    return registry_of(
        gauge("gridwatch_edge_outbox_depth",
              "Messages in the outbox the centre has not acknowledged (queued or sent)",
              lambda: agent.outbox.depth),
        gauge("gridwatch_edge_outbox_unsent", "Messages in the outbox the broker has not taken",
              lambda: agent.outbox.unsent()),
        gauge("gridwatch_edge_outbox_bytes", "Bytes waiting in the outbox",
              lambda: agent.outbox.bytes),
        counter("gridwatch_edge_outbox_dropped", "Telemetry messages dropped on overflow",
                lambda: agent.outbox.dropped),
        counter("gridwatch_edge_readings_in", "Readings from the drivers",
                lambda: agent.pipeline.readings_in),
        counter("gridwatch_edge_readings_dropped",
                "Readings dropped because neither the journal nor memory could hold them",
                lambda: agent.pipeline.dropped_readings),
        gauge("gridwatch_edge_readings_staged",
              "Readings journalled but not yet in a telemetry batch (at most one linger's)",
              lambda: agent.pipeline.buffered),
        counter("gridwatch_edge_alerts_out", "Alert transitions sent",
                lambda: agent.pipeline.alerts_out),
        gauge("gridwatch_edge_uplink_connected", "1 while the uplink is connected",
              lambda: float(bool(agent.uplink.connected))),
        counter("gridwatch_edge_uplink_reconnects", "Uplink losses and failed connects",
                lambda: agent.uplink.reconnects),
        counter("gridwatch_edge_poll_failures", "Failed reads per device",
                lambda: per_device("reads_failed"), label="device"),
        counter("gridwatch_edge_polls_skipped", "Polls skipped (previous still running)",
                lambda: per_device("polls_skipped"), label="device"),
    )  # fmt: skip
