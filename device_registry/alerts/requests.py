"""What the alert endpoints accept: an operator's note, a list of alerts to close, and the query
strings of the lists."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from device_registry.alerts.lifecycle import Stage


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActionRequest(Request):
    note: str = Field(default="", max_length=2000, description="Why, what was done.")


class BulkCloseRequest(Request):
    alert_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=1000,
        description="The alerts to close (at most 1,000): each must be cleared or resolved.",
    )  # fmt: skip
    note: str = Field(default="", max_length=2000, description="Why, what was done.")


class AlertQuery(Request):
    state: Literal["active", "all"] = Field(default="active", description="active or all.")
    limit: int = Field(default=1000, ge=1, le=10000, description="At most this many.")


STAGES = ",".join(s.value for s in Stage)


class LifecycleQuery(Request):
    stage: str | None = Field(default=None, max_length=200, description=f"Comma-separated, "
                              f"among {STAGES}; default: the open ones.")  # fmt: skip
    district: str | None = Field(default=None, max_length=200)
    category: str | None = Field(default=None, max_length=200, description="Catalogue code.")
    severity: str | None = Field(default=None, max_length=200,
                                 description="Only this severity, e.g. critical.")  # fmt: skip
    incident: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=1000, ge=1, le=10000, description="At most this many.")

    @field_validator("stage")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        known = {s.value for s in Stage}
        if value is not None and not set(value.split(",")) <= known:
            raise ValueError(f"stage must be among {STAGES}")
        return value
