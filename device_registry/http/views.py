"""Rows -> API views. Kept apart from the store so the store stays about SQL."""

from __future__ import annotations

from typing import Any, Literal, cast

from device_registry.db.tables import Alert, Device, Gateway, LatestReading, Quarantined
from device_registry.http.schemas import (
    AlertView,
    ConfigState,
    DeviceView,
    GatewayView,
    PointValue,
    QuarantineView,
)

_PAYLOAD_SHOWN = 4096


def device(
    d: Device, district: str | None, grid: str | None, readings: list[LatestReading],
    street: str | None = None,
) -> DeviceView:  # fmt: skip
    return DeviceView(
        id=d.id, gateway=d.gateway_id, device=d.name,
        status=cast(Literal["online", "stale", "new"], d.status),
        district=district or "", grid=grid or "", first_seen=d.first_seen, last_seen=d.last_seen,
        values={r.point: PointValue(value=r.value, unit=r.unit, quality=r.quality, ts=r.ts,
                                    historical=r.historical) for r in readings},
        health=d.health, registered=d.registered_at is not None, retired=d.retired_at is not None,
        profile=d.profile, bus=d.bus, unit_id=d.unit_id, address=d.address or "",
        street=street or "", install_date=d.install_date, firmware=d.firmware or "",
        labels=d.labels or {},
    )  # fmt: skip


def gateway(
    gw: Gateway, devices: int, report: dict[str, Any] | None,
    location: dict[str, Any] | None = None,
) -> GatewayView:  # fmt: skip
    registered = gw.registered_at is not None
    config = ConfigState(
        desired=gw.config_desired, acknowledged=gw.config_acked, accepted=gw.config_accepted,
        errors=list((gw.config_errors or {}).get("errors", [])),
        acknowledged_at=gw.config_acked_at, running=gw.config_version,
    ) if registered else None  # fmt: skip
    return GatewayView(
        id=gw.id, online=gw.online, session=gw.session, software=gw.software,
        config_version=gw.config_version, first_seen=gw.first_seen, last_seen=gw.last_seen,
        born_at=gw.born_at, died_at=gw.died_at, devices=devices, health=report,
        registered=registered, retired=gw.retired_at is not None, name=gw.name or "",
        location=location or {}, labels=gw.labels or {}, config=config,
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
