"""An installer registers a device while the bridge creates the same row from the gateway's
Birth or readings, on SQLite and PostgreSQL: the registration wins (it adopts the row), a
duplicate registration is a 409, and nothing is ever a 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from device_registry import RegistryStore
from device_registry.http.state import now_ms
from device_registry.ingest.changes import Changes
from gridwatch.ground.contract import Birth
from tests._ops_helpers import installing

ROUNDS = 12
BUS = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502, "timeout_s": 0.5}


@dataclass
class Race:
    url: str
    http: aiohttp.ClientSession
    store: RegistryStore

    async def post(self, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url + path, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def bridge(self, dev: str, birth: bool) -> None:
        """What the bridge writes when a gateway names a device nobody registered yet."""
        now = now_ms()
        if birth:
            b = Birth(gateway="gw1", session=now, ts=now, software="t", config_version=0,
                      devices=[dev])  # fmt: skip
            await self.store.apply(Changes(now=now, status=[b]))
        else:
            await self.store.apply(Changes(now=now, device_seen={("gw1", dev): now}))


@pytest.fixture
async def race(registry_url: str) -> AsyncIterator[Race]:
    async with installing(registry_url) as reg:
        r = Race(reg.url, reg.http, reg.store)
        status, body = await r.post("/api/v1/gateways", json={"id": "gw1", "buses": [BUS]})
        assert status == 201, body
        yield r


def device(dev: str, unit: int) -> dict[str, Any]:
    return {"gateway": "gw1", "id": dev, "profile": "water-level-ultrasonic", "bus": "cabinet",
            "unit_id": unit}  # fmt: skip


async def registered(r: Race, dev: str) -> dict[str, Any]:
    async with r.http.get(f"{r.url}/api/v1/devices/gw1:{dev}") as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_registration_racing_the_bridge_adopts_the_row(race: Race) -> None:
    for i in range(ROUNDS):
        dev = f"wl-{i}"
        (status, body), _ = await asyncio.gather(
            race.post("/api/v1/devices", json=device(dev, i + 1)), race.bridge(dev, i % 2 == 0)
        )
        assert status == 201, (i, body)
        shown = await registered(race, dev)
        assert shown["registered"] and shown["profile"] == "water-level-ultrasonic", shown


async def test_a_duplicate_registration_at_once_is_a_409(race: Race) -> None:
    for i in range(ROUNDS):
        dev = f"wl-{i}"
        answers = await asyncio.gather(
            race.post("/api/v1/devices", json=device(dev, i + 1)),
            race.post("/api/v1/devices", json=device(dev, i + 1)),
            race.bridge(dev, i % 2 == 1),
        )
        statuses = sorted(status for status, _ in answers[:2])
        assert statuses == [201, 409], (i, answers)
        conflict = next(body for status, body in answers[:2] if status == 409)
        assert conflict["type"].endswith("conflict"), conflict


async def test_an_import_racing_the_bridge_adopts_the_rows(race: Race) -> None:
    csv = {"headers": {"Content-Type": "text/csv"}}
    for i in range(ROUNDS):
        devs = [f"wl-{i}-{k}" for k in range(3)]
        lines = [f"gw1,{d},water-level-ultrasonic,cabinet,{3 * i + k + 1}"
                 for k, d in enumerate(devs)]  # fmt: skip
        data = "gateway,id,profile,bus,unit_id\n" + "\n".join(lines) + "\n"
        (status, body), *_ = await asyncio.gather(
            race.post("/api/v1/devices/import", data=data, **csv),
            *(race.bridge(d, k == 1) for k, d in enumerate(devs)),
        )
        assert status == 200, (i, body)
        assert body["imported"] == 3, body
        for d in devs:
            assert (await registered(race, d))["registered"]
