"""The health endpoints: the liveness check, the health report, and a device's recent readings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from device_registry.errors import StoreUnavailable
from device_registry.health.store import HealthFilter, health_report
from device_registry.health.views import HealthReport, HealthView, ReadingPoint, ReadingsView
from device_registry.http.auth import PUBLIC, Role, roles
from device_registry.http.routing import Route, json_reply, route
from device_registry.http.state import HEALTH_PARTS, STORE, now_ms
from gridwatch.ground.contract import Value

History = Callable[[str, str, str, int], Awaitable[list[tuple[int, Value, str]]]]
"""(gateway, device, point, since epoch ms) -> (ts, value, quality), oldest first."""
HISTORY: web.AppKey[History] = web.AppKey("history")
"""Set when the hosting process keeps telemetry history (``central run`` on its SQLite sink)."""
_SHOWN = 5000


class HealthQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    district: str | None = Field(default=None, max_length=200)
    grid: str | None = Field(default=None, max_length=200)
    gateway: str | None = Field(default=None, max_length=128)
    profile: str | None = Field(default=None, max_length=128)
    unhealthy: bool = Field(default=False, description="Only what is unhealthy.")


class ReadingsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    point: str = Field(min_length=1, max_length=128)
    since: int | None = Field(default=None, ge=0, le=2**62, description="Epoch ms; default: "
                              "an hour ago.")  # fmt: skip


@route("GET", "/health", PUBLIC, "Liveness and database check (503 when degraded)",
       shows=HealthView)  # fmt: skip
async def health(request: web.Request) -> web.Response:
    # raw, not a problem when degraded: the same view, with a 503 for a load balancer
    store = request.app[STORE]
    parts = {name: report() for name, report in request.app[HEALTH_PARTS].items()}
    failing = sorted(name for name, part in parts.items() if part.get("failing"))
    try:
        await store.ping()
    except StoreUnavailable as exc:
        view = HealthView(status="degraded", database=str(exc), failing=failing, parts=parts)
        return json_reply(view.model_dump(mode="json"), 503)
    view = HealthView(status="degraded" if failing else "ok", database=store.dialect,
                      failing=failing, parts=parts)  # fmt: skip
    return json_reply(view.model_dump(mode="json"), 503 if failing else 200)


# installers too: commissioning a cabinet ends with `gridwatch health --gateway G` coming up clean
@route("GET", "/api/v1/health", roles(Role.MAINTENANCE, Role.OPERATOR, Role.INSTALLER),
       "Health of every device and gateway, unhealthy first")  # fmt: skip
async def get_health(request: web.Request, query: HealthQuery) -> HealthReport:
    f = HealthFilter(query.district, query.grid, query.gateway, query.profile,
                     unhealthy_only=query.unhealthy)  # fmt: skip
    return await health_report(request.app[STORE], f, now_ms())


@route("GET", "/api/v1/devices/{id}/readings",
       roles(Role.MAINTENANCE, Role.OPERATOR, Role.INSTALLER),
       "A point's readings since a time (501 where no history is kept)")  # fmt: skip
async def get_readings(request: web.Request, query: ReadingsQuery) -> ReadingsView:
    history = request.app.get(HISTORY)
    if history is None:
        raise web.HTTPNotImplemented(text="this process keeps no telemetry history")
    dev = await request.app[STORE].device(request.match_info["id"])
    since = now_ms() - 3_600_000 if query.since is None else query.since
    rows = await history(dev.gateway, dev.device, query.point, since)
    points = [ReadingPoint(ts=ts, value=v, quality=q) for ts, v, q in rows[-_SHOWN:]]
    latest = dev.values.get(query.point)
    decimals = None if latest is None else latest.decimals
    return ReadingsView(device=dev.id, point=query.point, readings=points, decimals=decimals)


ROUTES: tuple[Route, ...] = (health, get_health, get_readings)
