"""What the REST API returns: pydantic models, also the source of the OpenAPI schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from gridwatch.ground.contract import Value


class View(BaseModel):
    pass


class PointValue(View):
    value: Value
    unit: str = ""
    quality: str = Field(description="good | stale | comm_error | out_of_range | invalid")
    ts: int = Field(description="Epoch ms of the reading (gateway clock).")
    historical: bool = False


class DeviceView(View):
    id: str = Field(description="Registry id: '<gateway>:<device>'.")
    gateway: str
    device: str = Field(description="Device id within its gateway.")
    status: Literal["online", "stale", "new"] = Field(
        description="stale once its gateway's death message arrived, online again on birth; "
        "new: registered by an installer and not heard from yet."
    )
    district: str = ""
    grid: str = ""
    first_seen: int
    last_seen: int | None = Field(description="Epoch ms of its newest reading, if any.")
    values: dict[str, PointValue] = Field(default_factory=dict)
    health: dict[str, Any] | None = None
    # what an installer registered (empty for a device only auto-registered from telemetry)
    registered: bool = False
    retired: bool = False
    profile: str | None = None
    bus: str | None = None
    unit_id: int | None = None
    address: str = ""
    street: str = ""
    install_date: str | None = None
    firmware: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class ConfigState(View):
    desired: int = Field(description="Version the registry generated last.")
    acknowledged: int = Field(description="Newest version the gateway acknowledged.")
    accepted: bool | None = Field(description="Whether that version was accepted.")
    errors: list[str] = Field(default_factory=list, description="Why it was rejected.")
    acknowledged_at: int | None = None
    running: int = Field(description="Version the gateway's last birth message named.")


class GatewayView(View):
    id: str
    online: bool
    session: int
    software: str
    config_version: int
    first_seen: int
    last_seen: int = Field(description="Epoch ms (central clock) of its last message.")
    born_at: int | None
    died_at: int | None
    devices: int
    health: dict[str, Any] | None = None
    registered: bool = False
    retired: bool = False
    name: str = ""
    location: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    config: ConfigState | None = Field(
        default=None, description="Config delivery: desired vs acknowledged (registered only)."
    )


class AlertView(View):
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
    value: Value
    peak: Value
    threshold: float | None
    unit: str
    message: str
    raised_at: int
    updated_at: int
    cleared_at: int | None
    transitions: int


class QuarantineView(View):
    id: int
    received_at: int
    topic: str
    reason: str
    detail: str
    payload: str = Field(description="The payload, UTF-8 with replacement, cut at 4 KiB.")


class Problem(View):
    field: str = Field(description="Dotted path of the offending field, e.g. 'location.grid'.")
    message: str


class ErrorView(View):
    error: str
    detail: str = ""
    problems: list[Problem] = Field(
        default_factory=list, description="For 422: every field that is wrong, and why."
    )


class HealthView(View):
    status: Literal["ok", "degraded"]
    database: str
    parts: dict[str, Any] = Field(
        default_factory=dict,
        description="What the process hosting the API reports, e.g. its bridge's counters.",
    )
