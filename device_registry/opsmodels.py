"""Tables of alert operations and device health, on the registry's declarative base.

Kept beside ``models.py`` (the ingest tables) so that the lifecycle, the delivery feed and the
webhook state read as one idea; ``models.py`` imports this module so that ``Base.metadata`` (and
with it the migrations) always has these tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from device_registry.models import Base


class AlertOps(Base):
    """What people (and the clock) did with an alert; the device's view is in ``alerts``."""

    __tablename__ = "alert_ops"
    __table_args__ = (Index("ix_alert_ops_due", "stage", "due_at"),)
    alert_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), index=True)
    incident_id: Mapped[str] = mapped_column(String(64), index=True)
    due_at: Mapped[int | None] = mapped_column(default=None)
    time_limit_min: Mapped[int | None] = mapped_column(Integer, default=None)
    escalated_at: Mapped[int | None] = mapped_column(default=None)
    acked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    acked_at: Mapped[int | None] = mapped_column(default=None)
    resolved_by: Mapped[str | None] = mapped_column(String(128), default=None)
    resolved_at: Mapped[int | None] = mapped_column(default=None)
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
    at: Mapped[int] = mapped_column()


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
    profile: Mapped[str] = mapped_column(String(128), default="")
    interval_s: Mapped[float | None] = mapped_column(Float, default=None)
    firmware: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[int] = mapped_column()
