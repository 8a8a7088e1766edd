"""Where equipment stands: a location's district, street, grid cell and site, found or made.

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

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from device_registry.db.engine import upsert
from device_registry.db.tables import Base, District, GridCell, Site, Street
from device_registry.errors import StoreRejected
from gridwatch.ground.contract import Location

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
