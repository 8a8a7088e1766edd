"""The registry store: what the bridge writes and the API reads, over SQLAlchemy async.

One class, the same code on SQLite and PostgreSQL; only the upsert construct is per dialect.
Every public method converts SQLAlchemy/driver errors into ``StoreUnavailable`` (an outage:
retry later) or ``StoreRejected`` (the database refused this statement), as ``faults.py`` judges
them by SQLSTATE and type.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import Select, and_, case, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from device_registry.alerts.operations import AlertOperations, Policy
from device_registry.alerts.views import AlertView
from device_registry.alerts.views import alert as alert_view
from device_registry.db import migrate
from device_registry.db.engine import make_engine, upsert
from device_registry.db.faults import Fault, classify
from device_registry.db.pages import Key, Page, like
from device_registry.db.tables import (
    Alert,
    AlertTransition,
    Base,
    Device,
    DeviceInfo,
    Gateway,
    GatewayHealthRow,
    LatestReading,
    Quarantined,
    SeenMessage,
    SeqAudit,
    Site,
    device_key,
)
from device_registry.errors import Ambiguous, NotFound, StoreRejected, StoreUnavailable
from device_registry.ingest.changes import Changes, DeviceFacts
from device_registry.ingest.seqaudit import AuditState, Gap, Span, fill, holes, plan_audit
from device_registry.ingest.views import QuarantineView, quarantined
from device_registry.inventory import views
from device_registry.inventory.places import (
    coordinates,
    place_key,
    resolve_site,
    resolve_sites,
    shared_place,
)
from device_registry.inventory.views import DeviceView, GatewayView
from gridwatch.ground.contract import AlertEvent, AlertState, Birth, Death, GatewayHealth, Location
from gridwatch.ground.profiles import (
    ModbusProfile,
    MqttProfile,
    Point,
    load_profiles,
    point_decimals,
)

logger = logging.getLogger(__name__)

_ID_CHUNK = 500  # bound on ids in one IN (...) list: SQLite's variable limit, PG's plan size


@functools.cache
def _shipped_profiles() -> Mapping[str, ModbusProfile | MqttProfile]:
    """The profiles gridwatch ships: what a registry knows where no installer wiring gave it
    its own (``RegistryStore.profiles``), as in a bridge running alone."""
    # imported here: the gateway config models are not otherwise part of a bridge's start
    from gridwatch.ground.gatewayconf import default_profiles_dir

    return load_profiles(default_profiles_dir())


class RegistryStore:
    def __init__(self, engine: AsyncEngine, policy: Policy | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self.ops = AlertOperations(policy)
        self.profiles: Callable[[], Mapping[str, ModbusProfile | MqttProfile]] | None = None
        """The device profiles the registry knows (set where installers are wired), for the
        decimals each point is shown with and the units of its time series; None: not known
        here (the time series then take the shipped profiles' units)."""
        """Alert lifecycle, incidents and the delivery feed (``alertops.py``)."""

    @classmethod
    async def open(cls, url: str, policy: Policy | None = None) -> RegistryStore:
        """Connect and upgrade the schema to the newest migration (``migrate.py``); ``policy``:
        what alert operations decide by (the catalogue, a drill's time-limit scale)."""
        store = cls(make_engine(url), policy)
        async with store._errors(), store.engine.begin() as conn:
            await conn.run_sync(migrate.upgrade)
        logger.info(
            "registry store open: %s", store.engine.url.render_as_string(hide_password=True)
        )
        return store

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Database errors as ours: an outage (``StoreUnavailable``: retry later) or a refusal
        (``StoreRejected``), judged by SQLSTATE and type in ``faults.py``, each in one line."""
        try:
            yield
        except (SQLAlchemyError, OSError, TimeoutError, OverflowError) as exc:
            # OverflowError: sqlite3 binds an int beyond 64 bits this way, unwrapped
            verdict = classify(exc)
            if verdict.fault is Fault.OUTAGE:
                raise StoreUnavailable(
                    f"{self.dialect} database unavailable: {verdict.reason}"
                ) from exc
            raise StoreRejected(f"{self.dialect} refused: {verdict.reason}") from exc

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncSession]:
        async with self._errors(), self._sessions.begin() as session:
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reading columns: no ORM session, no objects (the lists' hot path,
        the health report's facts); database errors as everywhere in the store."""
        async with self._errors(), self.engine.connect() as conn:
            yield conn

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One transaction for the registry's other modules (registration, tokens, audit);
        database errors become ``StoreUnavailable`` as everywhere in the store."""
        return self._tx()

    # ---- what the bridge calls -------------------------------------------------------------

    async def seen(self, ids: Collection[str]) -> set[str]:
        """The subset of ``ids`` already ingested."""
        found: set[str] = set()
        ordered = list(ids)
        async with self._tx() as s:
            for i in range(0, len(ordered), _ID_CHUNK):
                chunk = ordered[i : i + _ID_CHUNK]
                rows = await s.scalars(select(SeenMessage.id).where(SeenMessage.id.in_(chunk)))
                found.update(rows)
        return found

    async def device_facts(self, pairs: Collection[tuple[str, str]]) -> DeviceFacts:
        """Who registered the devices named in ``pairs`` ((gateway, device)), where, and with
        which profile (the unit of each of its points)."""
        names = sorted({dev for _, dev in pairs})
        owners: dict[str, set[str]] = {}
        locations: dict[tuple[str, str], Location] = {}
        reported: dict[tuple[str, str], Location] = {}  # sited by a Birth, nobody registered it
        units: dict[tuple[str, str], Mapping[str, str]] = {}
        if self.profiles is None and not _shipped_profiles.cache_info().currsize:
            # once per process: a few hundred ms of YAML, which the alerts lane must not wait for
            await asyncio.to_thread(_shipped_profiles)
        point_units = self._point_units()
        q = (
            # its own coordinates, the site's only for a device that has none (a pair)
            select(Device.name, Device.gateway_id, Device.profile, Device.registered_at,
                   Site.district_id, Site.street, Site.grid,
                   case((Device.lat.is_(None) & Device.lon.is_(None), Site.lat),
                        else_=Device.lat),
                   case((Device.lat.is_(None) & Device.lon.is_(None), Site.lon),
                        else_=Device.lon))
            .outerjoin(Site, Site.id == Device.site_id)
            .where(Device.retired_at.is_(None))
        )  # fmt: skip
        async with self._tx() as s:
            for i in range(0, len(names), _ID_CHUNK):
                chunk = names[i : i + _ID_CHUNK]
                for (
                    name,
                    gw,
                    profile,
                    registered,
                    district,
                    street,
                    grid,
                    lat,
                    lon,
                ) in await s.execute(q.where(Device.name.in_(chunk))):
                    place = None if district is None else Location(
                        district=district, street=street, grid=grid, lat=lat, lon=lon
                    )  # fmt: skip
                    if registered is None:
                        if place is not None:
                            reported[(gw, name)] = place
                        continue
                    owners.setdefault(name, set()).add(gw)
                    if place is not None:
                        locations[(gw, name)] = place
                    known = point_units(profile)
                    if known is not None:
                        units[(gw, name)] = known
        return DeviceFacts({k: frozenset(v) for k, v in owners.items()}, locations, units, reported)

    def _point_units(self) -> Callable[[str | None], Mapping[str, str] | None]:
        """Profile id -> the unit of each of its points (None: a profile the registry does not
        know), one mapping per profile however many devices use it."""
        profiles = self.profiles() if self.profiles is not None else _shipped_profiles()
        found: dict[str, Mapping[str, str]] = {}

        def units(profile: str | None) -> Mapping[str, str] | None:
            if profile is None or profile not in profiles:
                return None
            if profile not in found:
                points: Mapping[str, Point] = profiles[profile].points
                found[profile] = {name: point.unit for name, point in points.items()}
            return found[profile]

        return units

    async def apply(self, ch: Changes, device_limit: int | None = None) -> dict[str, int]:
        """Write one ingest step atomically: a crash leaves all of it or none.

        ``device_limit``: devices a gateway may add by naming them (installers' registrations
        do not count); the new devices beyond it are not added, nor their last values. Returns
        how many were refused, by gateway."""
        async with self._tx() as s:
            ch, refused = await self._admit_devices(s, ch, device_limit)
            await self._touch_gateways(s, ch)
            await self._upsert_devices(s, ch)
            await self._upsert_latest(s, ch)
            for msg in ch.status:
                await self._apply_status(s, msg, ch.now)
            await self._apply_alerts(s, ch.alerts, ch.now)
            births = [m for m in ch.status if isinstance(m, Birth)]
            fed = await self.ops.on_ingest(s, ch.alerts, births, ch.now)
            for report in ch.health:
                await self._apply_health(s, report, ch.now)
            await self._record(s, ch)
        if fed:
            self.ops.fed()
        return refused

    async def prune(self, now: int, seen_max_age_ms: int, quarantine_keep: int) -> int:
        """Forget dedupe ids older than the redelivery window; keep the newest quarantine rows."""
        async with self._tx() as s:
            gone = await s.execute(
                delete(SeenMessage).where(SeenMessage.received_at < now - seen_max_age_ms)
            )
            newest = await s.scalar(select(func.max(Quarantined.id)))
            if newest is not None:
                await s.execute(
                    delete(Quarantined).where(Quarantined.id <= newest - quarantine_keep)
                )
        count: int = getattr(gone, "rowcount", 0) or 0
        return count

    async def audit_sequences(self, since: int, settled_before: int) -> list[Gap]:
        """Gaps in the streams whose messages (received in [since, settled_before)) have
        settled, each reported by exactly one caller however many bridges audit at once."""
        m = SeenMessage
        settled = (
            select(m.gateway, m.stream, m.session, func.min(m.seq), func.max(m.seq))
            .where(m.stream.is_not(None), m.received_at >= since, m.received_at < settled_before)
            .group_by(m.gateway, m.stream, m.session)
        )
        async with self._tx() as s:
            rows = (await s.execute(settled)).all()
        spans: dict[tuple[str, str], list[Span]] = {}
        for gw, stream, session, lo, hi in rows:
            span = Span(int(session or 0), int(lo or 0), int(hi or 0))
            spans.setdefault((gw, str(stream)), []).append(span)
        gaps = []
        for (gw, stream), found in sorted(spans.items()):
            gap = await self._audit_stream(gw, stream, found, settled_before)
            if gap is not None:
                gaps.append(gap)
        return gaps

    async def _audit_stream(self, gw: str, stream: str, spans: list[Span], now: int) -> Gap | None:
        m = SeenMessage
        async with self._tx() as s:
            row = await s.get(SeqAudit, (gw, stream))
            state = AuditState(row.session, row.through) if row is not None else None
            step = plan_audit(state, spans)
            if step is None:
                return None
            seen = await s.scalars(
                select(m.seq).distinct().where(
                    m.gateway == gw, m.stream == stream, m.session >= step.session,
                    m.seq > step.lo, m.seq <= step.hi,
                )
            )  # fmt: skip
            runs = holes(step.lo, step.hi, [int(q) for q in seen if q is not None])
            missing = sum(last - first + 1 for first, last in runs)
            new = {"session": step.state.session, "through": step.state.through,
                   "audited_at": now}  # fmt: skip
            if row is None:  # first audit of the stream: whoever inserts first owns it
                claim = await s.execute(
                    self._insert(SeqAudit).on_conflict_do_nothing(),
                    [{"gateway": gw, "stream": stream, "missing": missing, **new}],
                )
            else:  # only if no other bridge moved it meanwhile
                claim = await s.execute(
                    update(SeqAudit)
                    .where(SeqAudit.gateway == gw, SeqAudit.stream == stream,
                           SeqAudit.session == row.session, SeqAudit.through == row.through)
                    .values(missing=SeqAudit.missing + missing, **new)
                )  # fmt: skip
            if not getattr(claim, "rowcount", 0):
                return None
        return Gap(gw, stream, step.lo, step.hi, runs, step.session) if runs else None

    async def withdraw_filled(self, gap: Gap) -> tuple[Gap | None, list[int]]:
        """The numbers of ``gap``'s holes that have arrived since it was reported, withdrawn
        from the stream's stored count of missing numbers in the same transaction; and the gap
        with what is still missing (None: every hole is filled). Only the member that reported
        the gap asks, once per number, so nothing is withdrawn twice."""
        m = SeenMessage
        lo, hi = gap.holes[0][0], gap.holes[-1][1]
        async with self._tx() as s:
            seen = await s.scalars(
                select(m.seq).distinct().where(
                    m.gateway == gap.gateway, m.stream == gap.stream, m.session >= gap.session,
                    m.seq >= lo, m.seq <= hi,
                )
            )  # fmt: skip
            left, filled = fill(gap.holes, [int(q) for q in seen if q is not None])
            if filled:
                await s.execute(
                    update(SeqAudit)
                    .where(SeqAudit.gateway == gap.gateway, SeqAudit.stream == gap.stream)
                    .values(missing=SeqAudit.missing - len(filled))
                )
        return (dataclasses.replace(gap, holes=left) if left else None), filled

    # ---- the pieces of apply ---------------------------------------------------------------

    def _insert(self, model: type[Base]) -> Any:
        return upsert(self.dialect, model)

    async def _admit_devices(
        self, s: AsyncSession, ch: Changes, limit: int | None
    ) -> tuple[Changes, dict[str, int]]:
        """``ch`` without the new devices beyond each gateway's limit (a copy: a retry after an
        outage applies the same ``ch`` again), and how many were refused per gateway."""
        births = [m for m in ch.status if isinstance(m, Birth)]
        named = set(ch.device_seen) | {(b.gateway, d) for b in births for d in b.devices}
        if limit is None or not named:
            return ch, {}
        keys = sorted(device_key(gw, dev) for gw, dev in named)
        known: set[str] = set()
        for i in range(0, len(keys), _ID_CHUNK):
            chunk = keys[i : i + _ID_CHUNK]
            known.update(await s.scalars(select(Device.id).where(Device.id.in_(chunk))))
        new = sorted(p for p in named if device_key(*p) not in known)
        if not new:
            return ch, {}
        gws = {gw for gw, _ in new}
        q = (
            select(Device.gateway_id, func.count())
            .where(Device.gateway_id.in_(gws), Device.registered_at.is_(None))
            .group_by(Device.gateway_id)
        )
        room = {gw: limit for gw in gws}
        for gw, n in await s.execute(q):
            room[gw] = limit - n
        dropped: set[tuple[str, str]] = set()
        for gw, dev in new:
            if room[gw] > 0:
                room[gw] -= 1
            else:
                dropped.add((gw, dev))
        if not dropped:
            return ch, {}
        kept = dataclasses.replace(
            ch,
            device_seen={k: v for k, v in ch.device_seen.items() if k not in dropped},
            latest={k: r for k, r in ch.latest.items() if (k[0], k[1]) not in dropped},
            status=[_without(m, dropped) for m in ch.status],
        )
        return kept, dict(collections.Counter(gw for gw, _ in dropped))

    async def _touch_gateways(self, s: AsyncSession, ch: Changes) -> None:
        rows = [{"id": gw, "first_seen": ch.now, "last_seen": ch.now, "online": True}
                for gw in sorted(ch.gateways())]  # fmt: skip
        if rows:
            stmt = self._insert(Gateway)
            await s.execute(
                stmt.on_conflict_do_update(index_elements=["id"], set_={"last_seen": ch.now}),
                rows,
            )

    async def _upsert_devices(self, s: AsyncSession, ch: Changes) -> None:
        if not ch.device_seen:
            return
        gws = {gw for gw, _ in ch.device_seen}
        q = select(Gateway.id, Gateway.online).where(Gateway.id.in_(gws))
        online: dict[str, bool] = {gw: up for gw, up in await s.execute(q)}
        # a device of a gateway whose death was processed first (telemetry and status come on
        # separate sessions) stays stale: its status follows its gateway's life
        rows = [
            {"id": device_key(gw, dev), "gateway_id": gw, "name": dev, "first_seen": ch.now,
             "last_seen": seen, "status": "online" if online.get(gw, True) else "stale"}
            for (gw, dev), seen in sorted(ch.device_seen.items())
        ]  # fmt: skip
        stmt = self._insert(Device)
        new = stmt.excluded
        await s.execute(
            stmt.on_conflict_do_update(
                index_elements=["id"],
                set_={
                    "last_seen": _later(Device.last_seen, new.last_seen),
                    # a reading proves the device alive; a mere mention does not
                    "status": case(
                        (and_(new.last_seen.is_not(None), new.status == "online"), "online"),
                        else_=Device.status,
                    ),
                },
            ),
            rows,
        )

    async def _upsert_latest(self, s: AsyncSession, ch: Changes) -> None:
        rows = [
            {"device_id": device_key(gw, r.device), "point": r.point, "value": r.value,
             "unit": r.unit, "quality": str(r.quality), "ts": r.ts, "historical": r.historical}
            for (gw, _, _), r in ch.latest.items()
        ]  # fmt: skip
        if not rows:
            return
        stmt = self._insert(LatestReading)
        new = stmt.excluded
        await s.execute(
            stmt.on_conflict_do_update(
                index_elements=["device_id", "point"],
                set_={k: new[k] for k in ("value", "unit", "quality", "ts", "historical")},
                # a replayed (older) reading must not hide a newer one
                where=LatestReading.ts <= new.ts,
            ),
            rows,
        )

    async def cut_off(self, s: AsyncSession, gateway: str, now: int) -> None:
        """The registry itself cut the gateway's broker session (new credentials): its will is
        not published for a client the broker deletes, so mark it offline as a will would."""
        gw = await s.get(Gateway, gateway)
        if gw is not None and gw.online:
            await self._offline(s, gw, now)

    async def _offline(self, s: AsyncSession, gw: Gateway, now: int) -> None:
        """What a gateway's death means: offline since ``now``, its devices stale."""
        gw.online, gw.died_at = False, now
        await s.execute(update(Device).where(Device.gateway_id == gw.id).values(status="stale"))

    async def _apply_status(self, s: AsyncSession, msg: Birth | Death, now: int) -> None:
        gw = await s.get(Gateway, msg.gateway)
        # a message of an older session (a stale retained one, a late will) changes nothing
        if gw is None or msg.session < gw.session:
            return
        gw.session = msg.session
        if isinstance(msg, Death):
            await self._offline(s, gw, now)
            return
        gw.online, gw.born_at = True, msg.ts
        gw.software, gw.config_version = msg.software, msg.config_version
        if gw.registered_at is None and gw.site_id is None:
            await _site_from_birth(s, gw, msg)
        await s.flush()
        if msg.devices:  # a birth registers the devices it names
            rows = [
                {
                    "id": device_key(msg.gateway, d),
                    "gateway_id": msg.gateway,
                    "name": d,
                    "first_seen": now,
                }
                for d in msg.devices
            ]
            await s.execute(self._insert(Device).on_conflict_do_nothing(), rows)
        await s.execute(
            update(Device).where(Device.gateway_id == msg.gateway).values(status="online")
        )

    async def _apply_alerts(self, s: AsyncSession, events: Sequence[AlertEvent], now: int) -> None:
        if not events:
            return
        ids = {e.alert_id for e in events}
        known = {
            a.alert_id: a for a in await s.scalars(select(Alert).where(Alert.alert_id.in_(ids)))
        }
        # every place of the batch at once, in key order (places.py: no deadlock between bridges)
        sites = await resolve_sites(s, (e.location for e in events))
        for ev in events:
            row = known.get(ev.alert_id)
            if row is None:
                row = known[ev.alert_id] = _new_alert(ev)
                s.add(row)
            elif ev.ts >= row.updated_at:  # out-of-order replays don't roll the state back
                _advance_alert(row, ev)
            row.transitions += 1
            key = place_key(ev.location)
            if key is not None:
                await s.execute(
                    update(Device)
                    .where(Device.id == device_key(ev.gateway, ev.device))
                    .values(site_id=sites[key])
                )
            if coordinates(ev.location) != (None, None):
                # a device nobody registered is where its gateway says; a registered one's
                # coordinates are the installer's (the bridge put them on the alert already)
                await s.execute(
                    update(Device)
                    .where(Device.id == device_key(ev.gateway, ev.device),
                           Device.registered_at.is_(None))
                    .values(lat=ev.location.lat, lon=ev.location.lon)
                )  # fmt: skip
        await s.flush()
        rows = [{"msg_id": e.id, "alert_id": e.alert_id, "state": str(e.state), "ts": e.ts,
                 "value": e.value, "received_at": now} for e in events]  # fmt: skip
        await s.execute(self._insert(AlertTransition).on_conflict_do_nothing(), rows)

    async def _apply_health(self, s: AsyncSession, report: GatewayHealth, now: int) -> None:
        row = await s.get(GatewayHealthRow, report.gateway)
        if row is not None and row.ts > report.ts:
            return
        data = report.model_dump(mode="json")
        if row is None:
            s.add(
                GatewayHealthRow(
                    gateway_id=report.gateway, ts=report.ts, received_at=now, report=data
                )
            )
        else:
            row.ts, row.received_at, row.report = report.ts, now, data
        for dev in report.devices:
            await s.execute(
                update(Device)
                .where(Device.id == device_key(report.gateway, dev.device))
                .values(health=dev.model_dump(mode="json"))
            )

    async def _record(self, s: AsyncSession, ch: Changes) -> None:
        if ch.seen_ids:
            rows = [
                {"id": i, "gateway": m.gateway, "received_at": ch.now, "stream": m.stream or None,
                 "session": m.session, "seq": m.seq}
                for i, m in ch.seen_ids.items()
            ]  # fmt: skip
            await s.execute(self._insert(SeenMessage).on_conflict_do_nothing(), rows)
        if ch.quarantine:
            s.add_all(
                Quarantined(received_at=q.received_at, topic=q.topic, reason=q.reason,
                            detail=q.detail, payload=q.payload)
                for q in ch.quarantine
            )  # fmt: skip

    # ---- what the API reads ----------------------------------------------------------------

    async def ping(self) -> None:
        async with self._tx() as s:
            await s.execute(select(1))

    async def gateways(self) -> list[GatewayView]:
        counts = (
            select(Device.gateway_id, func.count().label("n"))
            .group_by(Device.gateway_id)
            .subquery()
        )
        q = (
            select(Gateway, counts.c.n, GatewayHealthRow.report)
            .outerjoin(counts, counts.c.gateway_id == Gateway.id)
            .outerjoin(GatewayHealthRow, GatewayHealthRow.gateway_id == Gateway.id)
            .order_by(Gateway.id)
        )
        async with self._tx() as s:
            return [views.gateway(gw, n or 0, report) for gw, n, report in await s.execute(q)]

    async def devices(
        self, gateway: str | None = None, district: str | None = None, *,
        grid: str | None = None, profile: str | None = None, status: str | None = None,
        retired: bool | None = None, limit: int | None = None, offset: int = 0,
    ) -> list[DeviceView]:  # fmt: skip
        """Filtered, in id order; ``retired=None`` lists retired and active devices alike. The
        API serves ``device_page``'s rows as they are; this validates them into views."""
        f = DeviceFilter(gateway=gateway, district=district, grid=grid, profile=profile,
                         status=status, retired=retired)  # fmt: skip
        page = await self.device_page(f, limit=limit, offset=offset, count=False)
        return [DeviceView.model_validate(row) for row in page.rows]

    async def device_page(
        self, f: DeviceFilter, *, limit: int | None = None, after: Key | None = None,
        offset: int = 0, total: int | None = None, count: bool = True,
    ) -> Page:  # fmt: skip
        """Devices matching ``f`` in id order, after the device ``after`` names, as dicts in
        ``DeviceView``'s shape (no per-row ORM object or model: this is the API's hot path);
        the page's ``total``: as given (the first page counted it), else counted if ``count``."""
        where = _device_filters(f)
        q = _device_columns().where(*where).order_by(Device.id)
        if after is not None:
            q = q.where(Device.id > after[0])
        if limit is not None:
            q = q.limit(limit + 1).offset(offset)
        async with self.read() as s:
            rows = (await s.execute(q)).all()
            more = limit is not None and len(rows) > limit
            rows = rows[:limit] if more else rows
            ids = [r[0] for r in rows]
            values = await _latest(s, ids)
            if total is None and count:
                total = int(await s.scalar(_joined(select(func.count()), f).where(*where)) or 0)
        found = [views.device_row(r, values.get(id_, {})) for r, id_ in zip(rows, ids, strict=True)]
        return Page(found, len(found) if total is None else total, (ids[-1],) if more else None)

    async def device_row(self, key: str) -> dict[str, Any]:
        """One device by registry id ``gateway:device``, or by the bare device id when that is
        unique, in ``DeviceView``'s shape with its values' decimals and its active alerts."""
        column = Device.id if ":" in key else Device.name
        async with self.read() as s:
            rows = (await s.execute(_device_columns().where(column == key).limit(2))).all()
            if not rows:
                raise NotFound("device", key)
            if len(rows) > 1:
                names = (await s.scalars(select(Device.id).where(column == key))).all()
                raise Ambiguous(key, sorted(names))
            [r] = rows
            values = (await _latest(s, [r.id])).get(r.id, {})
            q = (
                select(*_ALERT_COLUMNS)
                .where(Alert.device_id == r.id, Alert.state != AlertState.CLEARED.value)
                .order_by(Alert.raised_at)
            )
            active = [dict(a._mapping) for a in await s.execute(q)]
        found = views.device_row(r, values, active)
        self._with_decimals(found)
        return found

    async def device(self, key: str) -> DeviceView:
        """``device_row`` as a view, for callers in the process."""
        return DeviceView.model_validate(await self.device_row(key))

    def _with_decimals(self, row: dict[str, Any]) -> None:
        """Each value's decimals from the device's profile: the installer's if registered, else
        the one its gateway's birth named (the view's ``profile``)."""
        if self.profiles is None or not row["values"]:
            return
        profile = self.profiles().get(row["profile"] or "")
        if profile is None:
            return
        points: Mapping[str, Point] = profile.points
        for name, value in row["values"].items():
            point = points.get(name)
            value["decimals"] = None if point is None else point_decimals(point)

    async def alerts(self, active_only: bool = True, limit: int = 1000) -> list[AlertView]:
        q = select(Alert).order_by(Alert.updated_at.desc()).limit(limit)
        if active_only:
            q = q.where(Alert.state != AlertState.CLEARED.value)
        async with self._tx() as s:
            return [alert_view(a) for a in await s.scalars(q)]

    async def quarantine(self, limit: int = 100) -> list[QuarantineView]:
        q = select(Quarantined).order_by(Quarantined.id.desc()).limit(limit)
        async with self._tx() as s:
            return [quarantined(r) for r in await s.scalars(q)]


async def _site_from_birth(s: AsyncSession, gw: Gateway, msg: Birth) -> None:
    """A gateway nobody registered stands where its devices say they are (the edge gives a
    device without a location of its own the cabinet's): where they all agree."""
    named = set(msg.devices)
    locs = [i.location for i in msg.device_info if i.location is not None and i.device in named]
    place, agreed = shared_place(locs)
    gw.site_id = await resolve_site(s, place)
    if not agreed:
        where = sorted({_shown(loc) for loc in locs})
        logger.warning("gateway %s connected unregistered; its devices are in %d places (%s): "
                       "sited at what they share (%s); register it with its location",
                       gw.id, len(where), ", ".join(where[:5]), _shown(place))  # fmt: skip


def _shown(loc: Location) -> str:
    return "/".join(x for x in (loc.district, loc.street, loc.grid) if x) or "nowhere"


def _without(msg: Birth | Death, dropped: set[tuple[str, str]]) -> Birth | Death:
    if isinstance(msg, Death) or not any((msg.gateway, d) in dropped for d in msg.devices):
        return msg
    devices = [d for d in msg.devices if (msg.gateway, d) not in dropped]
    return msg.model_copy(update={"devices": devices})


def _later(current: Any, new: Any) -> ColumnElement[Any]:
    return case((current.is_(None), new), (new > current, new), else_=current)


def _new_alert(ev: AlertEvent) -> Alert:
    row = Alert(
        alert_id=ev.alert_id, gateway_id=ev.gateway, device_id=device_key(ev.gateway, ev.device),
        point=ev.point, rule=ev.rule, category=ev.category, severity=str(ev.severity),
        district=ev.location.district, grid=ev.location.grid,
        location=ev.location.model_dump(mode="json"), raised_at=ev.raised_at, transitions=0,
    )  # fmt: skip
    _advance_alert(row, ev)
    return row


def _advance_alert(row: Alert, ev: AlertEvent) -> None:
    row.state, row.severity = str(ev.state), str(ev.severity)
    row.value, row.peak, row.threshold = ev.value, ev.peak, ev.threshold
    row.unit, row.message, row.updated_at = ev.unit, ev.message, ev.ts
    row.cleared_at = ev.ts if ev.state is AlertState.CLEARED else None


@dataclasses.dataclass(frozen=True)
class DeviceFilter:
    """What a device list is narrowed to; None: any. ``q``: part of the registry id
    (``gateway:device``), any case."""

    gateway: str | None = None
    district: str | None = None
    street: str | None = None
    grid: str | None = None
    profile: str | None = None
    status: str | None = None
    retired: bool | None = None
    q: str | None = None


def _device_columns() -> Select[Any]:
    """A device's columns, its site's and the profile its gateway's birth named: one row each,
    in the order ``views.device_row`` unpacks (built once: a statement is immutable)."""
    return _DEVICE_COLUMNS


def _build_device_columns() -> Select[Any]:
    return _joined(
        select(
            Device.id, Device.gateway_id.label("gateway"), Device.name.label("device"),
            Device.status, Site.district_id.label("district"), Site.grid, Site.street,
            Device.first_seen, Device.last_seen, Device.health, Device.registered_at,
            Device.retired_at, Device.profile, DeviceInfo.profile.label("born"), Device.bus,
            Device.unit_id, Device.address, Device.lat, Device.lon,
            Site.lat.label("site_lat"), Site.lon.label("site_lon"), Device.install_date,
            Device.firmware, Device.labels, Device.component_id, Device.dept_competent_code,
            Device.dept_competent_name, Device.dept_owner_code, Device.dept_owner_name,
            Device.dept_maintainer_code, Device.dept_maintainer_name,
        ),
        None,
    )  # fmt: skip


def _joined(q: Select[Any], f: DeviceFilter | None) -> Select[Any]:
    """``q`` from the devices, with the site and birth profile joined (``f`` None), or only
    the site when ``f`` filters by place: a count by gateway alone reads one index, a count by
    place and profile the covering index ``ix_devices_site`` (migration r0009_i14_api)."""
    q = q.select_from(Device)
    if f is None or f.district is not None or f.street is not None or f.grid is not None:
        q = q.outerjoin(Site, Site.id == Device.site_id)
    if f is None:
        q = q.outerjoin(DeviceInfo, DeviceInfo.device_id == Device.id)
    return q


_DEVICE_COLUMNS = _build_device_columns()


def _device_filters(f: DeviceFilter) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    for column, value in ((Device.gateway_id, f.gateway), (Site.district_id, f.district),
                          (Site.street, f.street), (Site.grid, f.grid),
                          (Device.status, f.status)):  # fmt: skip
        if value is not None:
            where.append(column == value)
    if f.profile is not None:  # the profile the view shows: the installer's, else the birth's
        unset = or_(Device.profile.is_(None), Device.profile == "")
        born = select(DeviceInfo.device_id).where(DeviceInfo.profile == f.profile)
        where.append(or_(Device.profile == f.profile, and_(unset, Device.id.in_(born))))
    if f.retired is not None:
        where.append(Device.retired_at.is_not(None) if f.retired else Device.retired_at.is_(None))
    if f.q:
        where.append(Device.id.ilike(like(f.q), escape="\\"))
    return where


async def _latest(s: AsyncConnection, ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Device id -> point -> its last value, in ``PointValue``'s shape (decimals not known)."""
    r = LatestReading
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for i in range(0, len(ids), _ID_CHUNK):
        q = select(r.device_id, r.point, r.value, r.unit, r.quality, r.ts, r.historical).where(
            r.device_id.in_(ids[i : i + _ID_CHUNK])
        )
        for dev, point, value, unit, quality, ts, historical in await s.execute(q):
            out.setdefault(dev, {})[point] = {
                "value": value, "unit": unit, "quality": quality, "ts": ts,
                "historical": bool(historical), "decimals": None,
            }  # fmt: skip
    return out


_ALERT_COLUMNS = (Alert.alert_id, Alert.category, Alert.severity, Alert.point, Alert.message,
                  Alert.value, Alert.unit, Alert.raised_at)  # fmt: skip
"""A device's active alert, in ``DeviceAlert``'s shape."""
