"""One resolution of district, street, grid cell and site (device_registry/inventory/places.py),
on SQLite and PostgreSQL: writers racing for the same new place make one row of each, no error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from device_registry import Changes, RegistryStore
from device_registry.db.tables import Base, District, GridCell, Site, Street
from device_registry.inventory.places import PlaceKey, place_key, resolve_site, resolve_sites
from gridwatch.ground.contract import AlertState, Birth, DeviceInfo, Location
from tests._central_helpers import alert

KEYS = [
    # (location, its site key)
    (Location(), None),
    (Location(street="Shennan Rd", grid="FT-1"), None),  # no district: nowhere
    (Location(district="futian"), ("futian", "", "")),
    (Location(district="futian", grid="FT-1"), ("futian", "", "FT-1")),
    (Location(district="futian", street="Shennan Rd", grid="FT-1", lat=22.5), ("futian", "Shennan Rd", "FT-1")),
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


SAME = Location(district="d-new", street="Shennan Rd", grid="FT-0001", lat=22.54, lon=114.05)
OTHERS = [
    Location(district="d-new", street="Shennan Rd", grid="FT-0002"),
    Location(district="d-new", street="Fuhua Rd", grid="FT-0001"),
    Location(district="d-new", grid="FT-0003"),
    Location(district="d-other", street="Shennan Rd", grid="OT-0001"),
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
                return {("d-new", "Shennan Rd", "FT-0001"): site}
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
        first = await s.get(Site, ids[("d-new", "Shennan Rd", "FT-0001")].pop())
        cell = await s.get(GridCell, "OT-0001")
    assert first is not None and (first.lat, first.lon) == (22.54, 114.05)
    assert cell is not None and cell.district_id == "d-other"


async def test_a_place_resolved_again_is_the_same_site(store: RegistryStore) -> None:
    async with store.transaction() as s:
        first = await resolve_site(s, SAME)
        again = await resolve_site(s, SAME.model_copy(update={"lat": 1.0}))
        nowhere = await resolve_site(s, Location(street="Shennan Rd"))
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
