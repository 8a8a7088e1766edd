"""Registering, changing, listing, importing and retiring, on SQLite and PostgreSQL: what the API
accepts, what it refuses (4xx with the field and the reason, never a 500), and the configs it
generates from it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from gridwatch.ground.gatewayconf import GatewayConfig
from tests._ops_helpers import installing


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    operator: dict[str, str]

    async def call(self, method: str, path: str, body: Any = None, status: int = 200,
                   **kw: Any) -> Any:  # fmt: skip
        if body is not None:
            kw["json"] = body
        async with self.http.request(method, self.url + path, **kw) as r:
            text = await r.text()
            assert r.status == status, f"{method} {path}: {r.status} {text}"
            # every error is a problem (RFC 9457), every answer plain JSON
            media = "application/problem+json" if status >= 400 else "application/json"
            assert r.content_type == media, text
            return await r.json()


@pytest.fixture
async def api(registry_url: str) -> AsyncIterator[Api]:
    async with installing(registry_url) as reg:
        op = (await issue(reg.store, TokenRequest(name="olga", role=Role.OPERATOR), SYSTEM)).token
        yield Api(reg.url, reg.http, {"Authorization": f"Bearer {op}"})


BUS = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502, "timeout_s": 0.5}


async def gateway(api: Api, gw: str = "gw1", district: str = "310104") -> dict[str, Any]:
    body = {"id": gw, "location": {"district": district, "grid": "310104017021001"}, "buses": [BUS]}
    result: dict[str, Any] = await api.call("POST", "/api/v1/gateways", body, 201)
    return result


def device(dev: str, gw: str = "gw1", **kw: Any) -> dict[str, Any]:
    return {"gateway": gw, "id": dev, "profile": "water-level-ultrasonic", "bus": "cabinet",
            "unit_id": 1, **kw}  # fmt: skip


async def test_gateway_and_device_lifecycle_with_generated_configs(api: Api) -> None:
    gw = await gateway(api)
    assert gw["registered"] and gw["config"]["desired"] == 1 and gw["config"]["acknowledged"] == 0
    assert len(gw["mqtt"]["password"]) >= 24
    assert "password" not in await api.call("GET", "/api/v1/gateways/gw1")
    await api.call("POST", "/api/v1/gateways", {"id": "gw1"}, 409)

    loc = {"district": "310104", "street": "漕溪北路", "grid": "310104017021002"}
    d = await api.call("POST", "/api/v1/devices", device("wl-1", location=loc, firmware="1.2",
                                                         install_date="2026-11-01",
                                                         labels={"crew": "7"}), 201)  # fmt: skip
    assert (d["id"], d["status"], d["profile"], d["street"], d["grid"]) == (
        "gw1:wl-1", "new", "water-level-ultrasonic", "漕溪北路", "310104017021002")  # fmt: skip
    assert (d["install_date"], d["firmware"], d["labels"]) == ("2026-11-01", "1.2", {"crew": "7"})
    await api.call("POST", "/api/v1/devices", device("wl-2", unit_id=2), 201)
    await api.call("POST", "/api/v1/devices", device("wl-1"), 409)

    doc = await api.call("GET", "/api/v1/gateways/gw1/config")
    cfg = GatewayConfig.model_validate(doc)  # what the edge will validate
    assert cfg.version == 3 and [x.id for x in cfg.devices] == ["wl-1", "wl-2"]
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.prefix, cfg.mqtt.password_env) == (
        "broker.example", 8883, "city", "GRIDWATCH_MQTT_PASSWORD")  # fmt: skip

    patched = await api.call("PATCH", "/api/v1/devices/gw1:wl-2", {"firmware": "2.0", "unit_id": 9})
    assert (patched["firmware"], patched["unit_id"]) == ("2.0", 9)
    await api.call("POST", "/api/v1/devices/wl-2/retire")  # a bare id, unique across gateways
    await api.call("PATCH", "/api/v1/devices/gw1:wl-2", {"firmware": "3"}, 409)
    doc = await api.call("GET", "/api/v1/gateways/gw1/config")
    assert doc["version"] == 5 and [x["id"] for x in doc["devices"]] == ["wl-1"]
    assert [x["id"] for x in await api.call("GET", "/api/v1/devices")] == ["gw1:wl-1"]
    assert [x["id"] for x in await api.call("GET", "/api/v1/devices?retired=true")] == ["gw1:wl-2"]

    await api.call("PATCH", "/api/v1/gateways/gw1", {"name": "cabinet 12"})
    assert (await api.call("GET", "/api/v1/gateways/gw1"))["config"]["desired"] == 6
    await api.call("POST", "/api/v1/gateways/gw1/retire")
    await api.call("POST", "/api/v1/devices", device("wl-3"), 409)
    await api.call("GET", "/api/v1/gateways/gw1/config", status=410)


async def test_filters_and_pagination(api: Api) -> None:
    await gateway(api, "gw1", "310104")
    await gateway(api, "gw2", "310106")
    for i in range(5):
        await api.call("POST", "/api/v1/devices", device(f"d{i}", unit_id=i + 1,
                       location={"district": "310104", "grid": f"G{i % 2}"}), 201)  # fmt: skip
    await api.call(
        "POST", "/api/v1/devices", device("s1", gw="gw2", profile="smoke-detector-modbus"), 201
    )

    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["id"] for r in rows]

    table = [
        ("gateway=gw2", ["gw2:s1"]),
        ("grid=G1", ["gw1:d1", "gw1:d3"]),
        ("profile=smoke-detector-modbus", ["gw2:s1"]),
        ("district=310104&grid=G0&limit=2", ["gw1:d0", "gw1:d2"]),
        ("district=310104&grid=G0&limit=2&offset=2", ["gw1:d4"]),
        ("status=new&gateway=gw1&limit=1", ["gw1:d0"]),
        ("status=online", []),
    ]
    for query, want in table:
        assert ids(await api.call("GET", f"/api/v1/devices?{query}")) == want, query
    assert [g["id"] for g in await api.call("GET", "/api/v1/gateways?district=310106")] == ["gw2"]
    assert [g["id"] for g in await api.call("GET", "/api/v1/gateways?limit=1&offset=1")] == ["gw2"]
    assert (await api.call("GET", "/api/v1/gateways/gw1"))["devices"] == 5


# (what is sent, status, the field named, words of the message)
BAD_BODIES: list[tuple[str, Any, int, str, str]] = [
    ("/api/v1/gateways", "{not json", 422, "(body)", "not valid JSON"),
    ("/api/v1/gateways", [1, 2], 422, "(body)", "JSON object"),
    ("/api/v1/gateways", {"id": "gw x"}, 422, "id", "pattern"),
    ("/api/v1/gateways", {"id": "gw9", "colour": "red"}, 422, "colour", "unknown field"),
    (
        "/api/v1/gateways",
        {"id": "gw9", "location": {"lat": "north"}},
        422,
        "location.lat",
        "number",
    ),
    (
        "/api/v1/gateways",
        {"id": "gw9", "buses": [{"type": "can", "id": "b"}]},
        422,
        "buses.0",
        "tag",
    ),
    ("/api/v1/devices", {"gateway": "gw1"}, 422, "id", "Field required"),
    ("/api/v1/devices", device("x", profile="no-such"), 422, "profile", "unknown profile"),
    (
        "/api/v1/devices",
        device("x", bus="nope"),
        422,
        "bus",
        "unknown bus 'nope': gateway 'gw1' has bus 'cabinet'",
    ),
    ("/api/v1/devices", device("x", gw="gw-none"), 422, "gateway", "not registered"),
    ("/api/v1/devices", device("x", unit_id=400), 422, "unit_id", "less than or equal"),
    ("/api/v1/devices", device("x", install_date="yesterday"), 422, "install_date", "date"),
    ("/api/v1/devices", device("x", profile="smoke-detector-mqtt"), 422, "profile", "cannot run"),
]


@pytest.mark.parametrize(("path", "body", "status", "field", "words"), BAD_BODIES)
async def test_bad_requests_are_4xx_with_the_reason(
    api: Api, path: str, body: Any, status: int, field: str, words: str
) -> None:
    await gateway(api)
    kw = (
        {"data": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, str)
        else {}
    )
    err = await api.call("POST", path, None if isinstance(body, str) else body, status, **kw)
    assert words in err["detail"], err
    if field:
        assert field in [p["loc"] for p in err["errors"]], err


CSV_GOOD = """gateway,id,profile,bus,unit_id,district,grid,install_date,labels
gw1,wl-10,water-level-ultrasonic,cabinet,10,310104,310104017021009,2026-11-20,crew=7;lot=A
gw1,wl-11,water-level-ultrasonic,cabinet,11,310104,310104017021009,,
"""

CSV_BAD = """gateway,id,profile,bus,unit_id
gw1,wl-20,water-level-ultrasonic,cabinet,20
gw1,wl-21,no-such-profile,cabinet,21
gw1,wl-22,water-level-ultrasonic,cabinet,many
gw1,wl-20,water-level-ultrasonic,cabinet,23
gw1,wl-24,water-level-ultrasonic,cabinet,24
"""


async def test_csv_import_is_all_or_nothing_with_a_row_report(api: Api) -> None:
    await gateway(api)
    csv = {"headers": {"Content-Type": "text/csv"}}
    done = await api.call("POST", "/api/v1/devices/import", status=200, data=CSV_GOOD, **csv)
    assert done == {"imported": 2, "devices": ["gw1:wl-10", "gw1:wl-11"]}
    wl10 = await api.call("GET", "/api/v1/devices/gw1:wl-10")
    assert (wl10["grid"], wl10["labels"], wl10["install_date"]) == (
        "310104017021009",
        {"crew": "7", "lot": "A"},
        "2026-11-20",
    )

    report = await api.call("POST", "/api/v1/devices/import", status=422, data=CSV_BAD, **csv)
    assert "nothing imported" in report["detail"]
    # every problem at once: those of a row alone and those against the registry
    assert [e["loc"] for e in report["errors"]] == [
        "line 2 (gw1:wl-20).id", "line 3 (gw1:wl-21).profile", "line 4 (gw1:wl-22).unit_id",
        "line 5 (gw1:wl-20).id",
    ]  # fmt: skip
    assert report["errors"][1]["loc"] == "line 3 (gw1:wl-21).profile"
    assert report["errors"][1]["msg"].startswith("unknown profile (got 'no-such-profile'); known")
    assert "(4 of 5 rows refused" in report["detail"], report
    assert len(await api.call("GET", "/api/v1/devices?gateway=gw1")) == 2  # nothing half-imported
    # one new config version for the import, not one per row
    assert (await api.call("GET", "/api/v1/gateways/gw1"))["config"]["desired"] == 2

    err = await api.call("POST", "/api/v1/devices/import", status=422, data="gw,name\n", **csv)
    assert "unknown columns 'gw', 'name'" in err["detail"], err
    await api.call("POST", "/api/v1/devices/import", status=415, data=CSV_GOOD,
                   headers={"Content-Type": "application/json"})  # fmt: skip


async def test_commands_need_a_broker_and_a_writable_point(api: Api) -> None:
    await gateway(api)
    await api.call("POST", "/api/v1/devices", device("sd-1", profile="smoke-detector-modbus"), 201)
    path = "/api/v1/devices/gw1:sd-1/commands"
    # the installer's token may not command: the operator's may, but there is no broker here
    await api.call("POST", path, {"point": "sounder", "value": True}, 403)
    op = {"headers": api.operator}
    err = await api.call("POST", path, {"point": "sounder", "value": True}, 503, **op)
    assert err["title"] == "Broker unavailable"
    err = await api.call("POST", path, {"point": "obscuration", "value": 1}, 422, **op)
    assert err["errors"][0] == {"loc": "point", "msg": err["errors"][0]["msg"]}
    assert "not writable" in err["detail"]
    # the value must be one the point accepts: the sounder is a coil
    err = await api.call("POST", path, {"point": "sounder", "value": 12345.678}, 422, **op)
    assert err["errors"] == [{"loc": "value", "msg": "point 'sounder' (bool) accepts "
                              "true or false; got 12345.678"}]  # fmt: skip
    err = await api.call("POST", path, data='{"point": "sounder", "value": NaN}', status=422,
                         headers={"Content-Type": "application/json", **api.operator})  # fmt: skip
    # NaN is not JSON: refused by the body's parser before the point is asked
    assert err["errors"][0]["loc"] == "(body)" and "not valid JSON" in err["errors"][0]["msg"]
    err = await api.call("POST", path, {"point": "sounder", "value": "loud"}, 422, **op)
    assert err["errors"][0]["loc"].startswith("value")
    await api.call(
        "POST", "/api/v1/devices/gw1:nope/commands", {"point": "x", "value": 1}, 404, **op
    )
