"""The dashboard: static HTML, CSS and vanilla JS served by the registry (no build step).

The page itself holds no data, so it is public; everything it shows comes from the API with the
token the user logs in with (``POST /api/v1/session`` keeps it in the ``HttpOnly`` cookie
``gw_token``, which the API accepts like a bearer token), so the dashboard sees exactly what that
token's role may see.

Gateways choose much of what the page shows (alert and device ids, units, messages), so every
response of the dashboard carries a Content-Security-Policy: scripts from this origin only (no
inline code, no injected ``<script>``), Trusted Types so that no HTML string can reach the DOM,
no framing. The page builds its DOM with text APIs; the policy is the second wall. The map
library (Leaflet, shipped in ``static/`` as npm published it) writes a few constant strings of its
own through ``innerHTML``; the page's one Trusted Types policy (``static/trusted.js``, the only
policy the CSP admits) lets exactly those constants through and refuses any other string.

The map (docs/map.md): ``GET /api/v1/map`` gives the devices' positions (WGS-84) and a box per
grid cell around its devices, so the page draws the district without any tile server; the tile
URL of the city's own GIS server, if any, comes from ``GRIDWATCH_MAP_TILES`` and is the one
other origin the page may load images from.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import IO
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from device_registry.db.tables import Device, Site
from device_registry.http.auth import public
from device_registry.http.state import STORE
from gridwatch.ground import i18n
from gridwatch.ground.places import shipped_places
from gridwatch.ground.shipped import shipped

logger = logging.getLogger(__name__)

# package data, so an installed registry serves the same files as a checkout
STATIC = shipped("device_registry.http", "static")

TILES_ENV = "GRIDWATCH_MAP_TILES"
ATTRIBUTION_ENV = "GRIDWATCH_MAP_ATTRIBUTION"


@dataclass(frozen=True)
class Tiles:
    """The city GIS server's tiles: a URL template with ``{z}``, ``{x}`` and ``{y}``."""

    url: str
    origin: str
    attribution: str


def tiles_from(env: Mapping[str, str]) -> Tiles | None:
    """The tile server the environment names; None: no tiles (the default), and when the URL
    is no http(s) template with {z}, {x}, {y} (logged: the map still draws without tiles)."""
    url = env.get(TILES_ENV, "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or any(f"{{{k}}}" not in url for k in "zxy")
    ):
        logger.error("%s=%r is not an http(s) URL with {z}, {x} and {y}: the map draws "
                     "without tiles", TILES_ENV, url)  # fmt: skip
        return None
    return Tiles(url, f"{parts.scheme}://{parts.netloc}", env.get(ATTRIBUTION_ENV, "").strip())


def csp(tiles: Tiles | None) -> str:
    images = "img-src 'self'" + (f" {tiles.origin}" if tiles else "")
    return "; ".join([
        "default-src 'self'", "script-src 'self'", "style-src 'self'", images,
        "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'",
        "frame-ancestors 'none'", "require-trusted-types-for 'script'", "trusted-types default",
    ])  # fmt: skip


def headers(tiles: Tiles | None) -> dict[str, str]:
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": csp(tiles),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # our own writes keep a Referer (a fallback for Origin)
        "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP level 2
    }


@public
async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=headers(tiles_from(os.environ)))


@public
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard")


@public
async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file():  # no way out of the folder
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=headers(tiles_from(os.environ)))


# ---- the page's words ----------------------------------------------------------------------------

DOMAIN = "dashboard"
"""The dashboard's message catalogue: gridwatch/locale/<lang>/LC_MESSAGES/dashboard.po, its
English source texts taken from static/*.js (t, tn, N_) and static/index.html (data-i18n)."""
TAGS: Mapping[i18n.Lang, tuple[str, str]] = {"zh_CN": ("zh-CN", "中文"), "en": ("en", "English")}
"""Each language as the page's ``<html lang>`` names it, and its name in itself (the toggle)."""


class MessagesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lang: str | None = Field(default=None, max_length=35, description="The language picked on "
                             "the page (zh-CN or en); default: the Accept-Language header's.")  # fmt: skip


class Language(BaseModel):
    code: str = Field(description="A language tag, as <html lang> takes it.")
    name: str = Field(description="Its name, in itself.")


class MessagesView(BaseModel):
    lang: str = Field(description="The language chosen: zh-CN (the default) or en.")
    languages: list[Language]
    messages: dict[str, str] = Field(description="English source text -> its words in `lang` "
                                     "(English: empty, the source is the text).")  # fmt: skip


class _I18nAttrs(HTMLParser):
    """The English texts index.html names for translation: ``data-i18n`` (an element's text) and
    ``data-i18n-label`` (its aria-label)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("data-i18n", "data-i18n-label") and value:
                self.found.append((self.getpos()[0], value))


def extract_html(
    fileobj: IO[bytes], keywords: object, comment_tags: object, options: object
) -> Iterator[tuple[int, str, str, list[str]]]:
    """A babel extractor (``make i18n``, gridwatch/locale/dashboard.cfg) for index.html's texts;
    babel's own JavaScript extractor takes the scripts'."""
    parser = _I18nAttrs()
    parser.feed(fileobj.read().decode("utf-8"))
    for line, text in parser.found:
        yield line, "", text, []


def chosen(picked: str | None, accept_language: str | None) -> i18n.Lang:
    """The page's language: the one picked on the page, else the browser's, else Chinese."""
    return i18n.negotiate(picked) if picked else i18n.negotiate(accept_language)


async def messages(request: web.Request, query: MessagesQuery) -> MessagesView:
    lang = chosen(query.lang, request.headers.get("Accept-Language"))
    return MessagesView(
        lang=TAGS[lang][0],
        languages=[Language(code=tag, name=name) for tag, name in TAGS.values()],
        messages=i18n.catalog(lang, DOMAIN),
    )


# ---- the map's data ---------------------------------------------------------------------------

CELL_PAD_M = 60.0
"""A grid cell is drawn as the box around its devices, this far beyond the outermost: the
registry knows no cell boundaries (docs/map.md)."""
METRES_PER_DEGREE = 111_320.0


class MapDevice(BaseModel):
    id: str = Field(description="Registry id: '<gateway>:<device>'.")
    gateway: str
    device: str
    lat: float = Field(description="WGS-84 latitude.")
    lon: float = Field(description="WGS-84 longitude.")
    own: bool = Field(description="The device's own position; false: its site's, a guess.")
    district: str = ""
    street: str = ""
    grid: str = ""


class MapCell(BaseModel):
    district: str
    grid: str
    south: float
    west: float
    north: float
    east: float
    devices: int = Field(description="Its devices with a position.")


class PlaceName(BaseModel):
    zh: str
    en: str


class MapView(BaseModel):
    devices: list[MapDevice] = Field(description="Devices with a position (not retired).")
    unplaced: int = Field(description="Devices with no position, theirs or their site's.")
    cells: list[MapCell] = Field(description="Each grid cell as the box around its devices, "
                                 f"{CELL_PAD_M:.0f} m beyond them (no boundaries are known).")  # fmt: skip
    tiles: str | None = Field(description=f"Tile URL template ({TILES_ENV}); null: none.")
    attribution: str = Field(description=f"Shown under the map ({ATTRIBUTION_ENV}).")
    places: dict[str, PlaceName] = Field(default_factory=dict, description="The name of each "
                                         "district (6-digit code) and street or town (9-digit "
                                         "code) of the places data, in Chinese and English, "
                                         "for headings that would show a code.")  # fmt: skip


def place_names() -> dict[str, PlaceName]:
    """Code -> name of every district and street of the shipped places data."""
    out: dict[str, PlaceName] = {}
    for code, places in shipped_places().items():
        out[code] = PlaceName(zh=places.district.zh, en=places.district.en)
        out.update({st.code: PlaceName(zh=st.zh, en=st.en) for st in places.streets})
    return out


Row = tuple[str, str, str, float | None, float | None, str | None, str, str, float | None,
            float | None]  # fmt: skip
"""device id, gateway, name, own lat, own lon, district, street, grid, site lat, site lon"""


def placed(rows: Iterable[Row]) -> tuple[list[MapDevice], int]:
    """Devices at their own position, else their site's; and how many have neither."""
    out: list[MapDevice] = []
    unplaced = 0
    for key, gw, name, lat, lon, district, street, grid, s_lat, s_lon in rows:
        own = lat is not None and lon is not None
        at = (lat, lon) if own else (s_lat, s_lon)
        if at[0] is None or at[1] is None:
            unplaced += 1
            continue
        out.append(MapDevice(id=key, gateway=gw, device=name, lat=at[0], lon=at[1], own=own,
                             district=district or "", street=street, grid=grid))  # fmt: skip
    return out, unplaced


def cells(devices: Iterable[MapDevice]) -> list[MapCell]:
    """One box per grid cell that has placed devices, padded by ``CELL_PAD_M``."""
    members: dict[tuple[str, str], list[MapDevice]] = defaultdict(list)
    for d in devices:
        if d.grid:
            members[(d.district, d.grid)].append(d)
    out = []
    for (district, grid), ds in sorted(members.items()):
        south, north = min(d.lat for d in ds), max(d.lat for d in ds)
        west, east = min(d.lon for d in ds), max(d.lon for d in ds)
        dlat = CELL_PAD_M / METRES_PER_DEGREE
        dlon = dlat / max(math.cos(math.radians((south + north) / 2)), 0.01)
        out.append(MapCell(district=district, grid=grid, south=south - dlat, west=west - dlon,
                           north=north + dlat, east=east + dlon, devices=len(ds)))  # fmt: skip
    return out


async def map_data(request: web.Request) -> MapView:
    query = (
        select(Device.id, Device.gateway_id, Device.name, Device.lat, Device.lon,
               Site.district_id, Site.street, Site.grid, Site.lat, Site.lon)
        .outerjoin(Site, Site.id == Device.site_id)
        .where(Device.retired_at.is_(None))
        .order_by(Device.id)
    )  # fmt: skip
    async with request.app[STORE].transaction() as s:
        rows = [tuple(r) for r in await s.execute(query)]
    devices, unplaced = placed(rows)
    tiles = tiles_from(os.environ)
    return MapView(devices=devices, unplaced=unplaced, cells=cells(devices),
                   tiles=tiles.url if tiles else None,
                   attribution=tiles.attribution if tiles else "",
                   places=place_names())  # fmt: skip
