"""What the health endpoints return: the liveness check, the health report, and readings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from device_registry.http.values import Served

Level = Literal["ok", "degraded", "down"]


class DependencyView(BaseModel):
    """One thing the centre depends on, as one part of it sees it."""

    name: str = Field(description="broker, database, time-series store (telemetry history "
                      "with the embedded one), ingest lag, bridge (a bridge not heard from), "
                      "or a registry session (registry downlink, platform publisher).")  # fmt: skip
    part: str = Field(description="Whose view: registry, or bridge <id>.")
    status: Level
    reason: str = Field(description="In plain words; an error by its kind, never its text.")
    since: int | None = Field(default=None, description="When the trouble began (epoch ms).")
    detail: dict[str, Any] = Field(default_factory=dict, description="The facts judged: a "
                                   "store's ok_at, failures, failing_since, error; each lane's "
                                   "connected and since; the lag's oldest_uncommitted and "
                                   "commit_delay_ms (epoch ms, ms).")  # fmt: skip


class HealthView(BaseModel):
    """The worst of the dependencies decides: ``ok`` (HTTP 200), else ``degraded`` or ``down``
    (HTTP 503). Dependencies: the registry database; each bridge's broker sessions, its
    time-series store, the registry database as its writes met it, its ingest lag (a bridge in
    this process live, one elsewhere from its heartbeat in the database); the registry's
    downlink session (without it gateways cannot be registered, retired or commanded), the
    platform publisher while this process is the one delivering. A part still making its first
    connection is not failing yet."""

    status: Level
    database: str = Field(description="The dialect, or why the database cannot be reached.")
    failing: list[str] = Field(default_factory=list,
                               description="The dependencies that are not ok, by label.")  # fmt: skip
    dependencies: list[DependencyView] = Field(default_factory=list)
    bridges: str = Field(default="", description="Where the bridges' state comes from, or why "
                         "it is not known.")  # fmt: skip
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
    status: Literal["online", "offline", "silent", "unknown"] = Field(
        description="unknown: no recent data while the centre is not ingesting (its reason "
        "says why): the centre cannot tell whether the device is silent."
    )
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
    status: Literal["online", "offline", "silent", "never_connected", "unknown"] = Field(
        description="offline from its death message until its next birth; never_connected "
        "until its first birth; silent while connected without a health report for three of "
        "its report periods; unknown when that silence began while the centre was not "
        "ingesting."
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
    """One root cause: the centre not ingesting (status ``not_ingesting``: it covers the devices
    it cannot judge), a gateway (offline, never connected, silent, or with findings), a bus
    that is down, or a device that no gateway or bus accounts for."""

    kind: Literal["centre", "gateway", "bus", "device"]
    id: str = Field(description="'centre', gateway id, 'gateway/bus', or the device's registry "
                    "id.")  # fmt: skip
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
    devices_unknown: int = Field(default=0, description="Devices the centre cannot judge while "
                                 "it is not ingesting (not counted as unhealthy).")  # fmt: skip
    gateways_unknown: int = 0


class NothingMatches(BaseModel):
    """The filters asked for match no registered device: there is nothing to judge."""

    filters: dict[str, str] = Field(description="The filters given (district, grid, profile).")
    known: dict[str, list[str]] = Field(
        description="For each filter given, the values registered devices have (at most 30)."
    )


class CentreView(BaseModel):
    """Whether the centre is ingesting, so that no data is not taken for silent devices."""

    ingesting: bool
    reason: str = Field(description="Why not, in plain words (the first dependency that "
                        "keeps readings from the registry); empty while ingesting.")  # fmt: skip
    since: int | None = Field(default=None, description="Not ingesting since (epoch ms).")
    known: bool = Field(description="False when no bridge reports to this registry (none in "
                        "its process, no heartbeat in its database): it cannot tell.")  # fmt: skip
    degraded: list[str] = Field(default_factory=list, description="Parts of the centre that "
                                "fail without stopping ingestion, each '<part>: <reason>' (a "
                                "member of a share group the others cover for).")  # fmt: skip


class HealthReport(BaseModel):
    centre: CentreView | None = None
    healthy: bool | None = Field(
        description="True when there is no problem; null when the filters match nothing "
        "(see nothing_matches)."
    )
    nothing_matches: NothingMatches | None = None
    unhealthy: int = Field(description="How many problems (root causes): len(problems).")
    summary: HealthSummary
    problems: list[HealthProblem] = Field(
        description="One per root cause: the centre, gateways, then buses, then single devices."
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
