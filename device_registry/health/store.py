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

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, select

from device_registry.db.pages import Key, like, sliced
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
from device_registry.health.core import (
    Assessment,
    DeviceFacts,
    GatewayFacts,
    Policy,
    Problem,
    Status,
)
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
    street: str | None = None
    q: str | None = None
    """Part of the device's registry id (gateway:device), any case."""


@functools.cache
def _profiles() -> dict[str, tuple[float, bool]]:
    """Profile id -> (expected interval, pushes on its own) from the shipped catalogue."""
    from gridwatch.ground.gatewayconf import default_profiles_dir

    shipped = load_profiles(default_profiles_dir()).items()
    return {pid: (p.interval_s, p.protocol == "mqtt") for pid, p in shipped}


@dataclass(frozen=True)
class Listing:
    """Which judged devices the report lists: those judged ``health`` (healthy, unhealthy,
    unknown; None: all), in ``device_order``, the page after ``after`` of at most ``limit``."""

    health: str | None = None
    after: Key | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Judged:
    """The field a filter matches, judged: what a report and each page of it is made from."""

    gateways: list[GatewayHealthView]
    devices: list[tuple[DeviceFacts, Assessment]]
    """In ``device_order``: unhealthy first, then district, grid cell, id."""
    problems: list[HealthProblem]
    summary: HealthSummary
    nothing: NothingMatches | None
    lists: dict[str | None, tuple[list[tuple[DeviceFacts, Assessment]], list[Key]]] = field(
        default_factory=dict
    )
    """The devices judged so (None: all) and their keys, made once per judgement: a page of a
    100,000-device field is then a bisection, not a pass over the field."""
    whole: dict[str, Any] = field(default_factory=dict)
    """The report but for its devices and centre, as JSON, made once per judgement (its
    problems name every unhealthy device: 100,000 ids to write out)."""

    def report(self) -> dict[str, Any]:
        if not self.whole:
            report = HealthReport(healthy=None if self.nothing else not self.problems,
                                  nothing_matches=self.nothing, unhealthy=len(self.problems),
                                  summary=self.summary, problems=self.problems, devices=[],
                                  gateways=self.gateways)  # fmt: skip
            self.whole.update(report.model_dump(mode="json", exclude={"devices", "centre"}))
        return self.whole

    def listed(self, health: str | None) -> tuple[list[tuple[DeviceFacts, Assessment]], list[Key]]:
        if health not in self.lists:
            chosen = [(d, a) for d, a in self.devices if health is None or judged_as(a) == health]
            self.lists[health] = (chosen, [_listed_order(x) for x in chosen])
        return self.lists[health]


class Judgements:
    """Each filter's judged field, reused for as long as judging it took, then served stale
    while the next judgement is made (and shared by the requests that arrive meanwhile). A
    field of a few hundred devices is judged anew for every request; one of 100,000 takes
    seconds of CPU (docs/central.md, "Scaling"), and a crew walking its pages, or fifty of them
    opening the view at once, must not make the registry judge it again for each, nor wait for
    it: at most about half of a core goes to judging, and only the first request of a filter
    waits. A report is as old as the judging before it took, at most (plus the one running)."""

    FORGET_S = 600.0
    """A filter not asked for this long is forgotten (its judgement holds every device)."""
    STALE_AFTER_S = 1.0
    """Only a field that takes longer than this to judge is served stale meanwhile: a small
    one is judged again while the request waits, so a change shows in the next answer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._done: dict[Hashable, tuple[float, float, Judged]] = {}
        """key -> (fresh until, how long judging took, the judgement)"""
        self._running: dict[Hashable, asyncio.Task[Judged]] = {}

    async def get(self, key: Hashable, judge: Callable[[], Awaitable[Judged]]) -> Judged:
        now = self._clock()
        self._done = {k: v for k, v in self._done.items() if v[0] + self.FORGET_S > now}
        done = self._done.get(key)
        if done is not None and now < done[0]:
            return done[2]
        task = self._running.get(key)
        if task is None:
            task = self._running[key] = asyncio.create_task(self._judge(key, judge))
        if done is not None and done[1] > self.STALE_AFTER_S:
            return done[2]  # stale while the next is judged: nobody waits twice
        return await asyncio.shield(task)  # one request leaving does not stop the others'

    async def _judge(self, key: Hashable, judge: Callable[[], Awaitable[Judged]]) -> Judged:
        try:
            start = self._clock()
            judged = await judge()
            end = self._clock()
            self._done[key] = (end + (end - start), end - start, judged)
            return judged
        finally:
            del self._running[key]


async def health_report(
    store: RegistryStore, f: HealthFilter, now: int, policy: Policy | None = None,
    centre: Stall | None = None, listing: Listing = Listing(),
    judgements: Judgements | None = None,
) -> tuple[dict[str, Any], int, Key | None]:  # fmt: skip
    """The report (``HealthReport``'s shape as JSON, without ``centre``); ``centre``: since
    when, and why, the centre has not been ingesting (``centre.stall``). Every device the
    filter matches is judged (the problems and the summary need them all), by ``judgements``
    when given (reused while fresh); only the listed page becomes views. Also returns how many
    devices ``listing`` picks on all pages, and the key to go on after (None: the last page)."""
    if f.gateway is not None:
        await _known_gateway(store, f.gateway)

    async def judge() -> Judged:
        return await _judge(store, f, now, policy, centre)

    j = await (judge() if judgements is None else judgements.get((f, centre, policy), judge))
    listed, keys = j.listed(listing.health)
    page, nxt = sliced(listed, keys, listing.after, listing.limit)
    devices = [_device_view(d, a).model_dump(mode="json") for d, a in page]
    return {**j.report(), "devices": devices}, len(listed), nxt


async def _judge(
    store: RegistryStore, f: HealthFilter, now: int, policy: Policy | None, centre: Stall | None
) -> Judged:
    gws, facts = await _facts(store, f)
    # judging 100,000 devices is seconds of CPU: in a thread, so that the event loop keeps
    # answering the lists and lookups meanwhile (they share the GIL, not a queue)
    judged = await asyncio.to_thread(_judged, f, gws, facts, now, policy, centre)
    if not judged.summary.devices and not judged.summary.gateways:  # the filters matched none
        judged = dataclasses.replace(judged, nothing=await _nothing_matches(store, f))
    return judged


def _judged(
    f: HealthFilter, gws: dict[str, GatewayFacts], facts: Callable[[], list[DeviceFacts]],
    now: int, policy: Policy | None, centre: Stall | None,
) -> Judged:  # fmt: skip
    devices = facts()
    if f.district or f.grid or f.profile or f.street or f.q:
        # gateways only as far as the listed devices use them
        used = {d.gateway for d in devices}
        gws = {k: g for k, g in gws.items() if k in used}
    judged_gws = [(g, health.assess_gateway(g, now, policy, centre)) for g in gws.values()]
    judged = [(d, health.assess_device(d, now, policy, centre)) for d in devices]
    grouped = health.group_problems(judged_gws, judged, centre)
    gw_views = [_gateway_view(g, a) for g, a in judged_gws]
    summary = HealthSummary(
        devices=len(judged), gateways=len(gw_views),
        devices_unhealthy=sum(not a.healthy and a.status is not Status.UNKNOWN for _, a in judged),
        gateways_unhealthy=sum(not g.healthy and g.status != "unknown" for g in gw_views),
        devices_unknown=sum(a.status is Status.UNKNOWN for _, a in judged),
        gateways_unknown=sum(g.status == "unknown" for g in gw_views),
    )  # fmt: skip
    if f.unhealthy_only:
        judged = [(d, a) for d, a in judged if not a.healthy]
        gw_views = [g for g in gw_views if not g.healthy]
    judged.sort(key=_listed_order)
    gw_views.sort(key=lambda g: (g.healthy, g.id))
    return Judged(gw_views, judged, [_problem_view(p) for p in grouped], summary, None)


def judged_as(a: Assessment) -> str:
    """healthy, unhealthy or unknown (not ingesting: the centre cannot tell)."""
    return "unknown" if a.status is Status.UNKNOWN else "healthy" if a.healthy else "unhealthy"


def _listed_order(judged: tuple[DeviceFacts, Assessment]) -> tuple[int, str, str, str]:
    d, a = judged
    return (int(a.healthy), d.district, d.grid, d.id)


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
    given = {k: v for k, v in (("district", f.district), ("street", f.street), ("grid", f.grid),
                               ("profile", f.profile), ("q", f.q)) if v is not None}  # fmt: skip
    if not given:
        return None  # the whole field is empty: a new registry, nothing was filtered away
    columns = {"district": Site.district_id, "street": Site.street, "grid": Site.grid,
               "profile": Device.profile}  # fmt: skip
    known: dict[str, list[str]] = {"q": []} if f.q else {}  # ids are not listed
    async with store.transaction() as s:
        for name in (n for n in given if n in columns):
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
) -> tuple[dict[str, GatewayFacts], Callable[[], list[DeviceFacts]]]:
    # columns, not ORM objects: at 100,000 devices the objects cost more than the judging
    q = (
        select(Device.id, Device.gateway_id, Device.name, Device.profile, Device.firmware,
               Device.last_seen, Device.first_seen, Device.health, Site.district_id, Site.grid,
               DeviceInfo.profile, DeviceInfo.interval_s, DeviceInfo.firmware)
        .outerjoin(Site, Site.id == Device.site_id)
        .outerjoin(DeviceInfo, DeviceInfo.device_id == Device.id)
        .outerjoin(Gateway, Gateway.id == Device.gateway_id)
        .where(Device.retired_at.is_(None), Gateway.retired_at.is_(None))
        .order_by(Device.id)
    )  # fmt: skip
    for column, value in ((Site.district_id, f.district), (Site.grid, f.grid),
                          (Device.gateway_id, f.gateway), (Site.street, f.street)):  # fmt: skip
        if value is not None:
            q = q.where(column == value)
    if f.q:
        q = q.where(Device.id.ilike(like(f.q), escape="\\"))
    async with store.transaction() as s:
        gws = await _gateways(s, f.gateway)
    async with store.read() as conn:
        rows = (await conn.execute(q)).all()
        levels = await _levels(conn, [r[0] for r in rows])
    # the facts are made in the judging thread (``_judged``): 100,000 of them take a while
    return gws, functools.partial(_made, f, gws, rows, levels)


def _made(
    f: HealthFilter, gws: dict[str, GatewayFacts], rows: Sequence[Any],
    levels: dict[str, dict[str, tuple[Any, str]]],
) -> list[DeviceFacts]:  # fmt: skip
    offsets = {k: _offset(g) for k, g in gws.items()}
    devices = [_device_facts(r, gws.get(r[1]), offsets.get(r[1], 0), levels.get(r[0], {}))
               for r in rows]  # fmt: skip
    if f.profile is not None:
        devices = [d for d in devices if d.profile == f.profile]
    return devices


def _offset(g: GatewayFacts) -> int:
    if g.report is None:
        return 0
    return health.clock_offset_ms(g.report.get("ts"), g.received_at)


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


async def _levels(conn: Any, ids: list[str]) -> dict[str, dict[str, tuple[Any, str]]]:
    r = LatestReading
    out: dict[str, dict[str, tuple[Any, str]]] = {}
    for i in range(0, len(ids), 500):
        q = select(r.device_id, r.point, r.value, r.unit).where(
            r.device_id.in_(ids[i : i + 500]), r.point.in_(LEVEL_POINTS), r.quality == "good"
        )
        for device_id, point, value, unit in await conn.execute(q):
            out.setdefault(device_id, {})[point] = (value, unit)
    return out


def _device_facts(
    row: Any, gw: GatewayFacts | None, offset: int, values: dict[str, tuple[Any, str]]
) -> DeviceFacts:
    (id_, gateway, name, own_profile, own_firmware, last_seen, first_seen, report, district,
     grid, born_profile, interval_s, born_firmware) = row  # fmt: skip
    profile = born_profile or own_profile or ""
    known = _profiles().get(profile)
    interval = interval_s or (known[0] if known else None)
    return DeviceFacts(
        id=id_, gateway=gateway, device=name, district=district or "", grid=grid or "",
        profile=profile, interval_s=interval, push=bool(known and known[1]),
        firmware=born_firmware or own_firmware or "", last_seen=last_seen, first_seen=first_seen,
        gateway_online=gw.online if gw else True, gateway_died_at=gw.died_at if gw else None,
        gateway_connected_once=gw.connected_once if gw else True,
        clock_offset_ms=offset, report=report, values=values,
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
