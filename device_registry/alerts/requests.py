"""What the alert endpoints accept: an operator's note (and a department to dispatch to), a list of
alerts to close, and the query strings of the lists."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from device_registry.alerts.lifecycle import OVERRIDE_NOTE_MIN, Stage, override_note_problem


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActionRequest(Request):
    note: str = Field(default="", max_length=2000, description="Why, what was done.")


class EndRequest(ActionRequest):
    """A verify or close of one case: the only steps that may override the sensor."""

    override: bool = Field(default=False, description="Verify or close although the sensor "
                           "still reports the condition (broken, gone): operators and admins, "
                           f"with a note of at least {OVERRIDE_NOTE_MIN} characters saying why.")  # fmt: skip

    @model_validator(mode="after")
    def _says_why(self) -> EndRequest:
        problem = override_note_problem(self.note) if self.override else None
        if problem is not None:
            raise ValueError(problem)
        return self


class DepartmentBody(Request):
    code: str = Field(min_length=1, max_length=32, description="The department's code.")
    zh: str = Field(min_length=1, max_length=200, description="Its name in Chinese.")
    en: str = Field(default="", max_length=200, description="Its name in English.")


class DispatchRequest(ActionRequest):
    """A dispatch (派遣), to the catalogue's department unless another is named."""

    department: DepartmentBody | None = Field(default=None, description="Dispatch to this "
                                              "department instead of the catalogue's.")  # fmt: skip


class BulkCloseRequest(Request):
    alert_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=1000,
        description="The alerts to close (at most 1,000): each must be verified, or reported "
        "and cleared by its device (never filed).",
    )  # fmt: skip
    note: str = Field(default="", max_length=2000, description="Why, what was done.")


class AlertQuery(Request):
    state: Literal["active", "all"] = Field(default="active", description="active or all.")
    limit: int = Field(default=1000, ge=1, le=10000, description="At most this many.")


STAGES = ",".join(s.value for s in Stage)


class LifecycleQuery(Request):
    stage: str | None = Field(default=None, max_length=200, description=f"Comma-separated, "
                              f"among {STAGES}; default: all but closed.")  # fmt: skip
    district: str | None = Field(default=None, max_length=200)
    category: str | None = Field(default=None, max_length=200, description="Catalogue code.")
    severity: str | None = Field(default=None, max_length=200,
                                 description="Only this severity, e.g. critical.")  # fmt: skip
    incident: str | None = Field(default=None, max_length=200)
    grid: str | None = Field(default=None, max_length=200, description="In this grid cell.")
    q: str | None = Field(default=None, min_length=1, max_length=128, description="Part of the "
                          "alert's id or its device's (gateway:device), any case.")  # fmt: skip
    limit: int = Field(default=1000, ge=1, le=10000, description="At most this many (default "
                       "1000, at most 10000), newest raised first.")  # fmt: skip
    after: str | None = Field(default=None, max_length=1024, description="Where the page "
                              "starts: the cursor in the previous page's Link header (opaque).")  # fmt: skip

    @field_validator("stage")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        known = {s.value for s in Stage}
        if value is not None and not set(value.split(",")) <= known:
            raise ValueError(f"stage must be among {STAGES}")
        return value
