"""What the inventory endpoints return: devices and gateways as the API shows them, and how rows
become those views (kept apart from the store so the store stays about SQL)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

from pydantic import BaseModel, Field, computed_field

from device_registry.db.tables import Gateway
from device_registry.http.values import Served
from device_registry.inventory.components import Department, class_code
from device_registry.inventory.places import Place, place_json


class PointValue(BaseModel):
    value: Served
    unit: str = ""
    quality: str = Field(description="good | stale | comm_error | out_of_range | invalid")
    ts: int = Field(description="Epoch ms of the reading (gateway clock).")
    historical: bool = False
    decimals: int | None = Field(default=None, description="Decimals the value is shown with "
                                 "(its point's, from the device's profile; the value itself "
                                 "keeps its full precision); null: not known, or not a number.")  # fmt: skip


class DeviceAlert(BaseModel):
    """An alert of the device that has not cleared at the device."""

    alert_id: str
    category: str
    severity: str
    point: str
    message: str
    value: Served
    unit: str = ""
    raised_at: int


class DeviceView(BaseModel):
    id: str = Field(description="Registry id: '<gateway>:<device>'.")
    gateway: str
    device: str = Field(description="Device id within its gateway.")
    status: Literal["online", "stale", "new"] = Field(
        description="stale once its gateway's death message arrived, online again on birth; "
        "new: registered by an installer and not heard from yet."
    )
    district: str = ""
    grid: str = ""
    first_seen: int
    last_seen: int | None = Field(description="Epoch ms of its newest reading, if any.")
    values: dict[str, PointValue] = Field(default_factory=dict)
    health: dict[str, Any] | None = None
    # what an installer registered (empty for a device only auto-registered from telemetry)
    registered: bool = False
    retired: bool = False
    profile: str | None = Field(
        default=None,
        description="The installer's, else the one the "
        "gateway's birth names; null when neither names one.",
    )
    bus: str | None = None
    unit_id: int | None = None
    address: str = ""
    street: str = ""
    lat: float | None = Field(default=None, description="Where a crew finds it: latitude.")
    lon: float | None = Field(default=None, description="Longitude.")
    coordinates: Literal["device", "site", "none"] = Field(
        default="none",
        description="Whose lat/lon these are: the device's own, or (it has none) its site's, "
        "the first location registered in its district/street/grid cell: only a guess.",
    )
    place: Place | None = Field(default=None, description="What the district's places data "
                                "says of where it is: district and 街道 names, area class.")  # fmt: skip
    install_date: str | None = None
    firmware: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    component_id: str | None = Field(default=None, description="The city component (部件) "
                                     "it is attached to: 16 digits; null: none.")  # fmt: skip
    class_code: str | None = Field(default=None, description="The component's 4-digit class "
                                   "(digits 7-10 of its id), e.g. 0103 storm-water cover.")  # fmt: skip
    dept_competent: Department | None = Field(default=None, description="主管: competent dept.")
    dept_owner: Department | None = Field(default=None, description="权属: owner.")
    dept_maintainer: Department | None = Field(default=None, description="养护: maintainer.")
    active_alerts: list[DeviceAlert] = Field(
        default_factory=list,
        description="Its alerts not cleared at the device (one device's view only; lists leave "
        "it empty). Commissioning shows them: a device in alarm is not simply 'good'.",
    )


class ConfigState(BaseModel):
    desired: int = Field(description="Version the registry generated last.")
    acknowledged: int = Field(description="Newest version the gateway acknowledged.")
    accepted: bool | None = Field(description="Whether that version was accepted.")
    errors: list[str] = Field(default_factory=list, description="Why it was rejected.")
    acknowledged_at: int | None = None
    running: int = Field(description="Version the gateway's last birth message named.")


class GatewayView(BaseModel):
    id: str
    online: bool
    session: int
    software: str
    config_version: int
    first_seen: int
    last_seen: int = Field(description="Epoch ms (central clock) of its last message.")
    born_at: int | None
    died_at: int | None
    devices: int
    health: dict[str, Any] | None = None
    registered: bool = False
    retired: bool = False
    name: str = ""
    location: dict[str, Any] = Field(default_factory=dict)
    coordinates: Literal["gateway", "site", "none"] = Field(
        default="none", description="Whose lat/lon the location has: the gateway's own, or "
        "(it has none) its site's, the first location registered there: only a guess.",
    )  # fmt: skip
    labels: dict[str, str] = Field(default_factory=dict)
    config: ConfigState | None = Field(
        default=None, description="Config delivery: desired vs acknowledged (registered only)."
    )

    @computed_field(  # type: ignore[prop-decorator]
        description="retired; online; never_connected until its first birth or death message "
        "(registered by an installer, not yet on the broker); else offline. As health says it."
    )
    @property
    def status(self) -> Literal["online", "offline", "never_connected", "retired"]:
        if self.retired:
            return "retired"
        if self.online:
            return "online"
        return "never_connected" if self.born_at is None and self.died_at is None else "offline"


class MqttAccount(BaseModel):
    username: str = Field(description="The gateway's id.")
    password: str = Field(description="Shown this once; the registry keeps no copy.")
    note: str


class IssuedGateway(GatewayView):
    """A gateway with the MQTT password just issued to it."""

    mqtt: MqttAccount


def device_row(
    r: Sequence[Any], values: dict[str, dict[str, Any]], active: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A device as ``DeviceView`` writes it, from a row of the store's device columns (in the
    order unpacked here), its last values (``PointValue``'s shape) and its active alerts
    (``DeviceAlert``'s): a plain dict, so that a page of 1,000 is written as JSON without a
    model per device (``tests/test_paging.py`` validates these dicts against the view). The
    row is unpacked, not read by name: that was a fifth of a page's CPU. The coordinates are
    the device's own when it has a pair, else its site's (as ``places.located`` says)."""
    (id_, gateway, name, status, district, grid, street, first_seen, last_seen, health,
     registered_at, retired_at, profile, born, bus, unit_id, address, lat, lon, site_lat,
     site_lon, install_date, firmware, labels, component_id, competent_code, competent_name,
     owner_code, owner_name, maintainer_code, maintainer_name) = r  # fmt: skip
    own = lat is not None or lon is not None
    if not own:
        lat, lon = site_lat, site_lon
    source = "device" if own else "site" if lat is not None or lon is not None else "none"
    return {
        "id": id_, "gateway": gateway, "device": name, "status": status,
        "district": district or "", "grid": grid or "", "first_seen": first_seen,
        "last_seen": last_seen, "values": values, "health": health,
        "registered": registered_at is not None, "retired": retired_at is not None,
        "profile": profile or born or None, "bus": bus, "unit_id": unit_id,
        "address": address or "", "street": street or "", "lat": lat, "lon": lon,
        "coordinates": source, "install_date": install_date, "firmware": firmware or "",
        "labels": labels or {}, "active_alerts": active or [],
        "place": place_json(district or "", street or "", grid or ""),
        "component_id": component_id, "class_code": class_code(component_id),
        "dept_competent": _department(competent_code, competent_name),
        "dept_owner": _department(owner_code, owner_name),
        "dept_maintainer": _department(maintainer_code, maintainer_name),
    }  # fmt: skip


def _department(code: str | None, name: str | None) -> dict[str, str] | None:
    # as stored, not validated again (a row is shown as it was written)
    return {"code": code, "name": name or ""} if code else None


def gateway(
    gw: Gateway, devices: int, report: dict[str, Any] | None,
    location: dict[str, Any] | None = None,
) -> GatewayView:  # fmt: skip
    registered = gw.registered_at is not None
    own = (gw.lat, gw.lon) != (None, None)
    has = "lat" in (location or {}) or "lon" in (location or {})
    source = "gateway" if own else "site" if has else "none"
    config = ConfigState(
        desired=gw.config_desired, acknowledged=gw.config_acked, accepted=gw.config_accepted,
        errors=list((gw.config_errors or {}).get("errors", [])),
        acknowledged_at=gw.config_acked_at, running=gw.config_version,
    ) if registered else None  # fmt: skip
    return GatewayView(
        id=gw.id, online=gw.online, session=gw.session, software=gw.software,
        config_version=gw.config_version, first_seen=gw.first_seen, last_seen=gw.last_seen,
        born_at=gw.born_at, died_at=gw.died_at, devices=devices, health=report,
        registered=registered, retired=gw.retired_at is not None, name=gw.name or "",
        location=location or {}, labels=gw.labels or {}, config=config,
        coordinates=cast(Literal["gateway", "site", "none"], source),
    )  # fmt: skip
