"""City components (部件) in the registry: the 16-digit component id checked (table), its three
departments carried by the device API, the CSV import (errors naming line and column),
``gridwatch device show``, and the migration that adds the columns to existing devices; on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from sqlalchemy import text

from device_registry import RegistryStore
from device_registry.db import migrate
from device_registry.db.engine import make_engine
from device_registry.inventory.components import (
    ComponentId,
    ComponentIdError,
    class_code,
    department_cell,
    parse_component_id,
)
from gridwatch.top.exits import OK
from tests._ops_helpers import installing
from tests.test_cli import gridwatch

XUHUI = {"310104": "徐汇区"}

# (id, parts or the words of the refusal)
IDS: list[tuple[str, ComponentId | str]] = [
    ("3101040103000001", ComponentId("310104", "0103", "000001")),  # 雨水井盖, national
    ("3101040606000123", ComponentId("310104", "0606", "000123")),  # 防洪墙: major 06
    ("3101042115000007", ComponentId("310104", "2115", "000007")),  # 泵站: local major 21
    ("3101049901000001", ComponentId("310104", "9901", "000001")),  # a local major up to 99
    ("310104010300001", "16 digits: district 6 + class 4 + serial 6"),  # 15 digits
    ("31010401030000011", "got '31010401030000011', 17 characters"),
    ("310104O103000001", "16 digits"),  # a letter O for a zero
    ("３１０１０４０１０３０００００１", "16 digits"),  # full-width digits
    ("", "16 digits"),
    ("3101050103000001", "310105, are not a district gridwatch knows (known: 310104 徐汇区)"),
    ("3101040003000001", "major class 00 is neither national (01-06) nor local (from 21)"),
    ("3101040703000001", "major class 07 is neither national"),
    ("3101042003000001", "major class 20 is neither national"),
    ("3101040100000001", "the minor class is 01-99, not 00"),
]


@pytest.mark.parametrize(("cid", "expected"), IDS)
def test_component_id_is_checked_for_shape_district_and_class(
    cid: str, expected: ComponentId | str
) -> None:
    if isinstance(expected, ComponentId):
        assert parse_component_id(cid, XUHUI) == expected
        assert str(expected) == cid and class_code(cid) == expected.class_code
        return
    with pytest.raises(ComponentIdError) as err:
        parse_component_id(cid, XUHUI)
    assert expected in str(err.value), err.value


@pytest.mark.parametrize(("cell", "expected"), [
    ("310104SW01:徐汇区水务局", {"code": "310104SW01", "name": "徐汇区水务局"}),
    ("310104SW01：徐汇区水务局", {"code": "310104SW01", "name": "徐汇区水务局"}),  # full-width
    (" XHLH : 徐汇区绿化市容局 ", {"code": "XHLH", "name": "徐汇区绿化市容局"}),
    ("XHLH", {"code": "XHLH", "name": ""}),
    ("A:b:c", {"code": "A", "name": "b:c"}),  # the name may hold a colon
])  # fmt: skip
def test_a_department_cell_is_code_colon_name(cell: str, expected: dict[str, str]) -> None:
    assert department_cell(cell) == expected


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    token: str

    async def call(self, method: str, path: str, body: Any = None, status: int = 200,
                   **kw: Any) -> Any:  # fmt: skip
        async with self.http.request(method, self.url + path, json=body, **kw) as r:
            assert r.status == status, f"{method} {path}: {r.status} {await r.text()}"
            return await r.json()


@pytest.fixture
async def api(registry_url: str) -> AsyncIterator[Api]:
    async with installing(registry_url) as reg:
        api = Api(reg.url, reg.http, reg.token)
        bus = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502}
        await api.call("POST", "/api/v1/gateways", {"id": "gw1", "buses": [bus]}, 201)
        yield api


WATER = {"code": "310104SW01", "name": "徐汇区水务局"}
ROADS = {"code": "310104LZ02", "name": "徐汇区路政所"}
CREW = {"code": "XHSZ-07", "name": "徐汇市政养护七队"}
MANHOLE = "3101040103000001"  # 雨水井盖 on 漕溪北路


def device(dev: str, unit_id: int, **kw: Any) -> dict[str, Any]:
    return {"gateway": "gw1", "id": dev, "profile": "water-level-ultrasonic", "bus": "cabinet",
            "unit_id": unit_id, **kw}  # fmt: skip


async def test_a_device_carries_its_component_and_departments(api: Api) -> None:
    body = device("wl-1", 1, component_id=MANHOLE, dept_competent=WATER, dept_owner=ROADS,
                  dept_maintainer=CREW, location={"district": "310104", "street": "漕溪北路",
                                                  "grid": "310104014024001"})  # fmt: skip
    made = await api.call("POST", "/api/v1/devices", body, 201)
    shown = await api.call("GET", "/api/v1/devices/gw1:wl-1")
    for view in (made, shown):
        assert (view["component_id"], view["class_code"]) == (MANHOLE, "0103"), view
        assert (view["dept_competent"], view["dept_owner"], view["dept_maintainer"]) == (
            WATER, ROADS, CREW)  # fmt: skip
    listed = await api.call("GET", "/api/v1/devices")
    assert [(d["id"], d["component_id"]) for d in listed] == [("gw1:wl-1", MANHOLE)]

    # a new owner alone: the rest stays
    patched = await api.call("PATCH", "/api/v1/devices/gw1:wl-1",
                             {"dept_owner": {"code": "XHGD", "name": "徐汇区管道所"}})  # fmt: skip
    assert patched["dept_owner"] == {"code": "XHGD", "name": "徐汇区管道所"}
    assert (patched["component_id"], patched["dept_competent"]) == (MANHOLE, WATER)
    # detached: its departments were the component's
    patched = await api.call("PATCH", "/api/v1/devices/gw1:wl-1", {"component_id": ""})
    assert [patched[k] for k in ("component_id", "class_code", "dept_competent", "dept_owner",
                                 "dept_maintainer")] == [None] * 5  # fmt: skip
    # a device without one says so
    plain = await api.call("POST", "/api/v1/devices", device("wl-2", 2), 201)
    assert (plain["component_id"], plain["dept_owner"]) == (None, None)


@pytest.mark.parametrize(("fields", "loc", "words"), [
    ({"component_id": "3101050103000001"}, "component_id", "310105, are not a district"),
    ({"component_id": "3101040703000001"}, "component_id", "major class 07"),
    ({"component_id": "310104-0103-000001"}, "component_id", "16 digits"),
    ({"dept_owner": {"code": "", "name": "徐汇区路政所"}}, "dept_owner.code", "at least 1"),
    ({"dept_owner": {"name": "徐汇区路政所"}}, "dept_owner.code", "required"),
    ({"dept_maintainer": "XHSZ-07"}, "dept_maintainer", "dictionary"),
])  # fmt: skip
async def test_a_wrong_component_is_refused_with_the_field_and_why(
    api: Api, fields: dict[str, Any], loc: str, words: str
) -> None:
    for method, path, body in (("POST", "/api/v1/devices", device("wl-1", 1, **fields)),
                               ("PATCH", "/api/v1/devices/gw1:wl-9", fields)):  # fmt: skip
        if method == "PATCH":
            await api.call("POST", "/api/v1/devices", device("wl-9", 9), 201)
        err = await api.call(method, path, body, 422)
        found = {e["loc"]: e["msg"] for e in err["errors"]}
        assert loc in found and words.lower() in found[loc].lower(), err
    assert [d["id"] for d in await api.call("GET", "/api/v1/devices")] == ["gw1:wl-9"]


CSV = """gateway,id,profile,bus,unit_id,grid,component_id,dept_competent,dept_owner,dept_maintainer
gw1,wl-10,water-level-ultrasonic,cabinet,10,310104014024001,3101040103000001,310104SW01:徐汇区水务局,310104LZ02：徐汇区路政所,XHSZ-07
gw1,wl-11,water-level-ultrasonic,cabinet,11,310104014024001,,,,
"""

CSV_BAD = """gateway,id,profile,bus,unit_id,component_id,dept_owner
gw1,wl-20,water-level-ultrasonic,cabinet,20,3101040103000001,XH LZ:路政
gw1,wl-21,water-level-ultrasonic,cabinet,21,3101060103000001,
gw1,wl-22,water-level-ultrasonic,cabinet,22,3101040103,:路政
gw1,wl-23,water-level-ultrasonic,cabinet,23,3101040103000002,XHLZ:路政
"""


async def test_csv_import_carries_components_and_names_line_and_column(api: Api) -> None:
    csv = {"headers": {"Content-Type": "text/csv"}}
    done = await api.call("POST", "/api/v1/devices/import", status=200, data=CSV, **csv)
    assert done["imported"] == 2
    wl10 = await api.call("GET", "/api/v1/devices/gw1:wl-10")
    assert (wl10["component_id"], wl10["dept_competent"], wl10["dept_owner"]) == (
        MANHOLE, WATER, ROADS)  # fmt: skip
    assert wl10["dept_maintainer"] == {"code": "XHSZ-07", "name": ""}
    wl11 = await api.call("GET", "/api/v1/devices/gw1:wl-11")
    assert (wl11["component_id"], wl11["dept_owner"]) == (None, None)

    report = await api.call("POST", "/api/v1/devices/import", status=422, data=CSV_BAD, **csv)
    errors = {e["loc"]: e["msg"] for e in report["errors"]}
    assert list(errors) == ["line 2 (gw1:wl-20).dept_owner", "line 3 (gw1:wl-21).component_id",
                            "line 4 (gw1:wl-22).component_id", "line 4 (gw1:wl-22).dept_owner"], errors  # fmt: skip
    assert "letters, digits" in errors["line 2 (gw1:wl-20).dept_owner"]
    assert "310106, are not a district" in errors["line 3 (gw1:wl-21).component_id"]
    assert "16 digits" in errors["line 4 (gw1:wl-22).component_id"]
    assert "code before the colon is empty" in errors["line 4 (gw1:wl-22).dept_owner"]
    assert len(await api.call("GET", "/api/v1/devices")) == 2  # nothing of the bad file


async def test_device_show_prints_the_component_and_its_departments(api: Api) -> None:
    where = {"district": "310104", "street": "漕溪北路", "grid": "310104014024001"}
    body = device("wl-1", 1, component_id=MANHOLE, dept_competent=WATER, dept_maintainer=CREW,
                  location=where)  # fmt: skip
    await api.call("POST", "/api/v1/devices", body, 201)
    await api.call("POST", "/api/v1/devices", device("wl-2", 2), 201)
    ran = await gridwatch("device", "show", "gw1:wl-1", "--url", api.url, token=api.token)
    assert ran.code == OK, ran
    assert f"component 部件: {MANHOLE} (class 0103)" in ran.out, ran.out
    assert "主管 competent: 310104SW01 徐汇区水务局" in ran.out
    assert "养护 maintainer: XHSZ-07 徐汇市政养护七队" in ran.out
    assert "权属" not in ran.out  # none registered: no empty line for it
    assert "place: 徐汇区 徐家汇街道 漕溪北路 310104014024001 (area class A)" in ran.out
    ran = await gridwatch("device", "show", "gw1:wl-2", "--url", api.url, token=api.token)
    assert "component 部件: none attached" in ran.out, ran.out


async def test_the_migration_keeps_existing_devices_unattached(registry_url: str) -> None:
    engine = make_engine(registry_url)
    async with engine.begin() as conn:  # the schema before components, with a device in it
        await conn.run_sync(lambda c: migrate.command.upgrade(migrate.alembic_config(c),
                                                              "r0008_i17_health"))  # fmt: skip
        await conn.execute(text("INSERT INTO gateways (id, online, session, software, "
                                "config_version, first_seen, last_seen, config_desired, "
                                "config_acked) VALUES ('gw1', false, 0, '', 0, 1, 1, 0, 0)"))  # fmt: skip
        await conn.execute(text("INSERT INTO devices (id, gateway_id, name, status, first_seen, "
                                "address, firmware) VALUES ('gw1:old', 'gw1', 'old', 'online', "
                                "1, '', '')"))  # fmt: skip
    await engine.dispose()
    store = await RegistryStore.open(registry_url)  # upgrades to head
    try:
        [old] = await store.devices()
        assert (old.id, old.component_id, old.dept_owner) == ("gw1:old", None, None)
        async with store.engine.connect() as conn:
            assert await conn.run_sync(migrate.pending) == []
    finally:
        await store.close()
