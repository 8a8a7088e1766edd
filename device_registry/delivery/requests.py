"""What the delivery endpoints accept besides a webhook (``views.WebhookRequest``): query strings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamQuery(Request):
    district: str | None = Field(default=None, max_length=200, description="Only its alerts.")
    category: str | None = Field(default=None, max_length=200, description="Catalogue code.")
    since: int | None = Field(default=None, ge=0, le=2**62, description="Resume after this seq "
                              "(the header Last-Event-ID wins).")  # fmt: skip


class LastEventId(Request):
    """The header a reconnecting EventSource sends."""

    seq: int = Field(ge=0, le=2**62)


class DeadLetterQuery(Request):
    webhook: int | None = Field(default=None, ge=0, le=2**62, description="Only this webhook's.")
    all: Literal["true", "false"] = Field(default="false", description="Replayed ones too.")
