"""The health endpoints: the liveness check, the health report, and a device's recent readings.

Both health endpoints start from the centre's dependencies (``centre.py``): ``/health`` lists
them, the health report uses them to tell a centre that is not ingesting from silent devices.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from device_registry.errors import StoreUnavailable
from device_registry.health import centre
from device_registry.health.centre import CentrePolicy, Dependency, Level
from device_registry.health.store import (
    HealthFilter,
    Judgements,
    Listing,
    health_report,
    heartbeats,
)
from device_registry.health.views import (
    CentreView,
    DependencyView,
    HealthReport,
    HealthView,
    ReadingPoint,
    ReadingsView,
)
from device_registry.http import paging
from device_registry.http.auth import PUBLIC, Role, roles
from device_registry.http.routing import Route, json_reply, route
from device_registry.http.state import BRIDGES, DB_LINK, HEALTH_PARTS, STORE, now_ms
from gridwatch.ground.contract import Value

History = Callable[[str, str, str, int], Awaitable[list[tuple[int, Value, str]]]]
"""(gateway, device, point, since epoch ms) -> (ts, value, quality), oldest first."""
HISTORY: web.AppKey[History] = web.AppKey("history")
"""Set when the hosting process keeps telemetry history (``central run`` on its SQLite sink)."""
_SHOWN = 5000
JUDGEMENTS = web.AppKey("health_judgements", Judgements)
"""The judged field, reused while fresh (``store.Judgements``); set by the app."""


class HealthQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    district: str | None = Field(default=None, max_length=200)
    street: str | None = Field(default=None, max_length=200)
    grid: str | None = Field(default=None, max_length=200)
    gateway: str | None = Field(default=None, max_length=128)
    profile: str | None = Field(default=None, max_length=128)
    q: str | None = Field(default=None, min_length=1, max_length=128, description="Part of the "
                          "device's registry id (gateway:device), any case.")  # fmt: skip
    unhealthy: bool = Field(default=False, description="Only what is unhealthy (devices and "
                            "gateways).")  # fmt: skip
    health: Literal["healthy", "unhealthy", "unknown"] | None = Field(
        default=None, description="List only the devices judged so (unknown: the centre is not "
        "ingesting); the summary and problems still count every device the filters match.",
    )  # fmt: skip
    limit: int = Field(default=1000, ge=1, le=10000, description="At most this many devices "
                       "(default 1000, at most 10000), unhealthy first.")  # fmt: skip
    after: str | None = Field(default=None, max_length=1024, description="Where the device "
                              "list starts: the cursor in the previous page's Link header.")  # fmt: skip


class ReadingsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    point: str = Field(min_length=1, max_length=128)
    since: int | None = Field(default=None, ge=0, le=2**62, description="Epoch ms; default: "
                              "an hour ago.")  # fmt: skip


_OWN_DB = CentrePolicy(down_after_failures=1)  # a failed ping is the database down, now


@dataclass
class Dependencies:
    found: list[Dependency] = field(default_factory=list)
    database: str = ""
    bridges: str = ""
    """Where the bridges' state comes from, or why it is not known."""
    known: bool = False
    """Some bridge reports (live or by heartbeat): the centre's ingestion can be judged."""


async def dependencies(app: web.Application, now: int, parts: dict[str, Any]) -> Dependencies:
    """The registry's database (pinged), each bridge (live in this process, else its heartbeat),
    the registry's own broker sessions (``parts`` that say whether they fail)."""
    store, link, out = app[STORE], app[DB_LINK], Dependencies()
    try:
        await store.ping()
        link.ok(now)
        out.database = store.dialect
    except StoreUnavailable as exc:
        link.failed(now, exc)
    db = centre.judge_database(link.state, now, _OWN_DB)
    out.found.append(db)
    out.database = out.database or db.reason
    live = [probe() for probe in app[BRIDGES]]
    reports = [(r, True) for r in live]
    out.bridges = "; ".join(f"bridge {r.bridge}: in this process (live)" for r in live)
    if db.status is Level.OK:
        try:
            beats, unread = await heartbeats(store, now)
        except StoreUnavailable:
            beats, unread = [], []  # down since the ping: the next call says so
        mine = {r.bridge for r in live}
        others = [r for r in beats if r.bridge not in mine]
        reports += [(r, False) for r in others]
        out.found += centre.judge_bridges(reports, now)
        out.found += [Dependency("bridge", f"bridge {b}", Level.DEGRADED, "its heartbeat is "
                                 "of another version: this registry cannot read it")
                      for b in unread if b not in mine]  # fmt: skip
        if others:
            out.bridges = "; ".join(filter(None, [out.bridges, f"{len(others)} other bridge(s) "
                                                  "by their heartbeat in the database"]))  # fmt: skip
        out.known = bool(live or others)
    else:
        out.found += centre.judge_bridges(reports, now)
        out.known = bool(live)
        out.bridges = "; ".join(filter(None, [out.bridges, "bridges in other processes cannot "
                                              "be known while the database is down"]))  # fmt: skip
    if not out.bridges:
        out.bridges = ("no bridge reports to this registry: none runs in this process and none "
                       "has written a heartbeat to its database in the last hour")  # fmt: skip
    out.found += [_session(name, part) for name, part in parts.items() if "failing" in part]
    return out


def _session(name: str, part: dict[str, Any]) -> Dependency:
    """One of the registry's broker sessions (its downlink, the platform publisher)."""
    since = part.get("since")
    at = None if since is None else int(float(since) * 1000)
    standby = part.get("standby")  # a process that does not deliver: why (lease.py)
    waiting = part.get("waiting")  # the lease lost with the database: what still goes out
    if waiting:
        session = "broker session connected" if part.get("connected") else "not connected"
        return Dependency(name, "registry", Level.DEGRADED, f"{waiting} ({session})")
    if not part.get("failing"):
        return Dependency(name, "registry", Level.OK, "connected" if part.get("connected")
                          else f"not connected ({standby or 'not needed'})")  # fmt: skip
    if standby:
        return Dependency(name, "registry", Level.DOWN, f"not connected: {standby}")
    when = "" if at is None else f" since {centre.clock(at)}"
    return Dependency(name, "registry", Level.DOWN, f"broker session lost{when}", at)


@route("GET", "/health", PUBLIC, "The centre's dependencies, each ok, degraded or down (503 "
       "unless all are ok)", shows=HealthView)  # fmt: skip
async def health(request: web.Request) -> web.Response:
    # raw, not a problem when degraded: the same view, with a 503 for a load balancer
    parts = {name: report() for name, report in request.app[HEALTH_PARTS].items()}
    deps = await dependencies(request.app, now_ms(), parts)
    overall = centre.worst(d.status for d in deps.found)
    view = HealthView(
        status=overall.value, database=deps.database, bridges=deps.bridges,
        failing=sorted(d.label for d in deps.found if d.status is not Level.OK),
        dependencies=[DependencyView(name=d.name, part=d.part, status=d.status.value,
                                     reason=d.reason, since=d.since, detail=d.detail)
                      for d in deps.found],
        parts=parts,
    )  # fmt: skip
    return json_reply(view.model_dump(mode="json"), 200 if overall is Level.OK else 503)


# installers too: commissioning a cabinet ends with `gridwatch health --gateway G` coming up clean
@route("GET", "/api/v1/health", roles(Role.MAINTENANCE, Role.OPERATOR, Role.INSTALLER),
       "Health of every device and gateway, unhealthy first; the devices a page at a time",
       shows=HealthReport, headers=paging.HEADERS)  # fmt: skip
async def get_health(request: web.Request, query: HealthQuery) -> web.Response:
    start = paging.after(query.after, "health", (int, str, str, str))
    f = HealthFilter(query.district, query.grid, query.gateway, query.profile,
                     unhealthy_only=query.unhealthy, street=query.street, q=query.q)  # fmt: skip
    now = now_ms()
    deps = await dependencies(request.app, now, {})
    stalled = centre.stall(deps.found, now)
    listing = Listing(query.health, None if start is None else start.key, query.limit)
    report, listed, nxt = await health_report(request.app[STORE], f, now, centre=stalled,
                                              listing=listing,
                                              judgements=request.app[JUDGEMENTS])  # fmt: skip
    view = CentreView(
        ingesting=stalled is None, reason="" if stalled is None else stalled.why,
        since=None if stalled is None else stalled.since, known=deps.known,
        degraded=[f"{d.label}: {d.reason}" for d in deps.found
                  if d.status is not Level.OK and not d.stalls],
    )  # fmt: skip
    total = listed if start is None else start.total
    body = {"centre": view.model_dump(mode="json"), **report}
    return paging.reply_with(request, "health", body, total, nxt)


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
