"""The registry's REST API, served by a whole central process (store + API + bridge) in-process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from device_registry.http.app import build_app, serving
from gridwatch.ground.contract import AlertState, Quality, Topics
from gridwatch.top.central import Central
from gridwatch.top.cli import build_parser
from tests._central_helpers import alert, batch, birth, now_ms, publisher, reading, until
from tests.conftest import ADMIN_TOKEN
from tests.services import Mosquitto, free_port


@asynccontextmanager
async def central(*argv: str) -> AsyncIterator[Central]:
    args = build_parser().parse_args(["central", "run", "--http-port", "0", *argv])
    c = Central(args)
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop), name="central")
    try:
        async with asyncio.timeout(10):
            await asyncio.wait(
                [asyncio.create_task(c.ready.wait()), task], return_when=asyncio.FIRST_COMPLETED
            )
        assert c.ready.is_set(), task.exception() if task.done() else "central did not start"
        assert c.bridge is not None
        async with asyncio.timeout(10):
            await c.bridge.connected.wait()
        yield c
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task  # a clean, ordered shutdown: no exception, no hang


async def get(http: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with http.get(url) as r:
        assert r.status == status, await r.text()
        assert r.content_type == (
            "application/problem+json" if status >= 400 else "application/json"
        )
        return await r.json()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as s:
        yield s


async def test_rest_api_lists_what_gateways_reported(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    argv = ["--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
            "--data-dir", str(tmp_path), "--bridge-id", f"central-{prefix}"]  # fmt: skip
    async with central(*argv) as c, publisher(mosquitto.host, mosquitto.port) as pub:
        assert c.bridge is not None
        await pub.publish(topics.status(gw), birth(gw, 1, ["d1", "d2"]).model_dump_json(), qos=1)
        readings = [
            reading("d1", "level", 2.5, t),
            reading("d2", "level", None, t, Quality.COMM_ERROR),
        ]
        await pub.publish(topics.telemetry(gw), batch(gw, readings).model_dump_json(), qos=1)
        await pub.publish(
            topics.alert(gw), alert(gw, "a1", AlertState.RAISED, t).model_dump_json(), qos=1
        )
        await until(c.bridge, lambda s: s.ingested == {"birth": 1, "telemetry": 1, "alert": 1})
        api = c.registry_url + "/api/v1"

        devices = await get(http, f"{api}/devices")
        assert [(d["id"], d["status"], d["last_seen"]) for d in devices] == [
            (f"{gw}:d1", "online", t),
            (f"{gw}:d2", "online", None),
        ]
        assert devices[0]["values"]["level"] == {
            "value": 2.5, "unit": "m", "quality": "good", "ts": t, "historical": False,
            "decimals": None,  # a list does not look up profiles (docs/registry.md)
        }  # fmt: skip
        assert devices[1]["values"]["level"]["quality"] == "comm_error"
        assert [d["id"] for d in await get(http, f"{api}/devices?gateway={gw}&district=north")] == [
            f"{gw}:d1"
        ]
        assert await get(http, f"{api}/devices?gateway=nobody") == []
        one = await get(http, f"{api}/devices/{gw}:d1")
        assert (one["device"], one["district"], one["grid"]) == ("d1", "north", "G7")
        [g] = await get(http, f"{api}/gateways")
        assert (g["id"], g["online"], g["devices"]) == (gw, True, 2)
        [a] = await get(http, f"{api}/alerts")
        assert (a["alert_id"], a["state"], a["severity"]) == (f"{gw}:a1", "raised", "major")
        assert len(await get(http, f"{api}/alerts?state=all&limit=5")) == 1
        health = await get(http, f"{c.registry_url}/health")
        assert (health["status"], health["parts"]["bridge"]["connected"]) == ("ok", True)
        assert health["parts"]["bridge"]["ingested"] == {"birth": 1, "telemetry": 1, "alert": 1}
        spec = await get(http, f"{api}/openapi.json")
        assert {"/api/v1/devices", "/api/v1/devices/{id}", "/api/v1/alerts"} <= set(spec["paths"])
        assert "DeviceView" in spec["components"]["schemas"]

        # bad input: problems that say what is wrong, never a 500
        err = await get(http, f"{api}/alerts?state=open", 422)
        assert "active" in err["detail"] and err["errors"][0]["loc"] == "state"
        assert "gatway" in (await get(http, f"{api}/devices?gatway=x", 422))["detail"]
        assert (await get(http, f"{api}/alerts?limit=ten", 422))["title"] == "Invalid request"
        assert (await get(http, f"{api}/devices/{gw}:nope", 404))["title"] == "Not found"
        await get(http, f"{api}/nothing-here", 404)


async def test_central_with_embedded_broker_needs_no_server(
    prefix: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    gw, t = prefix, now_ms()
    async with central(
        "--mqtt-port", str(port), "--data-dir", str(tmp_path), "--prefix", prefix
    ) as c:
        assert c.bridge is not None and c.embedded
        async with publisher("127.0.0.1", port, v5=False) as pub:
            msg = batch(gw, [reading("d1", "level", 1.0, t)])
            await pub.publish(Topics(prefix).telemetry(gw), msg.model_dump_json(), qos=1)
            await until(c.bridge, lambda s: s.ingested["telemetry"] == 1)
        [dev] = await get(http, f"{c.registry_url}/api/v1/devices")
        assert (dev["id"], dev["last_seen"]) == (f"{gw}:d1", t)
    # the default sink kept the history in the data dir
    assert (tmp_path / "telemetry.db").exists()


async def test_registry_serves_alone_on_its_own_store(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    app = build_app(f"sqlite+aiosqlite:///{tmp_path}/r.db")
    async with serving(app, "127.0.0.1", 0) as url:
        body = await get(http, f"{url}/health")
        assert body["dependencies"][0].pop("reason").startswith("last success ")
        assert body["dependencies"][0].pop("detail")["failures"] == 0
        assert body == {
            "status": "ok",
            "database": "sqlite",
            "failing": [],
            "dependencies": [
                {"name": "database", "part": "registry", "status": "ok", "since": None},
            ],
            # alone, with no bridge in its process or heartbeat in its database: it says so
            "bridges": "no bridge reports to this registry: none runs in this process and none "
            "has written a heartbeat to its database in the last hour",
            "parts": {},
        }  # fmt: skip
        assert await get(http, f"{url}/api/v1/devices") == []
        assert await get(http, f"{url}/api/v1/quarantine?limit=10") == []
