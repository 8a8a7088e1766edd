"""The registry's tables (SQLAlchemy 2 declarative), portable between SQLite and PostgreSQL: one
metadata for every room (inventory, ingest, alerts, health, delivery), which the migrations follow.

Times are Unix epoch milliseconds (BIGINT), as on the wire. A device's registry id is
``"<gateway>:<device>"``: device ids are unique only within their gateway.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, int: BigInteger}


def device_key(gateway: str, device: str) -> str:
    return f"{gateway}:{device}"


class District(Base):
    __tablename__ = "districts"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")


class Site(Base):
    """Where equipment stands: district, street, grid cell of the city's management grid. Its
    coordinates are those of the first location that named it: a device's own (``Device.lat``,
    ``Device.lon``) come first, these only stand in for a device that has none."""

    __tablename__ = "sites"
    __table_args__ = (
        UniqueConstraint("district_id", "street", "grid"),
        Index("ix_sites_grid", "grid"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id"))
    street: Mapped[str] = mapped_column(String(200), default="")
    grid: Mapped[str] = mapped_column(String(64), default="")
    lat: Mapped[float | None] = mapped_column(Float, default=None)
    lon: Mapped[float | None] = mapped_column(Float, default=None)


class Gateway(Base):
    __tablename__ = "gateways"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), default=None)
    lat: Mapped[float | None] = mapped_column(Float, default=None)
    lon: Mapped[float | None] = mapped_column(Float, default=None)
    """Its cabinet's own coordinates (None: not known; the site's stand in)."""
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    session: Mapped[int] = mapped_column(default=0)
    software: Mapped[str] = mapped_column(String(100), default="")
    config_version: Mapped[int] = mapped_column(default=0)
    first_seen: Mapped[int] = mapped_column()
    last_seen: Mapped[int] = mapped_column()
    born_at: Mapped[int | None] = mapped_column(default=None)
    died_at: Mapped[int | None] = mapped_column(default=None)
    # registration by an installer (auto-registered gateways have none of this)
    registered_at: Mapped[int | None] = mapped_column(default=None)
    retired_at: Mapped[int | None] = mapped_column(default=None)
    name: Mapped[str] = mapped_column(String(200), default="")
    labels: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    settings: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """The generated config's fixed part: buses, mqtt uplink, outbox, health interval."""
    config_desired: Mapped[int] = mapped_column(default=0)
    config_acked: Mapped[int] = mapped_column(default=0)
    config_accepted: Mapped[bool | None] = mapped_column(Boolean, default=None)
    config_errors: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    config_acked_at: Mapped[int | None] = mapped_column(default=None)


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        # the device lists by place (and profile), in id pages, and their counts from the
        # index alone (docs/central.md, "Scaling")
        Index("ix_devices_site", "site_id", "retired_at", "profile", "id"),
    )
    id: Mapped[str] = mapped_column(String(260), primary_key=True)
    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), default=None)
    # the device's own coordinates: devices of one site (a street, a grid cell) stand metres
    # apart, and a crew is sent to these; None: not known, the site's are the best guess
    lat: Mapped[float | None] = mapped_column(Float, default=None)
    lon: Mapped[float | None] = mapped_column(Float, default=None)
    status: Mapped[str] = mapped_column(String(16), default="online")
    first_seen: Mapped[int] = mapped_column()
    last_seen: Mapped[int | None] = mapped_column(default=None)
    health: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # what an installer registered; auto-registered devices have no profile and are not
    # part of any generated config
    registered_at: Mapped[int | None] = mapped_column(default=None)
    retired_at: Mapped[int | None] = mapped_column(default=None)
    profile: Mapped[str | None] = mapped_column(String(128), default=None, index=True)
    bus: Mapped[str | None] = mapped_column(String(128), default=None)
    unit_id: Mapped[int | None] = mapped_column(Integer, default=None)
    address: Mapped[str] = mapped_column(String(200), default="")
    install_date: Mapped[str | None] = mapped_column(String(10), default=None)
    firmware: Mapped[str] = mapped_column(String(64), default="")
    labels: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # the city component (部件) it is attached to, 16 digits (inventory/components.py), and the
    # component's departments: 主管 competent, 权属 owner, 养护 maintainer (code and name each)
    component_id: Mapped[str | None] = mapped_column(String(16), default=None, index=True)
    dept_competent_code: Mapped[str | None] = mapped_column(String(32), default=None)
    dept_competent_name: Mapped[str] = mapped_column(String(200), default="")
    dept_owner_code: Mapped[str | None] = mapped_column(String(32), default=None)
    dept_owner_name: Mapped[str] = mapped_column(String(200), default="")
    dept_maintainer_code: Mapped[str | None] = mapped_column(String(32), default=None)
    dept_maintainer_name: Mapped[str] = mapped_column(String(200), default="")


class LatestReading(Base):
    """The last value of every point, with its quality: what the API shows; not the history."""

    __tablename__ = "readings_latest"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    point: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    unit: Mapped[str] = mapped_column(String(32), default="")
    quality: Mapped[str] = mapped_column(String(16))
    ts: Mapped[int] = mapped_column()
    historical: Mapped[bool] = mapped_column(Boolean, default=False)


class Alert(Base):
    """One alert's current state; its transitions are in ``alert_transitions``."""

    __tablename__ = "alerts"
    alert_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    gateway_id: Mapped[str] = mapped_column(String(128), index=True)
    device_id: Mapped[str] = mapped_column(String(260), index=True)
    point: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), index=True)
    rule: Mapped[str] = mapped_column(String(128))
    category: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    district: Mapped[str] = mapped_column(String(64), default="")
    grid: Mapped[str] = mapped_column(String(64), default="")
    location: Mapped[dict[str, Any]] = mapped_column()
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    peak: Mapped[Any] = mapped_column(JSON, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    unit: Mapped[str] = mapped_column(String(32), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    raised_at: Mapped[int] = mapped_column()
    updated_at: Mapped[int] = mapped_column()
    cleared_at: Mapped[int | None] = mapped_column(default=None)
    transitions: Mapped[int] = mapped_column(Integer, default=0)


class AlertTransition(Base):
    __tablename__ = "alert_transitions"
    msg_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    alert_id: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16))
    ts: Mapped[int] = mapped_column()
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    received_at: Mapped[int] = mapped_column()


class GatewayHealthRow(Base):
    """The latest health report of each gateway."""

    __tablename__ = "gateway_health"
    gateway_id: Mapped[str] = mapped_column(ForeignKey("gateways.id"), primary_key=True)
    ts: Mapped[int] = mapped_column()
    received_at: Mapped[int] = mapped_column()
    report: Mapped[dict[str, Any]] = mapped_column()


class SeenMessage(Base):
    """Message ids already ingested: the bridge's dedupe table, pruned by age. Stream, session
    and sequence number let the bridges of a shared subscription audit for gaps together."""

    __tablename__ = "seen_messages"
    __table_args__ = (
        Index("ix_seen_received", "received_at"),
        Index("ix_seen_stream", "gateway", "stream", "seq"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gateway: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[int] = mapped_column()
    stream: Mapped[str | None] = mapped_column(String(16), default=None)
    session: Mapped[int | None] = mapped_column(default=None)
    seq: Mapped[int | None] = mapped_column(default=None)


class SeqAudit(Base):
    """How far each gateway stream's numbers have been audited for gaps (shared subscriptions)."""

    __tablename__ = "seq_audit"
    gateway: Mapped[str] = mapped_column(String(128), primary_key=True)
    stream: Mapped[str] = mapped_column(String(16), primary_key=True)
    session: Mapped[int] = mapped_column()
    through: Mapped[int] = mapped_column()
    missing: Mapped[int] = mapped_column(default=0)
    audited_at: Mapped[int] = mapped_column()


class Quarantined(Base):
    """A message the bridge refused, kept (bounded) for inspection."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[int] = mapped_column()
    topic: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class Street(Base):
    __tablename__ = "streets"
    __table_args__ = (UniqueConstraint("district_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id"))
    name: Mapped[str] = mapped_column(String(200))


class GridCell(Base):
    """A cell of the city's management grid; alerts and maintenance lists are routed by it."""

    __tablename__ = "grid_cells"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    district_id: Mapped[str] = mapped_column(ForeignKey("districts.id"))
    name: Mapped[str] = mapped_column(String(200), default="")


class ApiToken(Base):
    """An API token: only its SHA-256 is kept; the token itself is shown once at creation."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[int | None] = mapped_column(default=None)


class AuditEntry(Base):
    """Who changed what, when: one row per accepted change made through the API."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_target", "target"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[int] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(260))
    detail: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class CommandRow(Base):
    """A command sent down to a gateway and, once it answered, its result."""

    __tablename__ = "commands"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    gateway_id: Mapped[str] = mapped_column(String(128), index=True)
    device_id: Mapped[str] = mapped_column(String(260), index=True)
    point: Mapped[str] = mapped_column(String(128))
    value: Mapped[Any] = mapped_column(JSON)
    requested_by: Mapped[str] = mapped_column(String(128))
    requested_at: Mapped[int] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default="sent")
    error: Mapped[str] = mapped_column(Text, default="")
    answered_at: Mapped[int | None] = mapped_column(default=None)
    expires_at: Mapped[int | None] = mapped_column(default=None)


# --- alert operations, device health and delivery ---


class AlertOps(Base):
    """An alert's case in the city's workflow (``alerts/lifecycle.py``): what people, the
    centre and the sensor did with it; the device's view is in ``alerts``."""

    __tablename__ = "alert_ops"
    __table_args__ = (Index("ix_alert_ops_due", "stage", "due_at"),)
    alert_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), index=True)
    incident_id: Mapped[str] = mapped_column(String(64), index=True)
    due_at: Mapped[int | None] = mapped_column(default=None)
    time_limit_min: Mapped[int | None] = mapped_column(Integer, default=None)
    # as the case was filed: the component the device is attached to, the grid cell's area class
    # (which set the time limit) and the department it went to ({code, zh, en})
    component_id: Mapped[str | None] = mapped_column(String(16), default=None)
    area_class: Mapped[str | None] = mapped_column(String(1), default=None)
    department: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)
    urged_at: Mapped[int | None] = mapped_column(default=None)
    urge_count: Mapped[int] = mapped_column(Integer, default=0)
    filed_by: Mapped[str | None] = mapped_column(String(128), default=None)
    filed_at: Mapped[int | None] = mapped_column(default=None)
    dispatched_by: Mapped[str | None] = mapped_column(String(128), default=None)
    dispatched_at: Mapped[int | None] = mapped_column(default=None)
    disposed_by: Mapped[str | None] = mapped_column(String(128), default=None)
    disposed_at: Mapped[int | None] = mapped_column(default=None)
    verified_by: Mapped[str | None] = mapped_column(String(128), default=None)
    verified_at: Mapped[int | None] = mapped_column(default=None)
    closed_by: Mapped[str | None] = mapped_column(String(128), default=None)
    closed_at: Mapped[int | None] = mapped_column(default=None)


class AlertAction(Base):
    """One lifecycle step: who did what, when, with what note."""

    __tablename__ = "alert_actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(16))
    before: Mapped[str] = mapped_column(String(16))
    after: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text, default="")
    # the centre's own notes in Chinese too (wording.py); "" for a person's note, kept as typed
    note_zh: Mapped[str] = mapped_column(Text, default="", server_default="")
    at: Mapped[int] = mapped_column()
    # a resolve or close against the sensor (lifecycle.py): a person's override, and what the
    # sensor last said with why the step went against it
    override: Mapped[bool] = mapped_column(Boolean, default=False)
    sensor: Mapped[str] = mapped_column(Text, default="")


class PlatformEvent(Base):
    """The delivery feed: every message for subscribers, in order (``seq``).

    Written in the same transaction as the change it reports, so nothing is told that did not
    happen and nothing happens untold; webhooks, the SSE stream and the MQTT publisher read it
    from their own cursors.
    """

    __tablename__ = "platform_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(16))
    alert_id: Mapped[str] = mapped_column(String(128))
    district: Mapped[str] = mapped_column(String(64), default="")
    category: Mapped[str] = mapped_column(String(64), default="")
    severity: Mapped[str] = mapped_column(String(16), default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class FeedCursor(Base):
    """How far a reader of the feed (the MQTT publisher) got."""

    __tablename__ = "feed_cursors"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(default=0)


class Webhook(Base):
    __tablename__ = "webhooks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))
    district: Mapped[str | None] = mapped_column(String(64), default=None)
    category: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[int] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(128), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    cursor: Mapped[int] = mapped_column(default=0)
    """Seq of the last feed event delivered (or dead-lettered) to it."""


class DeadLetter(Base):
    __tablename__ = "webhook_dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[int] = mapped_column(Integer, index=True)
    seq: Mapped[int] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[int] = mapped_column()
    replayed_at: Mapped[int | None] = mapped_column(default=None)


class DeviceInfo(Base):
    """What a gateway's birth says about a device: its profile and expected interval."""

    __tablename__ = "device_info"
    device_id: Mapped[str] = mapped_column(String(260), primary_key=True)
    profile: Mapped[str] = mapped_column(String(128), default="", index=True)
    interval_s: Mapped[float | None] = mapped_column(Float, default=None)
    firmware: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[int] = mapped_column()


class BridgeHeartbeat(Base):
    """Each bridge's latest report of its dependencies (``health.centre.BridgeReport``),
    written every few seconds: how a registry in another process knows them."""

    __tablename__ = "bridge_heartbeats"
    bridge_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    beat_at: Mapped[int] = mapped_column()
    report: Mapped[dict[str, Any]] = mapped_column()
