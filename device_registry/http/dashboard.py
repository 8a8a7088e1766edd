"""The dashboard: static HTML, CSS and vanilla JS served by the registry (no build step).

The page itself holds no data, so it is public; everything it shows comes from the API with the
token the user logs in with (``POST /api/v1/session`` keeps it in the ``HttpOnly`` cookie
``gw_token``, which the API accepts like a bearer token), so the dashboard sees exactly what that
token's role may see.

Gateways choose much of what the page shows (alert and device ids, units, messages), so every
response of the dashboard carries a Content-Security-Policy: scripts from this origin only (no
inline code, no injected ``<script>``), Trusted Types so that no HTML string can reach the DOM,
no framing. The page builds its DOM with text APIs; the policy is the second wall.
"""

from __future__ import annotations

from aiohttp import web

from device_registry.http.auth import public
from gridwatch.ground.shipped import shipped

# package data, so an installed registry serves the same files as a checkout
STATIC = shipped("device_registry.http", "static")


CSP = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'",
    "frame-ancestors 'none'", "require-trusted-types-for 'script'", "trusted-types 'none'",
])  # fmt: skip
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # our own writes keep a Referer (a fallback for Origin)
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP level 2
}


@public
async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=HEADERS)


@public
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard")


@public
async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = (STATIC / name).resolve()
    if path.parent != STATIC or not path.is_file():  # no way out of the folder
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers=HEADERS)
