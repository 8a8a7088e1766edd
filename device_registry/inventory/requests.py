"""What the inventory endpoints accept: strict request models (unknown fields refused), for bodies
and query strings alike.

Their JSON Schemas go into the OpenAPI description; a body that does not validate is a 422 with
each field's path and message.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from device_registry.inventory.components import ComponentIdError, Department, parse_component_id
from gridwatch.ground.contract import ID_MAX, Location
from gridwatch.ground.gatewayconf import Bus
from gridwatch.ground.places import shipped_places

_GW_ID = r"^[A-Za-z0-9_.-]+$"
_DEV_ID = r"^[A-Za-z0-9_.:-]+$"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _paired(loc: Location | None) -> Location | None:
    """A latitude alone sends a crew nowhere (and the edge would complete it with its cabinet's
    longitude): coordinates come as a pair."""
    if loc is not None and (loc.lat is None) != (loc.lon is None):
        raise PydanticCustomError("coordinates", "lat and lon go together: give both, or neither")
    return loc


Located = Annotated[Location, AfterValidator(_paired)]


def _component(text: str) -> str:
    """A component id checked against the districts of the shipped places ("": none)."""
    if text:
        districts = {code: p.district.zh for code, p in shipped_places().items()}
        try:
            parse_component_id(text, districts)
        except ComponentIdError as exc:
            raise PydanticCustomError("component_id", str(exc)) from None
    return text


ComponentIdText = Annotated[str, AfterValidator(_component)]


class GatewayCreate(Request):
    id: str = Field(
        pattern=_GW_ID, max_length=ID_MAX, description="Gateway id; broker user gw-<id>."
    )
    name: str = Field(default="", max_length=200)
    location: Located = Field(default_factory=Location)
    buses: list[Bus] = Field(default_factory=list, description="Its field buses.")
    labels: dict[str, str] = Field(default_factory=dict)


class GatewayPatch(Request):
    name: str | None = Field(default=None, max_length=200)
    location: Located | None = None
    buses: list[Bus] | None = None
    labels: dict[str, str] | None = None


class BusPatch(Request):
    """Settings of one field bus to change (those given); with ``type``, a bus to add."""

    type: Literal["modbus_tcp", "modbus_rtu", "mqtt"] | None = Field(
        default=None, description="Only to add a bus; a bus keeps its type."
    )
    host: str | None = Field(default=None, max_length=253, description="Device/converter host.")
    port: int | str | None = Field(
        default=None, description="TCP port, or the serial device (modbus_rtu)."
    )
    timeout_s: float | None = Field(default=None, gt=0, le=60, description="Per request.")
    max_concurrency: int | None = Field(default=None, ge=1, le=32)
    framer: Literal["socket", "rtu"] | None = None
    baudrate: int | None = Field(default=None, ge=300, le=921600)
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None
    bytesize: Literal[7, 8] | None = None


class DeviceFields(Request):
    profile: str | None = Field(default=None, min_length=1, max_length=128)
    bus: str | None = Field(default=None, min_length=1, max_length=128)
    unit_id: int | None = Field(default=None, ge=0, le=247, description="Modbus unit id.")
    address: str | None = Field(default=None, max_length=200, description="MQTT address.")
    location: Located | None = None
    install_date: datetime.date | None = None
    firmware: str | None = Field(default=None, max_length=64)
    labels: dict[str, str] | None = None
    component_id: ComponentIdText | None = Field(
        default=None, description="The city component (部件) it is attached to: 16 digits, "
        "district 6 + class 4 + serial 6; \"\" detaches it (and clears its departments).",
    )  # fmt: skip
    dept_competent: Department | None = Field(default=None, description="主管: competent dept.")
    dept_owner: Department | None = Field(default=None, description="权属: owner.")
    dept_maintainer: Department | None = Field(default=None, description="养护: maintainer.")


class DeviceCreate(DeviceFields):
    gateway: str = Field(pattern=_GW_ID, max_length=ID_MAX)
    id: str = Field(pattern=_DEV_ID, max_length=ID_MAX, description="Device id within the gateway.")
    profile: str = Field(min_length=1, max_length=128)
    bus: str = Field(min_length=1, max_length=128)


class DevicePatch(DeviceFields):
    pass


# ---- query strings ---------------------------------------------------------------------------

Retired = Literal["true", "false", "any"]
_RETIRED: dict[str, bool | None] = {"true": True, "false": False, "any": None}


def retired_flag(value: Retired | None) -> bool | None:
    """``retired=any`` -> None: retired or not."""
    return None if value is None else _RETIRED[value]


class Page(Request):
    limit: int = Field(default=1000, ge=1, le=10000, description="At most this many (default "
                       "1000, at most 10000).")  # fmt: skip
    offset: int = Field(default=0, ge=0, le=10**9, description="Skip this many first (slow "
                        "deep in a long list; the device list pages with after).")  # fmt: skip


class GatewayQuery(Page):
    district: str | None = Field(default=None, max_length=200, description="Sited in it.")
    online: bool | None = Field(default=None, description="Only online (true) or offline ones.")
    retired: Retired | None = Field(default=None, description="Default: retired or not.")


class DeviceQuery(Page):
    after: str | None = Field(default=None, max_length=1024, description="Where the page "
                              "starts: the cursor in the previous page's Link header (opaque).")  # fmt: skip
    gateway: str | None = Field(default=None, max_length=128, description="This gateway's.")
    district: str | None = Field(default=None, max_length=200, description="Sited in it.")
    street: str | None = Field(default=None, max_length=200, description="Sited in it.")
    grid: str | None = Field(default=None, max_length=200, description="In this grid cell.")
    profile: str | None = Field(default=None, max_length=128)
    status: str | None = Field(default=None, max_length=32, description="online, stale or new.")
    retired: Retired = Field(default="false", description="Default: in service only.")
    q: str | None = Field(default=None, min_length=1, max_length=128, description="Part of the "
                          "registry id (gateway:device), any case.")  # fmt: skip

    @model_validator(mode="after")
    def _one_start(self) -> DeviceQuery:
        if self.after is not None and self.offset:
            raise PydanticCustomError("after_offset", "after and offset exclude each other: "
                                      "follow the Link header, which uses after")  # fmt: skip
        return self
