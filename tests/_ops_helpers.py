"""A registry API of the test's own (real aiohttp server, real SQLite store) with a token per role,
and alert events to feed its store as the bridge would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from device_registry import Changes, RegistryStore
from device_registry.delivery.runtime import Delivery
from device_registry.http.app import build_app, serving
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from device_registry.inventory.configgen import Uplink
from device_registry.inventory.wiring import InstallerSettings
from gridwatch.ground.contract import AlertEvent, AlertState, Location, Severity, new_id


@dataclass
class Installing:
    """A registry with installer settings, served on a free port, and an HTTP session that
    holds an installer's token (``token``); ``store`` is the registry's own."""

    url: str
    http: aiohttp.ClientSession
    store: RegistryStore
    token: str


@asynccontextmanager
async def installing(registry_url: str) -> AsyncIterator[Installing]:
    """The registry an installer talks to: its configs name the uplink broker.example:8883,
    prefix ``city``. The store is closed however the test ends."""
    store = await RegistryStore.open(registry_url)
    try:
        token = (await issue(store, TokenRequest(name="anna", role=Role.INSTALLER), SYSTEM)).token
        settings = InstallerSettings(uplink=Uplink(host="broker.example", port=8883, prefix="city"))
        app = build_app(store=store, installers=settings)
        async with (
            serving(app, "127.0.0.1", 0) as base,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as h,
        ):
            yield Installing(base, h, store, token)
    finally:
        await store.close()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def smoke(alert_id: str, device: str = "sd-001", at: int | None = None,
          state: AlertState = AlertState.RAISED, district: str = "310104",
          grid: str = "310104014024001", gateway: str = "gw1") -> AlertEvent:  # fmt: skip
    at = now_ms() if at is None else at
    return AlertEvent(
        id=new_id(), gateway=gateway, seq=1, session=1, alert_id=alert_id, state=state,
        rule="smoke", category="2201", severity=Severity.CRITICAL, device=device,
        point="obscuration", location=Location(district=district, grid=grid), value=5.2,
        threshold=4.0, unit="%/m", message="Smoke detected", raised_at=at, ts=at,
    )  # fmt: skip


CALIXI_NORTH = "310104014024001"
"""A grid cell of 漕溪北路 (徐家汇街道), area class A in the shipped places data."""


def ponding(alert_id: str, device: str = "wl-001", at: int | None = None,
            state: AlertState = AlertState.RAISED, value: float = 0.22,
            grid: str = CALIXI_NORTH, gateway: str = "gw1") -> AlertEvent:  # fmt: skip
    """Road waterlogging (0406) seen by a level sensor under a storm-water inlet, in Xuhui."""
    at = now_ms() if at is None else at
    return AlertEvent(
        id=new_id(), gateway=gateway, seq=1, session=1, alert_id=alert_id, state=state,
        rule="ponding", category="0406", severity=Severity.MAJOR, device=device, point="water_depth",
        location=Location(district="310104", grid=grid), value=value, threshold=0.15, unit="m",
        message="Ponding on the road", raised_at=at, ts=at,
    )  # fmt: skip


def parked(alert_id: str, device: str = "cam-001", at: int | None = None,
           state: AlertState = AlertState.RAISED, district: str = "310104",
           grid: str = "310104014024001", gateway: str = "gw1") -> AlertEvent:  # fmt: skip
    """A car in a fire lane seen by a camera (050501): an operator files it, so its alert makes
    two platform messages (the alert, and its case reported), for tests of delivery itself."""
    at = now_ms() if at is None else at
    return AlertEvent(
        id=new_id(), gateway=gateway, seq=1, session=1, alert_id=alert_id, state=state,
        rule="fire_lane", category="050501", severity=Severity.MINOR, device=device, point="",
        location=Location(district=district, grid=grid), value=True,
        message="Car in the fire lane", raised_at=at, ts=at,
    )  # fmt: skip


@dataclass
class Registry:
    url: str
    store: RegistryStore
    tokens: dict[Role, str]
    http: aiohttp.ClientSession
    app: web.Application

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def ingest(self, *events: AlertEvent) -> None:
        await self.store.apply(Changes(now=now_ms(), alerts=list(events)))

    async def call(self, method: str, path: str, role: Role, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=body,
                                     headers=self.auth(role)) as r:  # fmt: skip
            return r.status, await r.json()


@asynccontextmanager
async def registry(
    tmp_path: Path, delivery: Delivery | None = None, db_url: str | None = None, name: str = "1"
) -> AsyncIterator[Registry]:
    """A registry API (with its delivery side) on ``db_url`` (default: SQLite in ``tmp_path``);
    several on one database need distinct ``name``s for their tokens."""
    store = await RegistryStore.open(db_url or f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    tokens = {}
    for role in Role:
        issued = await issue(store, TokenRequest(name=f"{role.value}-{name}", role=role), SYSTEM)
        tokens[role] = issued.token
    app = build_app(store=store, delivery=delivery or Delivery(poll_s=0.2))
    try:
        async with serving(app, "127.0.0.1", 0) as url, aiohttp.ClientSession() as http:
            yield Registry(url, store, tokens, http, app)
    finally:
        await store.close()
