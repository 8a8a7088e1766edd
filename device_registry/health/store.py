"""Health of the field from the registry: gather each device's and gateway's facts in a few
queries, let the pure core (``core.py``) judge them and group them by root cause, list the
unhealthy first. Retired gateways and devices are not part of the field.

A filter must name something: ``gateway`` a registered gateway (``NotFound``, 404, for an unknown
one; ``Conflict``, 409, for a retired one), else the report would say "healthy" about nothing,
to an installer who mistyped the id. District, grid or profile that match no registered device
give a report with ``healthy`` null and ``nothing_matches`` naming the values that do exist.

A device's expected interval: the gateway's birth names it (``device_info``); a device registered
by an installer with a profile but not yet born falls back to the profile catalogue.

The bridges' heartbeats (``beat``, ``heartbeats``, ``forget``): each bridge's ``BridgeReport``,
one row per bridge, so that a registry in another process knows their dependencies.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select

from device_registry.db.store import RegistryStore
from device_registry.db.tables import (
    BridgeHeartbeat,
    Device,
    DeviceInfo,
    Gateway,
    GatewayHealthRow,
    LatestReading,
    Site,
)
from device_registry.errors import Conflict, NotFound
from device_registry.health import core as health
from device_registry.health.centre import BridgeReport, Stall
from device_registry.health.core import Assessment, DeviceFacts, GatewayFacts, Policy, Problem
from device_registry.health.views import (
    DeviceHealthView,
    GatewayHealthView,
    HealthProblem,
    HealthReport,
    HealthSummary,
    NothingMatches,
)
from gridwatch.ground.profiles import load_profiles

LEVEL_POINTS = ("battery", "signal")


@dataclass(frozen=True)
class HealthFilter:
    district: str | None = None
    grid: str | None = None
    gateway: str | None = None
    profile: str | None = None
    unhealthy_only: bool = False


@functools.cache
def _profiles() -> dict[str, tuple[float, bool]]:
    """Profile id -> (expected interval, pushes on its own) from the shipped catalogue."""
    from gridwatch.ground.gatewayconf import default_profiles_dir

    shipped = load_profiles(default_profiles_dir()).items()
    return {pid: (p.interval_s, p.protocol == "mqtt") for pid, p in shipped}


async def health_report(
    store: RegistryStore, f: HealthFilter, now: int, policy: Policy | None = None,
    centre: Stall | None = None,
) -> HealthReport:  # fmt: skip
    """``centre``: since when, and why, the centre has not been ingesting (``centre.stall``)."""
    if f.gateway is not None:
        await _known_gateway(store, f.gateway)
    gws, devices = await _facts(store, f)
    if f.district or f.grid or f.profile:  # gateways only as far as the listed devices use them
        used = {d.gateway for d in devices}
        gws = {k: g for k, g in gws.items() if k in used}
    judged_gws = [(g, health.assess_gateway(g, now, policy, centre)) for g in gws.values()]
    judged = [(d, health.assess_device(d, now, policy, centre)) for d in devices]
    grouped = health.group_problems(judged_gws, judged, centre)
    problems = [_problem_view(p) for p in grouped]
    gw_views = [_gateway_view(g, a) for g, a in judged_gws]
    dev_views = [_device_view(d, a) for d, a in judged]
    summary = HealthSummary(
        devices=len(dev_views), gateways=len(gw_views),
        devices_unhealthy=sum(not d.healthy and d.status != "unknown" for d in dev_views),
        gateways_unhealthy=sum(not g.healthy and g.status != "unknown" for g in gw_views),
        devices_unknown=sum(d.status == "unknown" for d in dev_views),
        gateways_unknown=sum(g.status == "unknown" for g in gw_views),
    )  # fmt: skip
    if f.unhealthy_only:
        dev_views = [d for d in dev_views if not d.healthy]
        gw_views = [g for g in gw_views if not g.healthy]
    dev_views.sort(key=lambda d: (d.healthy, d.district, d.grid, d.id))
    gw_views.sort(key=lambda g: (g.healthy, g.id))
    nothing = None
    if not devices and not gws:
        nothing = await _nothing_matches(store, f)
    return HealthReport(healthy=None if nothing else not problems, nothing_matches=nothing,
                        unhealthy=len(problems), summary=summary, problems=problems,
                        devices=dev_views, gateways=gw_views)  # fmt: skip


async def _known_gateway(store: RegistryStore, gw_id: str) -> None:
    async with store.transaction() as s:
        gw = await s.get(Gateway, gw_id)
    if gw is None:
        raise NotFound("gateway", gw_id)
    if gw.retired_at is not None:
        raise Conflict(f"gateway {gw_id!r} is retired: it is no longer part of the field")


_KNOWN_SHOWN = 30


async def _nothing_matches(store: RegistryStore, f: HealthFilter) -> NothingMatches | None:
    """What each given filter could have been: the values the registered devices have."""
    given = {k: v for k, v in (("district", f.district), ("grid", f.grid),
                               ("profile", f.profile)) if v is not None}  # fmt: skip
    if not given:
        return None  # the whole field is empty: a new registry, nothing was filtered away
    columns = {"district": Site.district_id, "grid": Site.grid, "profile": Device.profile}
    known: dict[str, list[str]] = {}
    async with store.transaction() as s:
        for name in given:
            q = (
                select(columns[name]).distinct()
                .select_from(Device).outerjoin(Site, Site.id == Device.site_id)
                .where(Device.retired_at.is_(None), columns[name].is_not(None))
                .order_by(columns[name]).limit(_KNOWN_SHOWN)
            )  # fmt: skip
            values = {str(v) for v in await s.scalars(q) if v}
            if name == "profile":  # the profile the gateway's birth names counts as well
                born = (
                    select(DeviceInfo.profile).distinct()
                    .join(Device, Device.id == DeviceInfo.device_id)
                    .where(Device.retired_at.is_(None), DeviceInfo.profile != "")
                    .limit(_KNOWN_SHOWN)
                )  # fmt: skip
                values.update(str(v) for v in await s.scalars(born))
            known[name] = sorted(values)[:_KNOWN_SHOWN]
    return NothingMatches(filters=given, known=known)


async def _facts(
    store: RegistryStore, f: HealthFilter
) -> tuple[dict[str, GatewayFacts], list[DeviceFacts]]:
    q = (
        select(Device, Site.district_id, Site.grid, DeviceInfo)
        .outerjoin(Site, Site.id == Device.site_id)
        .outerjoin(DeviceInfo, DeviceInfo.device_id == Device.id)
        .outerjoin(Gateway, Gateway.id == Device.gateway_id)
        .where(Device.retired_at.is_(None), Gateway.retired_at.is_(None))
        .order_by(Device.id)
    )
    if f.district is not None:
        q = q.where(Site.district_id == f.district)
    if f.grid is not None:
        q = q.where(Site.grid == f.grid)
    if f.gateway is not None:
        q = q.where(Device.gateway_id == f.gateway)
    async with store.transaction() as s:
        rows = (await s.execute(q)).all()
        gws = await _gateways(s, f.gateway)
        levels = await _levels(s, [r[0].id for r in rows])
    devices = [_device_facts(d, district, grid, info, gws.get(d.gateway_id), levels.get(d.id, {}))
               for d, district, grid, info in rows]  # fmt: skip
    if f.profile is not None:
        devices = [d for d in devices if d.profile == f.profile]
    return gws, devices


async def _gateways(s: Any, only: str | None) -> dict[str, GatewayFacts]:
    # a retired gateway is gone from the field: it has no health to judge
    q = (
        select(Gateway, GatewayHealthRow)
        .outerjoin(GatewayHealthRow, GatewayHealthRow.gateway_id == Gateway.id)
        .where(Gateway.retired_at.is_(None))
    )
    if only is not None:
        q = q.where(Gateway.id == only)
    out = {}
    for gw, rep in await s.execute(q):
        out[gw.id] = GatewayFacts(
            id=gw.id, online=gw.online, last_seen=gw.last_seen, died_at=gw.died_at,
            report=None if rep is None else rep.report,
            received_at=None if rep is None else rep.received_at,
            connected_once=gw.online or gw.born_at is not None or gw.died_at is not None,
        )  # fmt: skip
    return out


async def _levels(s: Any, ids: list[str]) -> dict[str, dict[str, tuple[Any, str]]]:
    out: dict[str, dict[str, tuple[Any, str]]] = {}
    for i in range(0, len(ids), 500):
        q = select(LatestReading).where(
            LatestReading.device_id.in_(ids[i : i + 500]), LatestReading.point.in_(LEVEL_POINTS)
        )
        for r in await s.scalars(q):
            if r.quality == "good":
                out.setdefault(r.device_id, {})[r.point] = (r.value, r.unit)
    return out


def _device_facts(
    d: Device, district: str | None, grid: str | None, info: DeviceInfo | None,
    gw: GatewayFacts | None, values: dict[str, tuple[Any, str]],
) -> DeviceFacts:  # fmt: skip
    profile = (info.profile if info and info.profile else None) or d.profile or ""
    known = _profiles().get(profile)
    interval = info.interval_s if info and info.interval_s else known[0] if known else None
    offset = 0
    if gw is not None and gw.report is not None:
        offset = health.clock_offset_ms(gw.report.get("ts"), gw.received_at)
    return DeviceFacts(
        id=d.id, gateway=d.gateway_id, device=d.name, district=district or "", grid=grid or "",
        profile=profile, interval_s=interval, push=bool(known and known[1]),
        firmware=(info.firmware if info and info.firmware else "") or d.firmware or "",
        last_seen=d.last_seen, first_seen=d.first_seen,
        gateway_online=gw.online if gw else True, gateway_died_at=gw.died_at if gw else None,
        gateway_connected_once=gw.connected_once if gw else True,
        clock_offset_ms=offset, report=d.health, values=values,
    )  # fmt: skip


def _device_view(f: DeviceFacts, a: Assessment) -> DeviceHealthView:
    rep = f.report or {}
    return DeviceHealthView(
        id=f.id, gateway=f.gateway, device=f.device, district=f.district, grid=f.grid,
        profile=f.profile, firmware=f.firmware, status=a.status.value, healthy=a.healthy,
        reasons=a.reasons, since=a.since, last_seen=f.last_seen, interval_s=f.interval_s,
        success_rate=a.success_rate, consecutive_failures=rep.get("consecutive_failures"),
        response_ms=rep.get("response_ms"), battery=f.values.get("battery", (None, ""))[0],
        signal=f.values.get("signal", (None, ""))[0],
    )  # fmt: skip


def _gateway_view(g: GatewayFacts, a: Assessment) -> GatewayHealthView:
    rep = g.report or {}
    return GatewayHealthView(
        id=g.id, status=a.status.value, healthy=a.healthy, reasons=a.reasons, since=a.since,
        last_seen=g.last_seen, uplink="connected" if g.online else "down",
        cpu_percent=rep.get("cpu_percent"),
        memory_mb=rep.get("memory_mb"), disk_free_mb=rep.get("disk_free_mb"),
        outbox_depth=rep.get("outbox_depth"), outbox_dropped=rep.get("outbox_dropped"),
        uplink_reconnects=rep.get("uplink_reconnects"),
        clock_offset_ms=health.clock_offset_ms(rep.get("ts"), g.received_at) if rep else None,
    )  # fmt: skip


def _problem_view(p: Problem) -> HealthProblem:
    return HealthProblem(
        kind=p.kind, id=p.id, gateway=p.gateway, status=p.status, reason=p.reason,
        since=p.since, devices=list(p.devices), bus=p.bus, address=p.address,
        district=p.district, grid=p.grid,
    )  # fmt: skip


# ---- the bridges' heartbeats ---------------------------------------------------------------

HEARTBEAT_KEEP_MS = 3_600_000
"""A bridge not heard from for an hour is no longer listed (one stopped cleanly removes its row
at once): a crashed bridge is reported down for that long, not for ever."""


async def beat(store: RegistryStore, report: BridgeReport) -> None:
    async with store.transaction() as s:
        await s.merge(BridgeHeartbeat(bridge_id=report.bridge, beat_at=report.at,
                                      report=report.model_dump(mode="json")))  # fmt: skip


async def forget(store: RegistryStore, bridge: str) -> None:
    """A bridge that stops cleanly: it is no longer part of the centre."""
    async with store.transaction() as s:
        await s.execute(delete(BridgeHeartbeat).where(BridgeHeartbeat.bridge_id == bridge))


async def heartbeats(store: RegistryStore, now: int) -> tuple[list[BridgeReport], list[str]]:
    """The bridges' latest reports, of the last hour; and the ids of those whose row this
    version cannot read (another version's bridge)."""
    async with store.transaction() as s:
        rows = await s.scalars(
            select(BridgeHeartbeat).where(BridgeHeartbeat.beat_at > now - HEARTBEAT_KEEP_MS)
            .order_by(BridgeHeartbeat.bridge_id)
        )  # fmt: skip
        out, unread = [], []
        for row in rows:
            try:
                out.append(BridgeReport.model_validate(row.report))
            except ValidationError:
                unread.append(row.bridge_id)
    return out, unread
