"""What the quarantine endpoint returns: messages the bridge refused, and how a row becomes one."""

from __future__ import annotations

from pydantic import BaseModel, Field

from device_registry.db.tables import Quarantined

_PAYLOAD_SHOWN = 4096


class QuarantineView(BaseModel):
    id: int
    received_at: int
    topic: str
    reason: str
    detail: str
    payload: str = Field(description="The payload, UTF-8 with replacement, cut at 4 KiB.")


def quarantined(q: Quarantined) -> QuarantineView:
    return QuarantineView(
        id=q.id,
        received_at=q.received_at,
        topic=q.topic,
        reason=q.reason,
        detail=q.detail,
        payload=q.payload[:_PAYLOAD_SHOWN].decode("utf-8", "replace"),
    )
