"""What installers register: gateways and devices, created, changed and retired.

Every change that alters a gateway's config bumps its desired config version in the same
transaction, is validated by generating that config (``configgen``), and is written to the audit
log; after the commit the downlink publishes the new config. A gateway's broker access is granted
before its row is committed and revoked before it is retired, so the broker never lets in a
gateway the registry does not know, and a retired one is out the moment the call returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Table, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from device_registry.db.engine import upsert
from device_registry.db.store import RegistryStore
from device_registry.db.tables import (
    AuditEntry,
    Device,
    Gateway,
    GatewayHealthRow,
    Site,
    device_key,
)
from device_registry.errors import Conflict, Invalid, NotFound, RegistryError, StoreRejected
from device_registry.http.auth import Principal, audit_row
from device_registry.inventory import csvimport, views
from device_registry.inventory.components import DEPARTMENTS, Department
from device_registry.inventory.configgen import (
    ConfigProblems,
    DeviceSpec,
    Profiles,
    Uplink,
    document,
    initial_settings,
    validate,
)
from device_registry.inventory.csvimport import RowReport
from device_registry.inventory.places import (
    coordinates,
    located,
    resolve_site,
    resolve_sites,
)
from device_registry.inventory.provisioning import Account, username_for
from device_registry.inventory.requests import (
    BusPatch,
    DeviceCreate,
    DeviceFields,
    DevicePatch,
    GatewayCreate,
    GatewayPatch,
)
from device_registry.inventory.views import GatewayView
from gridwatch.ground.contract import ConfigAck, Location
from gridwatch.ground.gatewayconf import Bus
from gridwatch.ground.i18n import N_, _

logger = logging.getLogger(__name__)

_ALREADY = {"registered": N_("{thing} {key!r} is already registered"),
            "retired": N_("{thing} {key!r} is already retired")}  # fmt: skip
"""A registration refused because the id is taken, by what holds it (in the request's language:
``http/problems.py`` sets it before any handler runs)."""


class BrokerAccess(Protocol):
    """Gateways' credentials and confinement in the broker (``provisioning.py``)."""

    async def grant(self, account: Account, password: str, replace: bool) -> None: ...
    async def revoke(self, account: Account) -> None: ...


@dataclass
class Issued:
    gateway: GatewayView
    username: str
    password: str


@dataclass
class Changed:
    """Gateways whose config changed in a transaction: pushed after it commits."""

    gateways: set[str] = field(default_factory=set)


def _now() -> int:
    return time.time_ns() // 1_000_000


def new_password() -> str:
    return secrets.token_urlsafe(24)


class Registry:
    def __init__(
        self, store: RegistryStore, broker: BrokerAccess, uplink: Uplink,
        profiles: Callable[[], Profiles], pushed: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.store, self.broker, self.uplink = store, broker, uplink
        self.profiles, self.pushed = profiles, pushed

    # ---- gateways ------------------------------------------------------------------------

    async def add_gateway(self, req: GatewayCreate, by: Principal) -> Issued:
        async with self.store.transaction() as s:
            await self._refuse_registered_gateway(s, req.id)
        password, account = new_password(), Account(req.id, username_for(req.id))
        # BrokerUnavailable, Conflict (a foreign account; the same id registered at this moment
        # by another request): nothing was changed
        await self.broker.grant(account, password, replace=False)
        try:
            async with self.store.transaction() as s:
                await self._refuse_registered_gateway(s, req.id)
                gw = await s.get(Gateway, req.id) or _blank_gateway(s, req.id)
                gw.registered_at, gw.retired_at = _now(), None
                gw.name, gw.labels = req.name, req.labels
                gw.site_id = await resolve_site(s, req.location)
                gw.lat, gw.lon = coordinates(req.location)
                buses = [b.model_dump(mode="json") for b in req.buses]
                gw.settings = initial_settings(self.uplink, buses, req.id, account.username)
                gw.config_desired = max(gw.config_desired, gw.config_version) + 1
                await self._generate(s, gw)
                s.add(
                    audit_row(
                        by, "gateway.register", f"gateway:{req.id}", req.model_dump(mode="json")
                    )
                )
        except BaseException:
            await self.broker.revoke(account)  # no broker account without its registry row
            raise
        self.pushed(req.id)
        return Issued(await self.gateway(req.id), account.username, password)

    async def _refuse_registered_gateway(self, s: AsyncSession, gw_id: str) -> None:
        gw = await s.get(Gateway, gw_id)
        if gw is not None and gw.registered_at is not None:
            state = "retired" if gw.retired_at is not None else "registered"
            raise Conflict(_(_ALREADY[state]).format(thing=_("gateway"), key=gw_id))

    async def update_gateway(self, gw_id: str, req: GatewayPatch, by: Principal) -> GatewayView:
        async with self.store.transaction() as s:
            gw = await _live_gateway(s, gw_id)
            if req.name is not None:
                gw.name = req.name
            if req.labels is not None:
                gw.labels = req.labels
            if req.location is not None:
                gw.site_id = await resolve_site(s, req.location)
                gw.lat, gw.lon = coordinates(req.location)
            if req.buses is not None:
                settings = dict(gw.settings or {})
                settings["buses"] = [b.model_dump(mode="json") for b in req.buses]
                gw.settings = settings
            gw.config_desired += 1
            await self._generate(s, gw)
            s.add(
                audit_row(
                    by,
                    "gateway.update",
                    f"gateway:{gw_id}",
                    req.model_dump(mode="json", exclude_none=True),
                )
            )
        self.pushed(gw_id)
        return await self.gateway(gw_id)

    async def update_bus(
        self, gw_id: str, bus_id: str, req: BusPatch, by: Principal
    ) -> GatewayView:
        """Change one field bus of a live gateway (or add it, given its type), checked as the
        edge checks it and with the gateway's devices on it; a new config is pushed."""
        async with self.store.transaction() as s:
            gw = await _live_gateway(s, gw_id)
            settings = dict(gw.settings or {})
            buses = [dict(b) for b in settings.get("buses", [])]
            found = next((b for b in buses if b.get("id") == bus_id), None)
            change = req.model_dump(exclude_none=True)
            if found is None:
                if req.type is None:
                    have = ", ".join(repr(str(b.get("id"))) for b in buses) or "none"
                    raise Invalid([("type", f"gateway {gw_id!r} has no bus {bus_id!r} (its "
                                            f"buses: {have}): give its type to add it")])  # fmt: skip
                if not _BUS_ID.fullmatch(bus_id):
                    raise Invalid([("bus", f"a bus id is 1 to 128 letters, digits, '-', '_' or "
                                           f"'.' (got {bus_id[:40]!r})")])  # fmt: skip
                found = {"id": bus_id}
                buses.append(found)
            elif req.type is not None and req.type != found.get("type"):
                raise Invalid([("type", f"bus {bus_id!r} is {found.get('type')}: a bus keeps "
                                        "its type (add another bus instead)")])  # fmt: skip
            found.update(change)
            _check_bus(found)
            gw.settings = {**settings, "buses": buses}
            gw.config_desired += 1
            await self._generate(s, gw)
            s.add(audit_row(by, "gateway.bus", f"gateway:{gw_id}", {"bus": bus_id, **change}))
        self.pushed(gw_id)
        return await self.gateway(gw_id)

    async def rotate_credentials(self, gw_id: str, by: Principal) -> Issued:
        """A new broker password for a live gateway (a lost or leaked one). The old password
        stops working and the gateway's live session is cut at once; it comes back with the new
        one, which the answer holds, once."""
        async with self.store.transaction() as s:
            account = _account(await _live_gateway(s, gw_id))
        password = new_password()
        await self.broker.grant(account, password, replace=True)  # the session is cut
        async with self.store.transaction() as s:
            await _live_gateway(s, gw_id)
            await self.store.cut_off(s, gw_id, _now())
            s.add(audit_row(by, "gateway.credentials", f"gateway:{gw_id}", None))
        return Issued(await self.gateway(gw_id), account.username, password)

    async def retire_gateway(self, gw_id: str, by: Principal) -> GatewayView:
        async with self.store.transaction() as s:
            account = _account(await _live_gateway(s, gw_id))
        await self.broker.revoke(account)  # first: cut it off, even if the commit below fails
        now = _now()
        async with self.store.transaction() as s:
            gw = await _live_gateway(s, gw_id)
            gw.retired_at = now
            await s.execute(
                update(Device)
                .where(Device.gateway_id == gw_id, Device.retired_at.is_(None))
                .values(retired_at=now)
            )
            s.add(audit_row(by, "gateway.retire", f"gateway:{gw_id}", None))
        self.pushed(gw_id)  # clears its retained config
        return await self.gateway(gw_id)

    async def gateway(self, gw_id: str) -> GatewayView:
        found = await self.gateways(gw_id=gw_id)
        if not found:
            raise NotFound("gateway", gw_id)
        return found[0]

    async def gateways(
        self, district: str | None = None, online: bool | None = None,
        retired: bool | None = None, limit: int = 1000, offset: int = 0,
        gw_id: str | None = None,
    ) -> list[GatewayView]:  # fmt: skip
        counts = (
            select(Device.gateway_id, func.count().label("n"))
            .where(Device.retired_at.is_(None))
            .group_by(Device.gateway_id)
            .subquery()
        )
        q = (
            select(Gateway, counts.c.n, GatewayHealthRow.report, Site)
            .outerjoin(counts, counts.c.gateway_id == Gateway.id)
            .outerjoin(GatewayHealthRow, GatewayHealthRow.gateway_id == Gateway.id)
            .outerjoin(Site, Site.id == Gateway.site_id)
            .order_by(Gateway.id)
            .limit(limit)
            .offset(offset)
        )
        if gw_id is not None:
            q = q.where(Gateway.id == gw_id)
        if district is not None:
            q = q.where(Site.district_id == district)
        if online is not None:
            q = q.where(Gateway.online.is_(online))
        if retired is not None:
            q = q.where(
                Gateway.retired_at.is_not(None) if retired else Gateway.retired_at.is_(None)
            )
        async with self.store.transaction() as s:
            return [
                views.gateway(gw, n or 0, report, _shown(located(site, (gw.lat, gw.lon))))
                for gw, n, report, site in await s.execute(q)
            ]

    async def config_document(self, gw_id: str) -> dict[str, Any] | None:
        """The config the gateway should run now; None once it is retired."""
        async with self.store.transaction() as s:
            gw = await s.get(Gateway, gw_id)
            if gw is None or gw.registered_at is None:
                raise NotFound("gateway", gw_id)
            if gw.retired_at is not None:
                return None
            return await self._generate(s, gw)

    async def pending_pushes(self) -> list[str]:
        """Registered gateways whose newest config has not been acknowledged."""
        async with self.store.transaction() as s:
            rows = await s.scalars(
                select(Gateway.id).where(
                    Gateway.registered_at.is_not(None),
                    Gateway.config_acked < Gateway.config_desired,
                )
            )
            return list(rows)

    async def record_ack(self, ack: ConfigAck) -> None:
        async with self.store.transaction() as s:
            gw = await s.get(Gateway, ack.gateway)
            if gw is None or gw.registered_at is None or ack.version < gw.config_acked:
                return
            if ack.version > gw.config_desired:
                # a version never issued would make every later one look acknowledged already
                logger.warning("gateway %s acknowledged config v%d, which was never issued "
                               "(newest v%d): ignored", ack.gateway, ack.version,
                               gw.config_desired)  # fmt: skip
                return
            gw.config_acked, gw.config_accepted = ack.version, ack.accepted
            gw.config_errors = {"errors": ack.errors}
            gw.config_acked_at = _now()
        level = logging.INFO if ack.accepted else logging.WARNING
        logger.log(level, "gateway %s %s config v%d %s", ack.gateway,
                   "accepted" if ack.accepted else "rejected", ack.version, "; ".join(ack.errors))  # fmt: skip

    # ---- devices ---------------------------------------------------------------------------

    async def add_device(self, req: DeviceCreate, by: Principal) -> str:
        async with self.store.transaction() as s:
            key = await self._add_device(s, req, by)
        self.pushed(req.gateway)
        return key

    async def _add_device(self, s: AsyncSession, req: DeviceCreate, by: Principal) -> str:
        # locked: two registrations on one gateway at once must see each other's unit ids
        gw = await s.get(Gateway, req.gateway, with_for_update=True)
        if gw is None or gw.registered_at is None:
            raise Invalid(
                [("gateway", _("gateway {key!r} is not registered").format(key=req.gateway))]
            )
        if gw.retired_at is not None:
            raise Conflict(
                _("{thing} {key!r} is retired").format(thing=_("gateway"), key=req.gateway)
            )
        key = device_key(req.gateway, req.id)
        row = await _claim_device(s, self.store.dialect, req.gateway, req.id)
        if row.registered_at is not None:
            state = "retired" if row.retired_at is not None else "registered"
            raise Conflict(_(_ALREADY[state]).format(thing=_("device"), key=key))
        _refuse_unknown_bus(gw, req.bus)
        await _refuse_taken_slot(s, gw.id, req.id, req.bus, req.unit_id, req.address)
        row.registered_at = _now()
        _apply_fields(row, req)
        row.site_id = await resolve_site(s, req.location or Location())
        row.lat, row.lon = coordinates(req.location)
        await s.flush()
        gw.config_desired += 1
        await self._generate(s, gw, focus=req.id)
        s.add(audit_row(by, "device.register", f"device:{key}", req.model_dump(mode="json")))
        return key

    async def plan_import(
        self, rows: csvimport.Rows, unparsed: Sequence[RowReport] = ()
    ) -> ImportPlan:
        """Judge an import against the registry as it is now: read once, checked in memory.
        ``unparsed``: rows refused for malformed values, judged on their other cells."""
        named = {req.gateway for _, req in rows} | {r.cells.get("gateway", "") for r in unparsed}
        states = await self._import_states(named - {""})
        # CPU-bound for a big file (a second or two): off the event loop, so ingest and the
        # other requests go on meanwhile
        refused = await asyncio.to_thread(csvimport.judge, rows, states, self.profiles(), unparsed)
        return ImportPlan(rows, states, refused)

    async def import_devices(self, plan: ImportPlan, by: Principal) -> None:
        """Register the devices of a judged import, all or nothing, without holding the
        database for the whole import.

        The new rows are written first in chunks of ``IMPORT_CHUNK`` rows, one short transaction
        each, *unregistered* (as if their gateway had reported them): no config includes them
        yet, and an ingest or alert commit waits for one chunk at most. One last transaction
        then registers them all at once, adopts the devices the gateways had already reported,
        bumps each gateway's config version once and writes the audit (one ``device.import`` entry
        per gateway naming its devices: 50,000 entries of one device each held that transaction,
        and with it every ingest commit, for seconds); it first checks that no
        gateway changed since the import was judged (its config version is unchanged), so what
        was validated is what is committed. Should that check or any step fail (a change that
        raced the import, the database gone, the request cancelled at shutdown), the rows
        written so far are deleted again (``_staged`` finds them without a list of ids, in one
        statement per 500 gateways, quick enough for a shutdown) and nothing is imported; a
        crash in between leaves them unregistered, and importing the file again adopts them.
        A cancel lets the transaction under way finish first: one that lands in the last
        transaction leaves the import whole.
        """
        if plan.refused:
            raise ValueError("an import with refused rows cannot be applied")
        now = _now()
        adopt = [(ln, r) for ln, r in plan.rows if r.id in plan.states[r.gateway].unregistered]
        new = [(ln, r) for ln, r in plan.rows if r.id not in plan.states[r.gateway].unregistered]
        gateways = sorted(plan.states)
        try:
            for i in range(0, len(new), IMPORT_CHUNK):
                await _to_its_end(self._stage([r for _, r in new[i : i + IMPORT_CHUNK]], now))
            await _to_its_end(self._commit_import(plan, adopt, new, by, now))
        except BaseException:
            if new:
                await self._unstage(gateways, now)
            raise
        for gw in sorted(plan.states):
            self.pushed(gw)

    async def _commit_import(
        self, plan: ImportPlan, adopt: csvimport.Rows, new: csvimport.Rows, by: Principal,
        now: int,
    ) -> None:  # fmt: skip
        async with self.store.transaction() as s:
            await self._claim_gateways(s, plan.states)
            # rows the bridge created meanwhile (a Birth, a reading) were not staged: adopt them
            created = await _created_meanwhile(s, [device_key(r.gateway, r.id) for _, r in new],
                                               now)  # fmt: skip
            adopt = [*adopt, *((ln, r) for ln, r in new if device_key(r.gateway, r.id) in created)]
            await _register_staged(s, sorted(plan.states), now, len(new) - len(created))
            await _adopt(s, [r for _, r in adopt], await resolve_sites(s, _locs(adopt)), now)
            s.add_all(_import_audit(by, plan.rows))

    async def _import_states(self, gateways: set[str]) -> dict[str, csvimport.GatewayState]:
        ids = sorted(gateways)
        found: list[tuple[Gateway, Site | None]] = []
        devices: dict[str, list[tuple[Device, Site | None]]] = {}
        async with self.store.transaction() as s:
            for i in range(0, len(ids), _ID_CHUNK):
                chunk = ids[i : i + _ID_CHUNK]
                gws = select(Gateway, Site).outerjoin(Site, Site.id == Gateway.site_id)
                found.extend(
                    (gw, site) for gw, site in await s.execute(gws.where(Gateway.id.in_(chunk)))
                )
                devs = select(Device, Site).outerjoin(Site, Site.id == Device.site_id)
                for d, site in await s.execute(devs.where(Device.gateway_id.in_(chunk))):
                    devices.setdefault(d.gateway_id, []).append((d, site))
        return {gw.id: _gateway_state(gw, site, devices.get(gw.id, [])) for gw, site in found}

    async def _stage(self, chunk: Sequence[DeviceCreate], now: int) -> None:
        try:
            async with self.store.transaction() as s:
                sites = await resolve_sites(s, [r.location for r in chunk if r.location])
                values = [{**_device_values(r, sites), "id": device_key(r.gateway, r.id),
                           "gateway_id": r.gateway, "name": r.id, "first_seen": now,
                           "status": "new", "registered_at": None} for r in chunk]  # fmt: skip
                # a row the bridge created meanwhile stays as it is; the last step adopts it
                await s.execute(upsert(self.store.dialect, Device).on_conflict_do_nothing(), values)
        except StoreRejected as exc:  # a device of the file appeared meanwhile
            raise Conflict(f"devices of this file appeared while it was imported ({exc}); "
                           "nothing was imported: send the file again") from exc  # fmt: skip

    async def _claim_gateways(
        self, s: AsyncSession, states: dict[str, csvimport.GatewayState]
    ) -> None:
        """One config version more per gateway, refused if anything changed a gateway since
        the judgement (its version moved, it was retired). The UPDATE comes first so that
        SQLite takes its write lock at once; a refusal rolls it back."""
        ids = sorted(states)
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            await s.execute(
                update(Gateway)
                .where(Gateway.id.in_(chunk), Gateway.registered_at.is_not(None),
                       Gateway.retired_at.is_(None))
                .values(config_desired=Gateway.config_desired + 1)
            )  # fmt: skip
            live = (
                select(Gateway.id, Gateway.config_desired)
                .where(Gateway.id.in_(chunk), Gateway.registered_at.is_not(None),
                       Gateway.retired_at.is_(None))
            )  # fmt: skip
            now_at = {gw: version for gw, version in await s.execute(live)}
            for gw_id in chunk:
                if now_at.get(gw_id) != states[gw_id].config_desired + 1:
                    raise Conflict(f"gateway {gw_id!r} was changed while the file was "
                                   "imported; nothing was imported: send the file again")  # fmt: skip

    async def _unstage(self, gateways: list[str], stamp: int) -> None:
        """Best effort, one short transaction: rows that cannot go (the database is gone) stay
        unregistered, and importing the file again registers them."""
        try:
            async with self.store.transaction() as s:
                for i in range(0, len(gateways), _ID_CHUNK):
                    await s.execute(
                        delete(Device).where(_staged(gateways[i : i + _ID_CHUNK], stamp))
                    )
        except RegistryError as exc:
            logger.error("import: its unregistered devices were left behind: %s", exc)

    async def update_device(self, key: str, req: DevicePatch, by: Principal) -> str:
        async with self.store.transaction() as s:
            row, gw = await _live_device(s, key)
            if req.bus is not None:
                _refuse_unknown_bus(gw, req.bus)
            if (req.bus, req.unit_id, req.address) != (None, None, None):
                bus = req.bus or row.bus or ""
                unit = row.unit_id if req.unit_id is None else req.unit_id
                address = row.address if req.address is None else req.address
                await _refuse_taken_slot(s, gw.id, row.name, bus, unit, address)
            _apply_fields(row, req)
            if req.location is not None:
                row.site_id = await resolve_site(s, req.location)
                row.lat, row.lon = coordinates(req.location)
            gw.config_desired += 1
            await self._generate(s, gw, focus=row.name)
            s.add(
                audit_row(
                    by,
                    "device.update",
                    f"device:{row.id}",
                    req.model_dump(mode="json", exclude_none=True),
                )
            )
            gw_id = gw.id
        self.pushed(gw_id)
        return row.id

    async def retire_device(self, key: str, by: Principal) -> str:
        async with self.store.transaction() as s:
            row, gw = await _live_device(s, key)
            row.retired_at = _now()
            gw.config_desired += 1
            await self._generate(s, gw)
            s.add(audit_row(by, "device.retire", f"device:{row.id}", None))
            gw_id = gw.id
        self.pushed(gw_id)
        return row.id

    # ---- generation ------------------------------------------------------------------------

    async def _generate(
        self, s: AsyncSession, gw: Gateway, focus: str | None = None
    ) -> dict[str, Any]:
        """The gateway's config at its desired version; ``Invalid`` if it would not run, with
        the focus device's problems named by its own fields."""
        await s.flush()
        rows = await s.execute(
            select(Device, Site)
            .outerjoin(Site, Site.id == Device.site_id)
            .where(
                Device.gateway_id == gw.id,
                Device.registered_at.is_not(None),
                Device.retired_at.is_(None),
            )
        )
        specs = [
            DeviceSpec(
                d.name,
                d.profile or "",
                d.bus or "",
                d.unit_id,
                d.address or "",
                located(site, (d.lat, d.lon)),
            )
            for d, site in rows
        ]
        site = await s.get(Site, gw.site_id) if gw.site_id is not None else None
        doc = document(gw.id, located(site, (gw.lat, gw.lon)), gw.settings or {}, specs,
                       max(gw.config_desired, 1))  # fmt: skip
        try:
            validate(doc, self.profiles())
        except ConfigProblems as exc:
            raise Invalid(_focused(exc.problems, doc, focus)) from exc
        return doc


def _focused(
    problems: list[tuple[str, str]], doc: dict[str, Any], focus: str | None
) -> list[tuple[str, str]]:
    """``devices -> 3 -> profile`` becomes ``profile`` when device 3 is the one being changed."""
    if focus is None:
        return problems
    ids = [d["id"] for d in doc["devices"]]
    if focus not in ids:
        return problems
    head = f"devices -> {ids.index(focus)} -> "
    whole = f"devices -> {ids.index(focus)}"
    return [(p[len(head):] if p.startswith(head) else "(device)" if p == whole else p, m)
            for p, m in problems]  # fmt: skip


def _apply_fields(row: Device, req: DeviceFields) -> None:
    for name in ("profile", "bus", "unit_id", "address", "firmware", "labels"):
        value = getattr(req, name)
        if value is not None:
            setattr(row, name, value)
    if req.install_date is not None:
        row.install_date = req.install_date.isoformat()
    # detached (""): the departments not given again go too, they were the component's
    for column, value in _component_values(req, detach=req.component_id == "").items():
        setattr(row, column, value)


def _component_values(req: DeviceFields, detach: bool = False) -> dict[str, Any]:
    """The component columns ``req`` sets (all of them, emptied, when ``detach``)."""
    out: dict[str, Any] = {}
    if req.component_id is not None or detach:
        out["component_id"] = req.component_id or None
    for dept in DEPARTMENTS:
        given: Department | None = getattr(req, f"dept_{dept}")
        if given is not None or detach:
            out[f"dept_{dept}_code"] = given.code if given else None
            out[f"dept_{dept}_name"] = given.name if given else ""
    return out


def _account(gw: Gateway) -> Account:
    return Account.of(gw.id, (gw.settings or {}).get("mqtt"))


IMPORT_CHUNK = 1_000
"""Rows written per transaction by an import: what an ingest commit may have to wait for."""
_ID_CHUNK = 500  # ids in one IN (...) list


@dataclass
class ImportPlan:
    """An import judged against the registry: applied only when nothing was refused."""

    rows: csvimport.Rows
    states: dict[str, csvimport.GatewayState]
    refused: list[RowReport]


def _table(model: type[Any]) -> Table:
    # Core's executemany on the Table: many rows in one statement, not the ORM's per-row path
    return cast(Table, model.__table__)


def _gateway_state(
    gw: Gateway, site: Site | None, devices: list[tuple[Device, Site | None]]
) -> csvimport.GatewayState:
    live = [(d, ds) for d, ds in devices if d.registered_at is not None and d.retired_at is None]
    return csvimport.GatewayState(
        id=gw.id, registered=gw.registered_at is not None, retired=gw.retired_at is not None,
        config_desired=gw.config_desired, location=located(site, (gw.lat, gw.lon)),
        settings=gw.settings or {},
        devices=[DeviceSpec(d.name, d.profile or "", d.bus or "", d.unit_id, d.address or "",
                            located(ds, (d.lat, d.lon))) for d, ds in live],
        taken={d.name: "retired" if d.retired_at is not None else "registered"
               for d, _ in devices if d.registered_at is not None},
        unregistered=frozenset(d.name for d, _ in devices if d.registered_at is None),
    )  # fmt: skip


def _locs(rows: csvimport.Rows) -> list[Location]:
    return [r.location for _, r in rows if r.location]


def _device_values(req: DeviceCreate, sites: dict[tuple[str, str, str], int]) -> dict[str, Any]:
    """The registered fields of a device, every column given (one executemany shape)."""
    loc = req.location or Location()
    return {"profile": req.profile, "bus": req.bus, "unit_id": req.unit_id,
            "lat": loc.lat, "lon": loc.lon,
            "address": req.address or "", "firmware": req.firmware or "", "labels": req.labels,
            "install_date": req.install_date.isoformat() if req.install_date else None,
            "site_id": sites.get((loc.district, loc.street, loc.grid)),
            **_component_values(req, detach=True)}  # fmt: skip


def _import_audit(by: Principal, rows: csvimport.Rows) -> list[AuditEntry]:
    lines: dict[str, list[int]] = {}
    devices: dict[str, list[str]] = {}
    for line, r in rows:
        lines.setdefault(r.gateway, []).append(line)
        devices.setdefault(r.gateway, []).append(r.id)
    return [audit_row(by, "device.import", f"gateway:{gw}",
                      {"lines": [min(lines[gw]), max(lines[gw])], "devices": devices[gw]})
            for gw in sorted(devices)]  # fmt: skip


async def _to_its_end(step: Coroutine[Any, Any, None]) -> None:
    """One transaction of an import, run to its end even if the import is cancelled meanwhile
    (a stop): a commit interrupted half-way leaves its connection, and SQLite's write lock, to
    finish on its own, and the undo that follows would wait for it. The cancel is raised once
    the transaction is over."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _staged(gateways: Sequence[str], stamp: int) -> ColumnElement[bool]:
    """The rows an import wrote and has not registered yet: on its gateways, unregistered, with
    a profile (which only registration gives) and first seen at the import's own time stamp."""
    return and_(Device.gateway_id.in_(gateways), Device.registered_at.is_(None),
                Device.profile.is_not(None), Device.first_seen == stamp)  # fmt: skip


async def _created_meanwhile(s: AsyncSession, keys: list[str], stamp: int) -> set[str]:
    """Of the rows an import meant to stage, those it did not write: unregistered rows their
    gateway reported (the bridge's) before or while the import staged its own."""
    found: set[str] = set()
    for i in range(0, len(keys), _ID_CHUNK):
        mine = and_(Device.profile.is_not(None), Device.first_seen == stamp)
        q = select(Device.id).where(Device.id.in_(keys[i : i + _ID_CHUNK]),
                                    Device.registered_at.is_(None), ~mine)  # fmt: skip
        found.update(await s.scalars(q))
    return found


async def _register_staged(s: AsyncSession, gateways: list[str], stamp: int, count: int) -> None:
    done = 0
    for i in range(0, len(gateways), _ID_CHUNK):
        result = await s.execute(
            update(Device).where(_staged(gateways[i : i + _ID_CHUNK], stamp))
            .values(registered_at=stamp)
        )  # fmt: skip
        done += getattr(result, "rowcount", 0) or 0
    if done != count:
        raise Conflict("devices of this file were registered or removed by someone else while "
                       "it was imported; nothing was imported: send the file again")  # fmt: skip


async def _adopt(
    s: AsyncSession, rows: Sequence[DeviceCreate], sites: dict[tuple[str, str, str], int],
    now: int,
) -> None:  # fmt: skip
    """Register devices their gateway reported before anyone registered them."""
    if rows:
        values = [{**_device_values(r, sites), "id": device_key(r.gateway, r.id),
                   "registered_at": now} for r in rows]  # fmt: skip
        await s.execute(update(Device), values)  # ORM bulk UPDATE by primary key


_BUS: TypeAdapter[Any] = TypeAdapter(Bus)
_BUS_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def _check_bus(bus: dict[str, Any]) -> None:
    """The bus as the edge would load it: each wrong setting named."""
    try:
        _BUS.validate_python(bus)
    except ValidationError as exc:
        raise Invalid(
            [(".".join(str(x) for x in e["loc"][1:]) or "(bus)", e["msg"]) for e in exc.errors()]
        ) from None


def _refuse_unknown_bus(gw: Gateway, bus: str) -> None:
    buses = {str(b.get("id")) for b in (gw.settings or {}).get("buses", [])}
    if bus not in buses:
        raise Invalid([("bus", csvimport.unknown_bus(gw.id, bus, buses))])


async def _refuse_taken_slot(
    s: AsyncSession, gw_id: str, name: str, bus: str, unit_id: int | None, address: str | None
) -> None:
    """A second live device at one bus's unit id (or MQTT address) would answer as the first:
    its readings would be the other's, its commands go to the other."""
    live = (Device.gateway_id == gw_id, Device.bus == bus, Device.name != name,
            Device.registered_at.is_not(None), Device.retired_at.is_(None))  # fmt: skip
    for column, value, what in ((Device.unit_id, unit_id, N_("unit id")),
                                (Device.address, address, N_("address"))):  # fmt: skip
        if value is None or value == "":
            continue
        holder = await s.scalar(select(Device.id).where(*live, column == value).limit(1))
        if holder is not None:
            raise Conflict(_("{what} {value} on bus {bus!r} is already device {holder!r} (two "
                             "devices would answer as one)").format(what=_(what), value=value,
                                                                    bus=bus, holder=holder))  # fmt: skip


async def _claim_device(s: AsyncSession, dialect: str, gw_id: str, dev: str) -> Device:
    """The device's row, locked, created unregistered if it is not there yet: insert-or-adopt in
    one statement, so a bridge that creates the same row from a Birth or a reading at the same
    moment (its own upsert) cannot make the registration fail on the primary key; the
    registration then adopts the row. A concurrent registration of the same device waits for
    this one's lock and finds it registered (a 409)."""
    key = device_key(gw_id, dev)
    blank = {"id": key, "gateway_id": gw_id, "name": dev, "first_seen": _now(), "status": "new"}
    await s.execute(upsert(dialect, Device).values(blank).on_conflict_do_nothing())
    row = await s.get(Device, key, populate_existing=True, with_for_update=True)
    assert row is not None  # inserted or already there, in this transaction
    return row


def _blank_gateway(s: AsyncSession, gw_id: str) -> Gateway:
    now = _now()
    gw = Gateway(id=gw_id, first_seen=now, last_seen=now, online=False, session=0, software="",
                 config_version=0, config_desired=0, config_acked=0)  # fmt: skip
    s.add(gw)
    return gw


async def _live_gateway(s: AsyncSession, gw_id: str) -> Gateway:
    gw = await s.get(Gateway, gw_id, with_for_update=True)
    if gw is None or gw.registered_at is None:
        raise NotFound("gateway", gw_id)
    if gw.retired_at is not None:
        raise Conflict(_("{thing} {key!r} is retired").format(thing=_("gateway"), key=gw_id))
    return gw


async def _live_device(s: AsyncSession, key: str) -> tuple[Device, Gateway]:
    column = Device.id if ":" in key else Device.name
    rows = list(await s.scalars(select(Device).where(column == key)))
    if len(rows) != 1 or rows[0].registered_at is None:
        raise NotFound("registered device", key)
    row = rows[0]
    if row.retired_at is not None:
        raise Conflict(_("{thing} {key!r} is retired").format(thing=_("device"), key=row.id))
    return row, await _live_gateway(s, row.gateway_id)


def _shown(loc: Location) -> dict[str, Any]:
    return loc.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
