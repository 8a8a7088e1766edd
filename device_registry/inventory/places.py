"""Where equipment stands: a location's district, street, grid cell and site, found or made,
and what the district's places data says about it (``resolve_place``).

``resolve_place`` answers, for a location: the district (code and names), the street or town
(街道 / 镇: 9-digit code and names), the grid cell and its area class (A core / B / C), from the
places file of the district (``gridwatch.ground.places``, shipped as ``firmware_configs/places``).
A location's ``street`` is the road the equipment stands on as an installer writes it (漕溪北路);
the 街道 comes from the grid cell's code (its street digits), or from ``street`` when that names a
街道 by code or Chinese name. A place the data does not cover keeps its codes with empty names,
and the area class ``DEFAULT_AREA_CLASS`` (B), or the district file's ``default_area_class``:
time limits are never left undefined for want of a grid cell.

One resolution for every writer: ingest (the location an alert carries), device info from a
gateway, and installers registering gateways and devices one by one or by CSV. So a place is the
same rows whoever names it first, and each writer makes the street and grid cell rows too.

Writers run at the same time (bridges, registry processes, a CSV import), so a row is never
checked for and then inserted: each is inserted with INSERT .. ON CONFLICT DO NOTHING on its
unique key (district id; district + street name; grid cell id; district + street + grid) and the
site is read back. The loser of a race reads the winner's row: no error, never a second row. On
PostgreSQL the loser's insert waits for the winner's transaction; a transaction that resolves
several places therefore takes them in one call, in key order, so that two transactions with
overlapping places wait for each other in the same order and cannot deadlock.

A grid cell belongs to one district: the first location to name it decides which. A site's
coordinates are those of the first location that made it, and stand in only for equipment that
has none of its own: a device and a gateway keep their own latitude and longitude (``located``),
because the devices of one street or grid cell stand metres apart and a crew is sent to them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from device_registry.db.engine import upsert
from device_registry.db.tables import Base, District, GridCell, Site, Street
from device_registry.errors import StoreRejected
from gridwatch.ground.contract import Location
from gridwatch.ground.places import (
    DEFAULT_AREA_CLASS,
    AreaClass,
    DistrictPlaces,
    shipped_places,
)

Coordinates = tuple[float | None, float | None]

PlaceKey = tuple[str, str, str]
"""district, street, grid: a site's unique key ("" for a part the location leaves out)."""


def place_key(loc: Location) -> PlaceKey | None:
    """The site key of a location; None when it names no district (it is then nowhere)."""
    return (loc.district, loc.street, loc.grid) if loc.district else None


def site_location(site: Site | None) -> Location:
    """A site as a location (district, street, grid and its stand-in coordinates)."""
    if site is None:
        return Location()
    loc: dict[str, Any] = {"district": site.district_id, "street": site.street,
                           "grid": site.grid, "lat": site.lat, "lon": site.lon}  # fmt: skip
    # as stored, not validated again: a row written before the contract bounded its strings
    # must not stop a read
    return Location.model_construct(**{k: v for k, v in loc.items() if v not in ("", None)})


def located(site: Site | None, own: Coordinates) -> Location:
    """Where a device or gateway is: its site, at its own coordinates when it has them (a
    pair), else at the site's."""
    loc = site_location(site)
    if own == (None, None):
        return loc
    lat, lon = own
    return loc.model_copy(update={"lat": lat, "lon": lon})


def coordinates(loc: Location | None) -> Coordinates:
    """The coordinates a location gives equipment of its own (None, None: none given)."""
    return (None, None) if loc is None else (loc.lat, loc.lon)


def shared_place(locs: Iterable[Location]) -> tuple[Location, bool]:
    """The place every location agrees on (district, then street and grid cell in it; no
    coordinates: a cabinet is not where any one of its devices is), and whether they all agreed
    on all three. Nothing given: nowhere, agreed."""
    keys = {(loc.district, loc.street, loc.grid) for loc in locs}
    if not keys:
        return Location(), True
    districts = {d for d, _, _ in keys}
    if len(districts) != 1:
        return Location(), False
    streets, grids = {st for _, st, _ in keys}, {g for _, _, g in keys}
    shared = Location(district=districts.pop(), street=streets.pop() if len(streets) == 1 else "",
                      grid=grids.pop() if len(grids) == 1 else "")  # fmt: skip
    return shared, len(keys) == 1


class PlaceName(BaseModel):
    code: str = Field(description="Administrative code: 6 digits a district, 9 a street/town.")
    zh: str = Field(default="", description="Chinese name; empty: not in the places data.")
    en: str = Field(default="", description="English name (a pinyin transliteration, unsourced).")


class Place(BaseModel):
    """What the places data says about a location."""

    district: PlaceName | None = Field(description="null: the location names no district.")
    street: PlaceName | None = Field(description="The 街道 or 镇; null: not known.")
    road: str = Field(default="", description="The road, as registered (the location's street).")
    grid: str = Field(default="", description="Grid cell code, as registered.")
    area_class: AreaClass = Field(description="A (core) / B / C: picks disposal time limits; "
                                  "the district's default (B) when the cell is not listed.")  # fmt: skip


def resolve_place(loc: Location, places: Mapping[str, DistrictPlaces] | None = None) -> Place:
    """The district, 街道, grid cell and area class of a location (``places``: by district
    code; default: the shipped places files). Shared answers: do not change one."""
    if places is None:
        return _shipped_place(loc.district, loc.street, loc.grid)
    return _place(loc, places)


@functools.lru_cache(maxsize=8192)
def _shipped_place(district: str, street: str, grid: str) -> Place:
    # a device list shows each device's place: ~30 us to build, the same few places each time
    return _place(Location.model_construct(district=district, street=street, grid=grid),
                  shipped_places())  # fmt: skip


@functools.lru_cache(maxsize=8192)
def place_json(district: str, street: str, grid: str) -> dict[str, Any]:
    """``resolve_place`` of the shipped places as JSON, for lists written without a model per
    row (a page of 1,000 devices has a few places). Shared answers: do not change one."""
    return _shipped_place(district, street, grid).model_dump(mode="json")


def _place(loc: Location, places: Mapping[str, DistrictPlaces]) -> Place:
    data = places.get(loc.district)
    if data is None:
        district = PlaceName(code=loc.district) if loc.district else None
        return Place(district=district, street=None, road=loc.street, grid=loc.grid,
                     area_class=DEFAULT_AREA_CLASS)  # fmt: skip
    named = data.district
    street = data.street_of_cell(loc.grid) or data.by_street.get(loc.street)
    cell = data.by_cell.get(loc.grid)
    return Place(
        district=PlaceName(code=named.code, zh=named.zh, en=named.en),
        street=PlaceName(code=street.code, zh=street.zh, en=street.en) if street else None,
        road="" if street is not None and loc.street in (street.code, street.zh) else loc.street,
        grid=loc.grid, area_class=cell.area_class if cell else data.default_area_class,
    )  # fmt: skip


async def resolve_site(s: AsyncSession, loc: Location) -> int | None:
    """The site id of a location, made with its district, street and grid cell when new."""
    key = place_key(loc)
    return (await resolve_sites(s, [loc]))[key] if key else None


async def resolve_sites(s: AsyncSession, locs: Iterable[Location]) -> dict[PlaceKey, int]:
    """Site ids of many locations at once (those without a district are left out)."""
    first: dict[PlaceKey, Location] = {}
    for loc in locs:
        key = place_key(loc)
        if key is not None:
            first.setdefault(key, loc)
    if not first:
        return {}
    keys = sorted(first)
    await _insert_missing(s, District, [{"id": d} for d in sorted({d for d, _, _ in keys})])
    streets = sorted({(d, st) for d, st, _ in keys if st})
    await _insert_missing(s, Street, [{"district_id": d, "name": st} for d, st in streets])
    cells: dict[str, str] = {}
    for d, _, g in keys:
        if g:
            cells.setdefault(g, d)
    await _insert_missing(
        s, GridCell, [{"id": g, "district_id": d} for g, d in sorted(cells.items())]
    )
    sites = [{"district_id": d, "street": st, "grid": g,
              "lat": first[(d, st, g)].lat, "lon": first[(d, st, g)].lon}
             for d, st, g in keys]  # fmt: skip
    await _insert_missing(s, Site, sites)
    return {key: await _site_id(s, key) for key in keys}


async def _site_id(s: AsyncSession, key: PlaceKey) -> int:
    district, street, grid = key
    found = await s.scalar(
        select(Site.id).filter_by(district_id=district, street=street, grid=grid)
    )
    if found is None:
        # the insert before it made the row or met a committed one: only an isolation level
        # above READ COMMITTED (a snapshot older than the winner's commit) gets here
        raise StoreRejected(f"site {district}/{street}/{grid}: neither inserted nor found")
    return int(found)


async def _insert_missing(s: AsyncSession, model: type[Base], rows: list[dict[str, Any]]) -> None:
    if rows:
        stmt = upsert(s.get_bind().dialect.name, model).on_conflict_do_nothing()
        await s.execute(stmt, rows)
