"""What the health endpoints return: the liveness check, the health report, and readings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from device_registry.http.values import Served


class HealthView(BaseModel):
    """``degraded`` (HTTP 503) when the database cannot be reached or a part of this process is
    failing: the bridge's broker sessions, the registry's downlink session (without it gateways
    cannot be registered, retired or commanded), the platform publisher while this process is
    the one delivering. A part still making its first connection is not failing yet."""

    status: Literal["ok", "degraded"]
    database: str
    failing: list[str] = Field(default_factory=list, description="The parts that are failing.")
    parts: dict[str, Any] = Field(
        default_factory=dict,
        description="What each part of the process reports: connected, since (epoch s), "
        "outages, failing; the bridge's counters. Never a broker address or an error text.",
    )


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
    battery: Served = None
    signal: Served = None


class GatewayHealthView(BaseModel):
    id: str
    status: Literal["online", "offline", "silent", "never_connected"] = Field(
        description="offline from its death message until its next birth; never_connected "
        "until its first birth; silent while connected without a health report for three of "
        "its report periods."
    )
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


class HealthProblem(BaseModel):
    """One root cause: a gateway (offline, never connected, silent, or with findings), a bus
    that is down, or a device that no gateway or bus accounts for."""

    kind: Literal["gateway", "bus", "device"]
    id: str = Field(description="Gateway id, 'gateway/bus', or the device's registry id.")
    gateway: str
    status: str
    reason: str = Field(description="One line, naming the cause and how many devices it covers.")
    since: int | None = Field(description="When it began (centre clock, epoch ms).")
    devices: list[str] = Field(description="Registry ids of the unhealthy devices it covers.")
    bus: str = ""
    address: str = Field(default="", description="The bus's host:port or serial port.")
    district: str = ""
    grid: str = ""


class HealthSummary(BaseModel):
    devices: int = Field(description="Devices checked.")
    devices_unhealthy: int
    gateways: int = Field(description="Gateways checked (retired ones are not).")
    gateways_unhealthy: int


class NothingMatches(BaseModel):
    """The filters asked for match no registered device: there is nothing to judge."""

    filters: dict[str, str] = Field(description="The filters given (district, grid, profile).")
    known: dict[str, list[str]] = Field(
        description="For each filter given, the values registered devices have (at most 30)."
    )


class HealthReport(BaseModel):
    healthy: bool | None = Field(
        description="True when there is no problem; null when the filters match nothing "
        "(see nothing_matches)."
    )
    nothing_matches: NothingMatches | None = None
    unhealthy: int = Field(description="How many problems (root causes): len(problems).")
    summary: HealthSummary
    problems: list[HealthProblem] = Field(
        description="One per root cause: gateways, then buses, then single devices."
    )
    devices: list[DeviceHealthView] = Field(description="Unhealthy first.")
    gateways: list[GatewayHealthView] = Field(description="Unhealthy first.")


class ReadingPoint(BaseModel):
    ts: int
    value: Served
    quality: str


class ReadingsView(BaseModel):
    device: str
    point: str
    readings: list[ReadingPoint]
    decimals: int | None = Field(default=None, description="Decimals the point's values are "
                                 "shown with (from the device's profile; values keep their full "
                                 "precision); null: not known, or not a number.")  # fmt: skip
