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


class DepartmentView(BaseModel):
    code: str
    zh: str
    en: str


class NameView(BaseModel):
    zh: str
    en: str


class AlertOpsView(AlertView):
    """An alert with its case in the city's workflow (docs/alerts.md)."""

    stage: str = Field(description="reported 上报 | filed 立案 | dispatched 派遣 | disposed 处置 "
                       "| verified 核查 | closed 结案")  # fmt: skip
    stage_zh: str = Field(description="The stage's name in the city's words.")
    incident_id: str
    class_code: str = Field(description="4-digit class code of the category (GB/T 30428.2); "
                            "empty for a code off the national classification.")  # fmt: skip
    component_id: str | None = Field(description="16-digit id of the city component (部件) "
                                     "its device is attached to.")  # fmt: skip
    department: DepartmentView | None = Field(description="Dispatched to (or, before dispatch, "
                                              "the catalogue's responsible department).")  # fmt: skip
    area_class: str | None = Field(description="A (core) | B | C: the grid cell's area class, "
                                   "which sets the time limit.")  # fmt: skip
    due_at: int | None = Field(description="Epoch ms its time limit ends.")
    time_limit_min: int | None
    time_left_ms: int | None = Field(description="Negative when overdue; null when none runs.")
    overdue: bool
    urged: bool = Field(description="Urged (督办) at least once.")
    urge_count: int
    urged_at: int | None
    dispatch_count: int = Field(description="Dispatches, re-dispatches included.")
    filed_by: str | None
    filed_at: int | None
    dispatched_by: str | None
    dispatched_at: int | None
    disposed_by: str | None
    disposed_at: int | None
    verified_by: str | None = Field(description="An inspector, or 'sensor' (自动核查).")
    verified_at: int | None
    closed_by: str | None
    closed_at: int | None
    category_name: NameView | None = Field(default=None, description="The catalogue's name of "
                                           "the category, in Chinese and English.")  # fmt: skip
    notes: dict[str, str] = Field(default_factory=dict, description="The note of the latest "
                                  "step of each action, by action (those given one).")  # fmt: skip
    notes_zh: dict[str, str] = Field(default_factory=dict, description="The Chinese of those "
                                     "notes the centre wrote itself (filed by the centre, "
                                     "verified by the sensor ...), by action; a person's note "
                                     "is in notes only, as typed.")  # fmt: skip
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
    note_zh: str = Field(default="", description="The centre's own note in Chinese; empty for "
                         "a person's note (note, as typed).")  # fmt: skip
    at: int
    override: bool = Field(default=False, description="A person verified or closed it while "
                           "its sensor still reported the condition.")  # fmt: skip
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
