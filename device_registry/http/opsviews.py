"""What the alert-operations and health endpoints return (and accept): pydantic models, also the
source of their OpenAPI schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from device_registry.http.schemas import AlertView
from gridwatch.ground.contract import Value


class AlertOpsView(AlertView):
    stage: str = Field(description="open | acknowledged | resolved | closed | cleared")
    incident_id: str
    due_at: int | None = Field(description="Epoch ms its catalogue time limit ends.")
    time_limit_min: int | None
    time_left_ms: int | None = Field(description="Negative when overdue; null when none runs.")
    overdue: bool
    escalated_at: int | None
    acked_by: str | None
    acked_at: int | None
    resolved_by: str | None
    resolved_at: int | None
    closed_by: str | None
    closed_at: int | None


class SkippedAlert(BaseModel):
    alert_id: str
    stage: str
    reason: str


class IncidentActed(BaseModel):
    """An action on a whole incident: the alerts it moved, and those whose stage refused it."""

    incident_id: str
    applied: list[AlertOpsView] = Field(default_factory=list)
    skipped: list[SkippedAlert] = Field(default_factory=list)


class ActionView(BaseModel):
    action: str
    before: str
    after: str
    actor: str
    note: str
    at: int


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=2000, description="Why, what was done.")


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://", max_length=2000)
    secret: str = Field(min_length=16, max_length=200, description="HMAC-SHA256 key.")
    district: str | None = Field(default=None, description="Only this district's alerts.")
    category: str | None = Field(default=None, description="Only this catalogue code.")


class WebhookView(BaseModel):
    id: int
    url: str
    district: str | None
    category: str | None
    created_at: int
    created_by: str
    active: bool
    cursor: int = Field(description="Seq of the last feed event delivered or dead-lettered.")


class DeadLetterView(BaseModel):
    id: int
    webhook_id: int
    seq: int
    attempts: int
    last_error: str
    failed_at: int
    replayed_at: int | None
    message: dict[str, Any] = Field(description="The message that was not delivered.")


class ReplayView(BaseModel):
    id: int
    delivered: bool
    error: str = ""


class DeviceHealthView(BaseModel):
    id: str
    gateway: str
    device: str
    district: str
    grid: str
    profile: str
    firmware: str
    status: Literal["online", "offline", "silent"]
    healthy: bool
    reasons: list[str]
    since: int | None = Field(description="When the trouble began (centre clock, epoch ms).")
    last_seen: int | None
    interval_s: float | None
    success_rate: float | None
    consecutive_failures: int | None
    response_ms: float | None
    battery: Value = None
    signal: Value = None


class GatewayHealthView(BaseModel):
    id: str
    status: Literal["online", "offline", "silent"]
    healthy: bool
    reasons: list[str]
    since: int | None
    last_seen: int
    uplink: Literal["connected", "down"] = Field(
        description="down from its death message (last will) until its next birth"
    )
    cpu_percent: float | None = None
    memory_mb: float | None = None
    disk_free_mb: float | None = None
    outbox_depth: int | None = None
    outbox_dropped: int | None = None
    uplink_reconnects: int | None = None
    clock_offset_ms: int | None = None


class HealthReport(BaseModel):
    healthy: bool = Field(description="True when nothing listed is unhealthy.")
    unhealthy: int
    devices: list[DeviceHealthView] = Field(description="Unhealthy first.")
    gateways: list[GatewayHealthView] = Field(description="Unhealthy first.")


class ReadingPoint(BaseModel):
    ts: int
    value: Value
    quality: str


class ReadingsView(BaseModel):
    device: str
    point: str
    readings: list[ReadingPoint]
