"""The dashboard: static HTML, CSS and vanilla JS served by the registry (no build step).

The page itself holds no data, so it is public; everything it shows comes from the API with the
token the user logs in with (kept in the ``gw_token`` cookie, which the API accepts like a bearer
token), so the dashboard sees exactly what that token's role may see.
"""

from __future__ import annotations

from aiohttp import web

from device_registry.http.auth import public
from gridwatch.ground.shipped import shipped

# package data, so an installed registry serves the same files as a checkout
STATIC = shipped("device_registry.http", "static")


@public
async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@public
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard")


@public
async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file():  # no way out of the folder
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


def install(app: web.Application) -> None:
    app.add_routes([
        web.get("/", root),
        web.get("/dashboard", page),
        web.get("/static/{name}", asset),
    ])  # fmt: skip
