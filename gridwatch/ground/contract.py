"""The wire contract between edge gateways and the central platform.

One pure module, imported by both ends: topic names and message models, no I/O.
Every message is JSON with a schema version ``v``. docs/contract.md shows an example of each.

Topic tree (``P`` is the configurable prefix, ``G`` the gateway id, which is also the
gateway's MQTT username so a broker ACL ``pattern readwrite P/gw/%u/#`` confines it)::

    P/gw/G/status          retained  Birth on connect, Death as the last will      (up)
    P/gw/G/telemetry                 TelemetryBatch                                (up)
    P/gw/G/alert                     AlertEvent                                    (up)
    P/gw/G/health                    GatewayHealth                                 (up)
    P/gw/G/config          retained  ConfigPush                                    (down)
    P/gw/G/config/ack                ConfigAck                                     (up)
    P/gw/G/cmd                       Command                                       (down)
    P/gw/G/cmd/result                CommandResult                                 (up)
    P/platform/alert/D/C/S           PlatformAlert  (district D, category C, severity S)
    P/platform/lifecycle/D/C/S       PlatformLifecycle  (opened with its incident, acknowledged,
                                     resolved, closed, cleared: who, when, time limit)
    P/platform/escalation/D/C/S      PlatformEscalation (past its time limit; once per alert)

Upstream messages carry a message id and a per-gateway, per-stream sequence number so the
central side drops duplicates (at-least-once delivery) and notices gaps.
"""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1
DEFAULT_PREFIX = "gridwatch"


class Quality(enum.StrEnum):
    """How far a reading can be trusted. A failed read is never reported as a number."""

    GOOD = "good"
    STALE = "stale"
    COMM_ERROR = "comm_error"
    OUT_OF_RANGE = "out_of_range"
    INVALID = "invalid"


class Severity(enum.StrEnum):
    INFO = "info"
    MINOR = "minor"
    MAJOR = "major"
    CRITICAL = "critical"


class AlertState(enum.StrEnum):
    RAISED = "raised"
    UPDATED = "updated"
    CLEARED = "cleared"


Value = float | int | bool | str | None


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reading(_Msg):
    """One value of one point of one device at one instant."""

    device: str = Field(description="Device id, unique within the gateway.")
    point: str = Field(description="Point name from the device profile.")
    value: Value = Field(description="Decoded, scaled value; null when quality is not good.")
    unit: str = Field(default="", description="Engineering unit, e.g. 'm', 'ppm'.")
    ts: int = Field(description="Time the value was read, Unix epoch milliseconds (UTC).")
    quality: Quality = Field(default=Quality.GOOD)
    historical: bool = Field(
        default=False, description="True when replayed from the outbox after an outage."
    )


class Upstream(_Msg):
    """Fields every message from a gateway carries."""

    v: Literal[1] = SCHEMA_VERSION
    id: str = Field(description="Message id (UUID), unique forever; the dedupe key.")
    gateway: str
    seq: int = Field(ge=0, description="Per-gateway, per-stream sequence number.")
    session: int = Field(ge=0, description="Increments every time the gateway connects.")


class TelemetryBatch(Upstream):
    kind: Literal["telemetry"] = "telemetry"
    readings: list[Reading]


class Location(_Msg):
    district: str = ""
    street: str = ""
    grid: str = Field(default="", description="Grid cell of the city's management grid.")
    lat: float | None = None
    lon: float | None = None


class AlertEvent(Upstream):
    """A transition of one alert. ``alert_id`` is stable across raise, updates and clear."""

    kind: Literal["alert"] = "alert"
    alert_id: str
    state: AlertState
    rule: str = Field(description="Rule id that fired, e.g. 'level_high'.")
    category: str = Field(description="Event catalogue code.")
    severity: Severity
    device: str
    point: str
    location: Location
    value: Value = Field(description="The value that caused this transition.")
    peak: Value = Field(default=None, description="Most extreme value while active.")
    threshold: float | None = None
    unit: str = ""
    message: str = ""
    raised_at: int = Field(description="Epoch ms when the alert was raised.")
    ts: int = Field(description="Epoch ms of this transition.")


class DeviceInfo(_Msg):
    """What the centre needs to judge a device's health: its profile's expected interval."""

    device: str
    profile: str = ""
    interval_s: float | None = Field(default=None, description="Expected reporting interval.")
    firmware: str = ""
    location: Location | None = Field(default=None, description="Where it is installed.")


class Birth(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["birth"] = "birth"
    gateway: str
    session: int
    ts: int
    software: str = ""
    config_version: int = 0
    devices: list[str] = Field(default_factory=list)
    device_info: list[DeviceInfo] = Field(
        default_factory=list, description="Profile and expected interval of each device."
    )


class Death(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["death"] = "death"
    gateway: str
    session: int


Status = Annotated[Birth | Death, Field(discriminator="kind")]


class DeviceHealth(_Msg):
    device: str
    online: bool
    reads_ok: int = 0
    reads_failed: int = 0
    consecutive_failures: int = 0
    response_ms: float | None = None
    last_ok: int | None = None
    polls_skipped: int = 0


class GatewayHealth(Upstream):
    kind: Literal["health"] = "health"
    ts: int
    cpu_percent: float | None = None
    memory_mb: float | None = None
    disk_free_mb: float | None = None
    outbox_depth: int = 0
    outbox_bytes: int = 0
    outbox_dropped: int = 0
    uplink_reconnects: int = 0
    devices: list[DeviceHealth] = Field(default_factory=list)


class ConfigPush(_Msg):
    """A gateway's whole configuration, as the registry generated it (retained)."""

    v: Literal[1] = SCHEMA_VERSION
    gateway: str
    version: int = Field(ge=1, description="Increases with every change; acks name it.")
    config: dict[str, Any] = Field(description="The gateway config document (as in YAML).")
    ts: int


class ConfigAck(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    gateway: str
    version: int
    accepted: bool
    errors: list[str] = Field(default_factory=list)
    ts: int


class Command(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    id: str
    device: str
    point: str
    value: float | int | bool
    ts: int
    expires_at: int | None = Field(
        default=None,
        description="Unix epoch ms. A gateway that gets the command later (it was offline and "
        "the broker kept it) does not run it and answers 'expired': an actuator must not move "
        "hours after someone asked.",
    )


class CommandResult(_Msg):
    v: Literal[1] = SCHEMA_VERSION
    id: str
    gateway: str
    ok: bool
    error: str = ""
    expired: bool = Field(default=False, description="Not run: it arrived after expires_at.")
    ts: int


class PlatformAlert(_Msg):
    """What the city platform receives: the edge's alert event plus where it came from."""

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["alert"] = "alert"
    gateway: str
    alert_id: str
    state: AlertState
    rule: str
    category: str
    severity: Severity
    device: str
    point: str
    location: Location
    value: Value
    peak: Value = None
    threshold: float | None = None
    unit: str = ""
    message: str = ""
    raised_at: int
    ts: int

    @classmethod
    def from_event(cls, ev: AlertEvent) -> PlatformAlert:
        data = ev.model_dump(exclude={"v", "id", "seq", "session", "kind"})
        return cls(**data)


class PlatformLifecycle(_Msg):
    """A step of an alert's lifecycle at the centre, with the incident it belongs to.

    ``action`` ``open`` is sent once per alert when the centre first stores it; alerts with the
    same ``incident_id`` are one incident (``incident_new`` is true on its first alert only).
    """

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["lifecycle"] = "lifecycle"
    alert_id: str
    incident_id: str
    incident_new: bool = False
    action: Literal["open", "ack", "resolve", "close", "device_clear"]
    stage: Literal["open", "acknowledged", "resolved", "closed", "cleared"]
    actor: str = Field(description="Who: a token's name, 'device' or 'centre'.")
    note: str = ""
    gateway: str
    device: str
    category: str
    severity: Severity
    location: Location
    due_at: int | None = Field(default=None, description="Epoch ms the time limit ends.")
    time_limit_min: int | None = None
    ts: int


class PlatformEscalation(_Msg):
    """An alert still waiting for people past its catalogue time limit (sent once)."""

    v: Literal[1] = SCHEMA_VERSION
    kind: Literal["escalation"] = "escalation"
    alert_id: str
    incident_id: str
    stage: Literal["open", "acknowledged"]
    gateway: str
    device: str
    category: str
    severity: Severity
    location: Location
    unit: str = Field(default="", description="Responsible unit from the catalogue.")
    due_at: int
    time_limit_min: int
    overdue_ms: int
    ts: int


PlatformMessage = Annotated[
    PlatformAlert | PlatformLifecycle | PlatformEscalation, Field(discriminator="kind")
]


UpstreamMessage = Annotated[
    TelemetryBatch | AlertEvent | GatewayHealth, Field(discriminator="kind")
]


def new_id() -> str:
    return uuid.uuid4().hex


class Topics:
    """Topic names under one prefix. Pure string work, shared by both ends."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix.rstrip("/")

    def gateway(self, gateway_id: str, leaf: str) -> str:
        return f"{self.prefix}/gw/{gateway_id}/{leaf}"

    def status(self, gw: str) -> str:
        return self.gateway(gw, "status")

    def telemetry(self, gw: str) -> str:
        return self.gateway(gw, "telemetry")

    def alert(self, gw: str) -> str:
        return self.gateway(gw, "alert")

    def health(self, gw: str) -> str:
        return self.gateway(gw, "health")

    def config(self, gw: str) -> str:
        return self.gateway(gw, "config")

    def config_ack(self, gw: str) -> str:
        return self.gateway(gw, "config/ack")

    def command(self, gw: str) -> str:
        return self.gateway(gw, "cmd")

    def command_result(self, gw: str) -> str:
        return self.gateway(gw, "cmd/result")

    def all_gateways(self, leaf: str) -> str:
        """Subscription filter for one leaf of every gateway."""
        return f"{self.prefix}/gw/+/{leaf}"

    def platform_alert(self, district: str, category: str, severity: str) -> str:
        return f"{self.prefix}/platform/alert/{_level(district)}/{_level(category)}/{severity}"

    def platform_alerts(self) -> str:
        return f"{self.prefix}/platform/alert/#"

    def platform(self, kind: str, district: str, category: str, severity: str) -> str:
        """``kind``: alert, lifecycle or escalation (a platform message's ``kind``)."""
        return f"{self.prefix}/platform/{kind}/{_level(district)}/{_level(category)}/{severity}"

    def platform_all(self) -> str:
        return f"{self.prefix}/platform/#"

    def parse_gateway_topic(self, topic: str) -> tuple[str, str] | None:
        """``P/gw/G/leaf...`` -> (G, leaf); None for a topic outside the gateway tree."""
        head = f"{self.prefix}/gw/"
        if not topic.startswith(head):
            return None
        gw, _, leaf = topic[len(head) :].partition("/")
        if not gw or not leaf:
            return None
        return gw, leaf


def _level(name: str) -> str:
    """A topic level from free text: MQTT wildcards and separators are not allowed in it."""
    cleaned = "".join("_" if c in "/+#" else c for c in name.strip())
    return cleaned or "_"
