"""One resolution of district, street, grid cell and site (device_registry/inventory/places.py),
on SQLite and PostgreSQL: writers racing for the same new place make one row of each, no error;
each device keeps its own coordinates (the site's only stand in), checked where they enter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomqtt
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, text

from cloud_bridge import SqliteSink
from device_registry import Changes, RegistryStore
from device_registry.db import migrate
from device_registry.db.engine import make_engine
from device_registry.db.tables import Base, Device, District, Gateway, GridCell, Site, Street
from device_registry.http.app import build_app, serving
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from device_registry.inventory import csvimport
from device_registry.inventory.places import (
    PlaceKey,
    located,
    place_key,
    resolve_site,
    resolve_sites,
    shared_place,
)
from device_registry.inventory.requests import DeviceCreate, GatewayPatch
from device_registry.inventory.wiring import InstallerSettings
from gridwatch.ground.contract import AlertState, Birth, DeviceInfo, Location, PlatformAlert, Topics
from gridwatch.top.cli import main as cli
from tests._central_helpers import alert, bridge_config, bridge_on, now_ms, publisher
from tests.services import Mosquitto

KEYS = [
    # (location, its site key)
    (Location(), None),
    (Location(street="漕溪北路", grid="310104017021001"), None),  # no district: nowhere
    (Location(district="310104"), ("310104", "", "")),
    (Location(district="310104", grid="310104017021001"), ("310104", "", "310104017021001")),
    (Location(district="310104", street="漕溪北路", grid="310104017021001", lat=31.2), ("310104", "漕溪北路", "310104017021001")),
]  # fmt: skip


@pytest.mark.parametrize(("loc", "key"), KEYS)
def test_place_key(loc: Location, key: PlaceKey | None) -> None:
    assert place_key(loc) == key


@pytest.fixture
async def store(registry_url: str) -> AsyncIterator[RegistryStore]:
    s = await RegistryStore.open(registry_url)
    yield s
    await s.close()


async def count(store: RegistryStore, table: type[Base]) -> int:
    async with store.transaction() as s:
        return int(await s.scalar(select(func.count()).select_from(table)) or 0)


async def counts(store: RegistryStore) -> dict[str, int]:
    return {t.__tablename__: await count(store, t) for t in (District, Street, GridCell, Site)}


SAME = Location(district="d-new", street="漕溪北路", grid="310104017021001", lat=31.19, lon=121.43)
OTHERS = [
    Location(district="d-new", street="漕溪北路", grid="310104017021002"),
    Location(district="d-new", street="肇嘉浜路", grid="310104017021001"),
    Location(district="d-new", grid="310104017021003"),
    Location(district="d-other", street="漕溪北路", grid="OT-0001"),
]


async def test_twenty_writers_racing_for_one_new_place_make_one_row_each(
    store: RegistryStore, registry_url: str
) -> None:
    writers = 20
    start = asyncio.Barrier(writers)
    # a second store on the same database: its own engine and connections, as another
    # registry or bridge process has
    other = await RegistryStore.open(registry_url)

    async def one(i: int) -> dict[PlaceKey, int]:
        async with (store if i % 4 < 2 else other).transaction() as s:
            await start.wait()  # all at once, each in its own transaction
            if i % 2:
                site = await resolve_site(s, SAME)
                assert site is not None
                return {("d-new", "漕溪北路", "310104017021001"): site}
            # the overlapping places, each writer in another order
            places = [SAME, *OTHERS]
            k = i // 2 % len(places)
            return await resolve_sites(s, places[k:] + places[:k])

    try:
        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(writers))), 60)
    finally:
        await other.close()
    ids: dict[PlaceKey, set[int]] = {}
    for found in results:
        for key, site in found.items():
            ids.setdefault(key, set()).add(site)
    assert all(len(sites) == 1 for sites in ids.values()), ids
    assert len(ids) == 1 + len(OTHERS)
    assert await counts(store) == {"districts": 2, "streets": 3, "grid_cells": 4, "sites": 5}
    async with store.transaction() as s:
        first = await s.get(Site, ids[("d-new", "漕溪北路", "310104017021001")].pop())
        cell = await s.get(GridCell, "OT-0001")
    assert first is not None and (first.lat, first.lon) == (31.19, 121.43)
    assert cell is not None and cell.district_id == "d-other"


async def test_a_place_resolved_again_is_the_same_site(store: RegistryStore) -> None:
    async with store.transaction() as s:
        first = await resolve_site(s, SAME)
        again = await resolve_site(s, SAME.model_copy(update={"lat": 1.0}))
        nowhere = await resolve_site(s, Location(street="漕溪北路"))
    async with store.transaction() as s:
        later = await resolve_site(s, SAME)
    assert first == again == later and first is not None and nowhere is None
    assert await counts(store) == {"districts": 1, "streets": 1, "grid_cells": 1, "sites": 1}


async def test_ingest_and_installers_share_the_place(store: RegistryStore) -> None:
    """An alert's or a birth's location makes the street and grid cell an installer's would,
    and all name one site, however they interleave."""

    async def ingest(i: int) -> None:
        ev = alert(f"g{i}", f"a{i}", AlertState.RAISED, 100 + i)  # north / Main St / G7
        seen = {(f"g{i}", "d1"): 100 + i}  # the alerting device, as its telemetry would
        await store.apply(Changes(now=1000 + i, alerts=[ev], device_seen=seen))

    async def born(i: int) -> None:  # a gateway's birth says where its devices are
        here = Location(district="north", street="Main St", grid="G7")
        info = DeviceInfo(device="d2", profile="p", location=here)
        b = Birth(gateway=f"g{i}", session=1, ts=100, devices=["d2"], device_info=[info])
        await store.apply(Changes(now=1000 + i, status=[b]))

    async def install() -> int | None:
        async with store.transaction() as s:
            return await resolve_site(s, Location(district="north", street="Main St", grid="G7"))

    done = await asyncio.wait_for(
        asyncio.gather(
            *(ingest(i) for i in range(5)),
            *(born(i) for i in range(5)),
            *(install() for _ in range(5)),
        ),
        60,
    )
    assert await counts(store) == {"districts": 1, "streets": 1, "grid_cells": 1, "sites": 1}
    site = {d for d in done if d is not None}
    devices = await store.devices(district="north")
    assert len(site) == 1 and len(devices) == 10  # d1 by its alert, d2 by the birth
    async with store.transaction() as s:
        sited = set(await s.scalars(select(Site.id).where(Site.grid == "G7")))
    assert sited == site


# ---- each device's own coordinates ------------------------------------------------------------

SHARED = Location(district="310104", street="漕溪北路", grid="310104014024001")

# (locations, the place they share, whether they agreed on all of it)
SHARED_PLACES = [
    ([], Location(), True),
    ([SHARED, SHARED.model_copy(update={"lat": 31.2, "lon": 121.4})], SHARED, True),
    ([SHARED, SHARED.model_copy(update={"grid": "310104003019001"})],
     Location(district="310104", street="漕溪北路"), False),
    ([SHARED, Location(district="310106", grid="310104014024001")], Location(), False),
    ([SHARED, Location()], Location(), False),
]  # fmt: skip


@pytest.mark.parametrize(("locs", "shared", "agreed"), SHARED_PLACES)
def test_shared_place(locs: list[Location], shared: Location, agreed: bool) -> None:
    assert shared_place(locs) == (shared, agreed)


# (site coordinates, own coordinates, the coordinates shown)
LOCATED = [
    ((31.2, 121.4), (None, None), (31.2, 121.4)),  # none of its own: the site's stand in
    ((31.2, 121.4), (31.19311, 121.43721), (31.19311, 121.43721)),  # its own win
    ((None, None), (31.19311, 121.43721), (31.19311, 121.43721)),
    ((None, None), (None, None), (None, None)),
]


@pytest.mark.parametrize(("site", "own", "shown"), LOCATED)
def test_located(
    site: tuple[float | None, float | None],
    own: tuple[float | None, float | None],
    shown: tuple[float | None, float | None],
) -> None:
    row = Site(id=1, district_id="310104", street="漕溪北路", grid="310104014024001",
               lat=site[0], lon=site[1])  # fmt: skip
    loc = located(row, own)
    assert (loc.lat, loc.lon) == shown and (loc.district, loc.grid) == ("310104", "310104014024001")


# (where a coordinate enters, the field named in the refusal)
OUT_OF_RANGE = [
    ({"lat": 131.19, "lon": 121.43}, "lat"),
    ({"lat": -90.5, "lon": 121.43}, "lat"),
    ({"lat": 31.19, "lon": 184.05}, "lon"),
    ({"lat": 31.19, "lon": -180.01}, "lon"),
]


@pytest.mark.parametrize(("coords", "field"), OUT_OF_RANGE)
def test_a_coordinate_out_of_range_is_refused_where_it_enters(
    coords: dict[str, float], field: str
) -> None:
    """The contract (a birth's device info, an alert), the API's request models and a CSV row."""
    with pytest.raises(ValidationError) as wire:
        DeviceInfo.model_validate({"device": "d1", "location": {"district": "310104", **coords}})
    assert [e["loc"] for e in wire.value.errors()] == [("location", field)]
    with pytest.raises(ValidationError) as api:
        DeviceCreate.model_validate(
            {"gateway": "gw", "id": "d1", "profile": "p", "bus": "b", "location": coords}
        )
    assert [e["loc"] for e in api.value.errors()] == [("location", field)]
    with pytest.raises(ValidationError):
        GatewayPatch.model_validate({"location": coords})
    text = f"gateway,id,profile,bus,lat,lon\ngw,d1,p,b,{coords['lat']},{coords['lon']}\n"
    [report] = csvimport.parse(text).bad
    [(where, message)] = report.errors
    span = "-90 to 90" if field == "lat" else "-180 to 180"
    assert (report.line, where) == (2, field) and span in message, report


@pytest.mark.parametrize("coords", [{"lat": 31.19}, {"lon": 121.43}])
def test_coordinates_come_as_a_pair(coords: dict[str, float]) -> None:
    """A latitude alone sends a crew nowhere; the edge would complete it with its cabinet's."""
    with pytest.raises(ValidationError) as api:
        DeviceCreate.model_validate(
            {"gateway": "gw", "id": "d1", "profile": "p", "bus": "b", "location": coords}
        )
    assert [(e["loc"], e["msg"]) for e in api.value.errors()] == [
        (("location",), "lat and lon go together: give both, or neither")
    ]
    with pytest.raises(ValidationError):
        GatewayPatch.model_validate({"location": coords})
    [(column, value)] = coords.items()
    [report] = csvimport.parse(f"gateway,id,profile,bus,{column}\ngw,d1,p,b,{value}\n").bad
    assert report.errors == [("lat/lon", "lat and lon go together: give both, or neither")]


async def test_the_migration_copies_the_site_coordinates_to_each_device(registry_url: str) -> None:
    """Devices registered before r0006 keep what they were shown: their site's coordinates."""
    engine = make_engine(registry_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: migrate.command.upgrade(migrate.alembic_config(c), "r0005"))
        await conn.execute(text("INSERT INTO districts (id, name) VALUES ('310104', '')"))
        await conn.execute(text("INSERT INTO sites (id, district_id, street, grid, lat, lon) "
                                "VALUES (7, '310104', '', '310104017021001', 31.2, 121.5)"))  # fmt: skip
        await conn.execute(text("INSERT INTO gateways (id, site_id, online, session, software, "
                                "config_version, first_seen, last_seen, config_desired, "
                                "config_acked) VALUES ('gw', 7, false, 0, '', 0, 1, 1, 0, 0)"))  # fmt: skip
        for dev, site in (("gw:a", "7"), ("gw:b", "NULL")):
            await conn.execute(text(f"INSERT INTO devices (id, gateway_id, name, site_id, status, "
                                    f"first_seen, address, firmware) VALUES ('{dev}', 'gw', "
                                    f"'{dev[3:]}', {site}, 'new', 1, '', '')"))  # fmt: skip
    await engine.dispose()
    store = await RegistryStore.open(registry_url)
    try:
        async with store.transaction() as s:
            rows = {d.id: (d.lat, d.lon) for d in await s.scalars(select(Device))}
            gw = await s.get(Gateway, "gw")
        assert rows == {"gw:a": (31.2, 121.5), "gw:b": (None, None)}
        assert gw is not None and (gw.lat, gw.lon) == (31.2, 121.5)
        a = await store.device("gw:a")
        assert (a.lat, a.lon, a.coordinates) == (31.2, 121.5, "device")
    finally:
        await store.close()


async def test_a_gateway_nobody_registered_is_sited_where_its_birth_says(
    store: RegistryStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Its devices' location when they agree (each device keeps its own coordinates), what they
    share when they do not, said in the log."""
    here = SHARED.model_copy(update={"lat": 31.19311, "lon": 121.43721})
    there = SHARED.model_copy(update={"lat": 31.19388, "lon": 121.43799})
    infos = [DeviceInfo(device="d1", location=here), DeviceInfo(device="d2", location=there)]
    b = Birth(gateway="gw-a", session=1, ts=100, devices=["d1", "d2"], device_info=infos)
    split = [DeviceInfo(device="d3", location=SHARED),
             DeviceInfo(device="d4", location=SHARED.model_copy(update={"grid": "310104003019001"}))]  # fmt: skip
    b2 = Birth(gateway="gw-b", session=1, ts=100, devices=["d3", "d4"], device_info=split)
    await store.apply(Changes(now=1000, status=[b, b2]))
    async with store.transaction() as s:
        places = {gw.id: (site.district_id, site.street, site.grid) for gw, site in
                  await s.execute(select(Gateway, Site).join(Site, Site.id == Gateway.site_id))}  # fmt: skip
    assert places == {"gw-a": ("310104", "漕溪北路", "310104014024001"),
                      "gw-b": ("310104", "漕溪北路", "")}  # fmt: skip
    assert "gw-b connected unregistered; its devices are in 2 places" in caplog.text
    d1, d2 = await store.device("gw-a:d1"), await store.device("gw-a:d2")
    assert (d1.lat, d1.lon, d2.lat, d2.lon) == (31.19311, 121.43721, 31.19388, 121.43799)
    assert d1.coordinates == d2.coordinates == "device"


CABINET = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "timeout_s": 0.5}
# two manholes and a gauge in one grid cell, on one street, metres apart
WL_A, WL_B, MH_C = (31.19311, 121.43721), (31.19388, 121.43799), (31.19350, 121.43750)


@pytest.mark.timeout(120)
async def test_devices_in_one_grid_cell_keep_their_own_coordinates_to_the_platform_alert(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the CSV import, the API, ``device show`` (text and --json), the generated config
    and the PlatformAlert a crew is sent with: each device its own, not the first registered."""
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    token = (await issue(store, TokenRequest(name="anna", role=Role.INSTALLER), SYSTEM)).token
    app = build_app(store=store, installers=InstallerSettings())
    gw = f"gw-{prefix}"
    cell = "district=310104,street=漕溪北路,grid=310104014024001"
    csv = ("gateway,id,profile,bus,unit_id,district,street,grid,lat,lon\n"
           f"{gw},wl-a,water-level-ultrasonic,cabinet,1,310104,漕溪北路,310104014024001,{WL_A[0]},{WL_A[1]}\n"
           f"{gw},wl-b,water-level-ultrasonic,cabinet,2,310104,漕溪北路,310104014024001,{WL_B[0]},{WL_B[1]}\n")  # fmt: skip
    try:
        async with (
            serving(app, "127.0.0.1", 0) as url,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        ):
            where = dict(kv.split("=") for kv in cell.split(","))
            body = {"id": gw, "location": {**where, "lat": 31.1900, "lon": 121.4300},
                    "buses": [CABINET]}  # fmt: skip
            async with http.post(url + "/api/v1/gateways", json=body) as r:
                assert r.status == 201, await r.text()
            async with http.post(url + "/api/v1/devices/import", data=csv,
                                 headers={"Content-Type": "text/csv"}) as r:  # fmt: skip
                assert r.status == 200, await r.text()
            for dev, coords, unit in (("mh-c", MH_C, 3), ("sd-d", None, 4)):
                loc = {**where, **({"lat": coords[0], "lon": coords[1]} if coords else {})}
                body = {"gateway": gw, "id": dev, "profile": "manhole-tilt", "bus": "cabinet",
                        "unit_id": unit, "location": loc}  # fmt: skip
                async with http.post(url + "/api/v1/devices", json=body) as r:
                    assert r.status == 201, await r.text()
                    shown = await r.json()
                    assert (shown["lat"], shown["lon"]) == (coords or (31.19, 121.43)), shown
            async with http.get(url + f"/api/v1/gateways/{gw}/config") as r:
                config = {d["id"]: d.get("location", {}) for d in (await r.json())["devices"]}
            shown = {}
            for dev in ("wl-a", "wl-b", "mh-c", "sd-d"):
                args = ["device", "show", f"{gw}:{dev}", "--url", url, "--token", token]
                assert await asyncio.to_thread(cli, [*args, "--json"]) == 0
                d = json.loads(capsys.readouterr().out)
                shown[dev] = (d["lat"], d["lon"], d["coordinates"])
                assert await asyncio.to_thread(cli, args) == 0
                text_out = capsys.readouterr().out
                assert f"coordinates: {d['lat']}, {d['lon']}" in text_out, text_out
        assert shown == {"wl-a": (*WL_A, "device"), "wl-b": (*WL_B, "device"),
                         "mh-c": (*MH_C, "device"),
                         "sd-d": (31.19, 121.43, "site")}  # fmt: skip
        # the edge gets each device's own, and a device without its own the cabinet's
        assert (config["wl-a"]["lat"], config["wl-b"]["lon"]) == (WL_A[0], WL_B[1])
        assert (config["sd-d"]["lat"], config["sd-d"]["lon"]) == (31.19, 121.43)

        # alerts that come in at the cabinet's coordinates go out at each device's own
        sink = await SqliteSink.open(tmp_path / "ts.db")
        topics = Topics(prefix)
        gateway_said = Location(**where, lat=31.19, lon=121.43)
        events = [alert(gw, f"a-{d}", AlertState.RAISED, now_ms()).model_copy(
                      update={"device": d, "location": gateway_said})
                  for d in ("wl-a", "wl-b", "mh-c")]  # fmt: skip
        got: dict[str, tuple[float | None, float | None]] = {}
        async with (
            bridge_on(bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store,
                      sink),
            aiomqtt.Client(mosquitto.host, mosquitto.port) as city,
        ):  # fmt: skip
            await city.subscribe(topics.platform_alerts(), qos=1)
            async with publisher(mosquitto.host, mosquitto.port) as pub:
                for ev in events:
                    await pub.publish(topics.alert(gw), ev.model_dump_json(), qos=1)
            async with asyncio.timeout(15):
                async for m in city.messages:
                    pa = PlatformAlert.model_validate_json(m.payload)
                    got[pa.device] = (pa.location.lat, pa.location.lon)
                    if len(got) == len(events):
                        break
        await sink.close()
        assert got == {"wl-a": WL_A, "wl-b": WL_B, "mh-c": MH_C}
    finally:
        await store.close()


async def test_an_alert_gives_coordinates_only_to_a_device_nobody_registered(
    store: RegistryStore,
) -> None:
    """Where its gateway says (nothing better is known); a registered device keeps the
    installer's, whatever an alert that reaches the store says."""
    async with store.transaction() as s:
        s.add(Gateway(id="g1", first_seen=1, last_seen=1))
        await s.flush()  # no ORM relationship orders the two inserts
        s.add(Device(id="g1:d9", gateway_id="g1", name="d9", first_seen=1, registered_at=1,
                     lat=31.19311, lon=121.43721))  # fmt: skip
    said = Location(district="north", street="Main St", grid="G7", lat=22.6, lon=114.2)
    events = [alert("g1", f"a-{d}", AlertState.RAISED, 100).model_copy(
                  update={"device": d, "location": said}) for d in ("d1", "d9")]  # fmt: skip
    await store.apply(Changes(now=1000, alerts=events, device_seen={("g1", "d1"): 100}))
    d1, d9 = await store.device("g1:d1"), await store.device("g1:d9")
    assert (d1.lat, d1.lon, d1.coordinates) == (22.6, 114.2, "device")
    assert (d9.lat, d9.lon, d9.coordinates) == (31.19311, 121.43721, "device")
