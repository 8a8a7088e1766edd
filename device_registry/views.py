"""Rows -> API views. Kept apart from the store so the store stays about SQL."""

from __future__ import annotations

from typing import Any, Literal, cast

from device_registry.models import Alert, Device, Gateway, LatestReading, Quarantined
from device_registry.schemas import (
    AlertView,
    DeviceView,
    GatewayView,
    PointValue,
    QuarantineView,
)

_PAYLOAD_SHOWN = 4096


def device(
    d: Device, district: str | None, grid: str | None, readings: list[LatestReading]
) -> DeviceView:
    return DeviceView(
        id=d.id, gateway=d.gateway_id, device=d.name,
        status=cast(Literal["online", "stale"], d.status),
        district=district or "", grid=grid or "", first_seen=d.first_seen, last_seen=d.last_seen,
        values={r.point: PointValue(value=r.value, unit=r.unit, quality=r.quality, ts=r.ts,
                                    historical=r.historical) for r in readings},
        health=d.health,
    )  # fmt: skip


def gateway(gw: Gateway, devices: int, report: dict[str, Any] | None) -> GatewayView:
    return GatewayView(
        id=gw.id, online=gw.online, session=gw.session, software=gw.software,
        config_version=gw.config_version, first_seen=gw.first_seen, last_seen=gw.last_seen,
        born_at=gw.born_at, died_at=gw.died_at, devices=devices, health=report,
    )  # fmt: skip


def alert(a: Alert) -> AlertView:
    return AlertView(
        alert_id=a.alert_id, gateway=a.gateway_id, device=a.device_id.partition(":")[2],
        point=a.point, state=a.state, rule=a.rule, category=a.category, severity=a.severity,
        district=a.district, grid=a.grid, location=a.location, value=a.value, peak=a.peak,
        threshold=a.threshold, unit=a.unit, message=a.message, raised_at=a.raised_at,
        updated_at=a.updated_at, cleared_at=a.cleared_at, transitions=a.transitions,
    )  # fmt: skip


def quarantined(q: Quarantined) -> QuarantineView:
    return QuarantineView(
        id=q.id,
        received_at=q.received_at,
        topic=q.topic,
        reason=q.reason,
        detail=q.detail,
        payload=q.payload[:_PAYLOAD_SHOWN].decode("utf-8", "replace"),
    )
