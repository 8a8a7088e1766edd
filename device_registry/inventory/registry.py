"""What installers register: gateways and devices, created, changed and retired.

Every change that alters a gateway's config bumps its desired config version in the same
transaction, is validated by generating that config (``configgen``), and is written to the audit
log; after the commit the downlink publishes the new config. A gateway's broker access is granted
before its row is committed and revoked before it is retired, so the broker never lets in a
gateway the registry does not know, and a retired one is out the moment the call returns.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from device_registry.db.store import RegistryStore
from device_registry.db.tables import (
    Device,
    Gateway,
    GatewayHealthRow,
    Site,
    device_key,
)
from device_registry.errors import Conflict, Invalid, NotFound
from device_registry.http.auth import Principal, audit_row
from device_registry.inventory import views
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
from device_registry.inventory.places import resolve_site, resolve_sites
from device_registry.inventory.provisioning import Account, username_for
from device_registry.inventory.requests import (
    DeviceCreate,
    DeviceFields,
    DevicePatch,
    GatewayCreate,
    GatewayPatch,
)
from device_registry.inventory.views import GatewayView
from gridwatch.ground.contract import ConfigAck, Location

logger = logging.getLogger(__name__)


class _RollBack(Exception):
    """Raised inside a transaction to undo it."""


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
            raise Conflict(f"gateway {gw_id!r} is already {state}")

    async def update_gateway(self, gw_id: str, req: GatewayPatch, by: Principal) -> GatewayView:
        async with self.store.transaction() as s:
            gw = await _live_gateway(s, gw_id)
            if req.name is not None:
                gw.name = req.name
            if req.labels is not None:
                gw.labels = req.labels
            if req.location is not None:
                gw.site_id = await resolve_site(s, req.location)
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
                views.gateway(gw, n or 0, report, _location(site))
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
        gw = await s.get(Gateway, req.gateway)
        if gw is None or gw.registered_at is None:
            raise Invalid([("gateway", f"gateway {req.gateway!r} is not registered")])
        if gw.retired_at is not None:
            raise Conflict(f"gateway {req.gateway!r} is retired")
        key = device_key(req.gateway, req.id)
        row = await s.get(Device, key)
        if row is not None and row.registered_at is not None:
            state = "retired" if row.retired_at is not None else "registered"
            raise Conflict(f"device {key!r} is already {state}")
        if row is None:
            row = Device(
                id=key, gateway_id=req.gateway, name=req.id, first_seen=_now(), status="new"
            )
            s.add(row)
        row.registered_at = _now()
        _apply_fields(row, req)
        row.site_id = await resolve_site(s, req.location or Location())
        await s.flush()
        gw.config_desired += 1
        try:
            await self._generate(s, gw, focus=req.id)
        except Invalid:
            # out of the gateway's config again, so that an import judges the next rows alone
            row.registered_at = None
            await s.flush()
            raise
        s.add(audit_row(by, "device.register", f"device:{key}", req.model_dump(mode="json")))
        return key

    async def import_devices(
        self, rows: Sequence[tuple[int, DeviceCreate]], by: Principal
    ) -> list[RowReport]:
        """All rows in one transaction; any refused row rolls back the whole import.
        Returns the refused rows (empty: everything was imported)."""
        refused: list[RowReport] = []
        try:
            async with self.store.transaction() as s:
                # every row's place first, in key order (places.py: no deadlock with ingest)
                await resolve_sites(s, (req.location for _, req in rows if req.location))
                for line, req in rows:
                    try:
                        await self._add_device(s, req, by)
                    except (Invalid, Conflict) as exc:
                        problems = exc.problems if isinstance(exc, Invalid) else [("id", str(exc))]
                        refused.append(RowReport(line, f"{req.gateway}:{req.id}", problems))
                if refused:
                    raise _RollBack
        except _RollBack:
            return refused
        for gw in sorted({r.gateway for _, r in rows}):
            self.pushed(gw)
        return []

    async def update_device(self, key: str, req: DevicePatch, by: Principal) -> str:
        async with self.store.transaction() as s:
            row, gw = await _live_device(s, key)
            _apply_fields(row, req)
            if req.location is not None:
                row.site_id = await resolve_site(s, req.location)
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
                Location(**_location(site)),
            )
            for d, site in rows
        ]
        site = await s.get(Site, gw.site_id) if gw.site_id is not None else None
        doc = document(gw.id, Location(**_location(site)), gw.settings or {}, specs,
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


def _account(gw: Gateway) -> Account:
    return Account.of(gw.id, (gw.settings or {}).get("mqtt"))


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
        raise Conflict(f"gateway {gw_id!r} is retired")
    return gw


async def _live_device(s: AsyncSession, key: str) -> tuple[Device, Gateway]:
    column = Device.id if ":" in key else Device.name
    rows = list(await s.scalars(select(Device).where(column == key)))
    if len(rows) != 1 or rows[0].registered_at is None:
        raise NotFound("registered device", key)
    row = rows[0]
    if row.retired_at is not None:
        raise Conflict(f"device {row.id!r} is retired")
    return row, await _live_gateway(s, row.gateway_id)


def _location(site: Site | None) -> dict[str, Any]:
    if site is None:
        return {}
    loc = {"district": site.district_id, "street": site.street, "grid": site.grid,
           "lat": site.lat, "lon": site.lon}  # fmt: skip
    return {k: v for k, v in loc.items() if v not in ("", None)}
