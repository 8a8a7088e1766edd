"""What the alert and webhook endpoints return (and the webhook one accepts): alerts, their operations and incidents; and how an
alert row becomes its view."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from device_registry.db.tables import Alert
from device_registry.http.values import Served


class AlertView(BaseModel):
    alert_id: str
    gateway: str
    device: str
    point: str
    state: str
    rule: str
    category: str
    severity: str
    district: str
    grid: str
    location: dict[str, Any]
    value: Served
    peak: Served
    threshold: float | None
    unit: str
    message: str
    raised_at: int
    updated_at: int
    cleared_at: int | None
    transitions: int


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
    category_name: str = Field(default="", description="The catalogue's name of the category.")
    responsible_unit: str = Field(default="", description="Who the catalogue makes "
                                  "responsible for it.")  # fmt: skip
    notes: dict[str, str] = Field(default_factory=dict, description="The note of the latest "
                                  "ack, resolve and close, by action (those given one).")  # fmt: skip
    decimals: int | None = Field(default=None, description="Decimals its point's values are "
                                 "shown with (from the device's profile); null: not known, or "
                                 "not a number.")  # fmt: skip


class SkippedAlert(BaseModel):
    alert_id: str
    stage: str
    reason: str


class IncidentActed(BaseModel):
    """An action on a whole incident: the alerts it moved, and those whose stage refused it."""

    incident_id: str
    applied: list[AlertOpsView] = Field(default_factory=list)
    skipped: list[SkippedAlert] = Field(default_factory=list)


class BulkClosed(BaseModel):
    """A close of many alerts: those it closed, and those it left with the reason."""

    closed: list[str] = Field(default_factory=list)
    skipped: list[SkippedAlert] = Field(default_factory=list)


class ActionView(BaseModel):
    action: str
    before: str
    after: str
    actor: str
    note: str
    at: int
    override: bool = Field(default=False, description="A person ended the alert while its "
                           "sensor still reported the condition.")  # fmt: skip
    sensor: str = Field(default="", description="What the sensor last reported and why the "
                        "step went against it; empty when it did not.")  # fmt: skip


# ---- webhooks: kept by ``OpsStore`` beside the feed they read (delivery/ serves them) ----


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


def alert(a: Alert) -> AlertView:
    return AlertView(
        alert_id=a.alert_id, gateway=a.gateway_id, device=a.device_id.partition(":")[2],
        point=a.point, state=a.state, rule=a.rule, category=a.category, severity=a.severity,
        district=a.district, grid=a.grid, location=a.location, value=a.value, peak=a.peak,
        threshold=a.threshold, unit=a.unit, message=a.message, raised_at=a.raised_at,
        updated_at=a.updated_at, cleared_at=a.cleared_at, transitions=a.transitions,
    )  # fmt: skip
