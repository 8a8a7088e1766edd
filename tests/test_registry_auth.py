"""Every route of the app x every role: allowed, 403, or (no token) 401 — on SQLite and PostgreSQL.

``EXPECTED`` is written out here, route by route: it is what the roles must be, not a copy of what
the rooms declare. The app may not serve a route that has no row (nor lack one that has).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import hdrs, web

from device_registry import RegistryStore
from device_registry.http.app import build_app, serving
from device_registry.http.auth import COOKIE, SYSTEM, Role, TokenRequest, issue

INS, MNT, OPR, PLT, ADM = Role.INSTALLER, Role.MAINTENANCE, Role.OPERATOR, Role.PLATFORM, Role.ADMIN
READERS = {INS, MNT, OPR, PLT, ADM}
WATCHERS = {OPR, MNT, PLT, ADM}
PUBLIC: set[Role] = set()

EXPECTED: dict[tuple[str, str], set[Role]] = {
    # public: liveness, the API's description, metrics, the dashboard's page and files
    ("GET", "/health"): PUBLIC,
    ("GET", "/api/v1/openapi.json"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/dashboard"): PUBLIC,
    ("GET", "/static/{name}"): PUBLIC,
    ("GET", "/dashboard/messages"): PUBLIC,  # the page's words: the login form needs them too
    # the browser's session: logging in and out need no token; who am I needs one
    ("POST", "/api/v1/session"): PUBLIC,
    ("DELETE", "/api/v1/session"): PUBLIC,
    ("GET", "/api/v1/session"): READERS,
    # inventory
    ("GET", "/api/v1/gateways"): READERS,
    ("POST", "/api/v1/gateways"): {INS, ADM},
    ("GET", "/api/v1/gateways/{id}"): READERS,
    ("PATCH", "/api/v1/gateways/{id}"): {INS, ADM},
    ("PATCH", "/api/v1/gateways/{id}/buses/{bus}"): {INS, ADM},
    ("POST", "/api/v1/gateways/{id}/retire"): {INS, ADM},
    ("POST", "/api/v1/gateways/{id}/credentials"): {INS, ADM},
    ("GET", "/api/v1/gateways/{id}/config"): {INS, MNT, ADM},
    ("GET", "/api/v1/devices"): READERS,
    ("GET", "/api/v1/map"): READERS,  # positions, as the device list gives them
    ("POST", "/api/v1/devices"): {INS, ADM},
    ("GET", "/api/v1/devices/{id}"): READERS,
    ("PATCH", "/api/v1/devices/{id}"): {INS, MNT, ADM},
    ("POST", "/api/v1/devices/{id}/retire"): {INS, ADM},
    ("POST", "/api/v1/devices/import"): {INS, ADM},
    ("POST", "/api/v1/devices/{id}/commands"): {OPR, ADM},
    ("GET", "/api/v1/commands/{id}"): {OPR, MNT, INS, ADM},
    ("GET", "/api/v1/profiles"): READERS,
    ("GET", "/api/v1/profiles/{id}"): READERS,
    # alerts and their operations
    ("GET", "/api/v1/alerts"): WATCHERS,
    ("GET", "/api/v1/alerts/lifecycle"): WATCHERS,
    ("GET", "/api/v1/alerts/{id}"): WATCHERS,
    ("POST", "/api/v1/alerts/{id}/file"): {OPR, ADM},
    ("POST", "/api/v1/alerts/{id}/dispatch"): {OPR, ADM},
    ("POST", "/api/v1/alerts/{id}/dispose"): {OPR, ADM},
    ("POST", "/api/v1/alerts/{id}/verify"): {OPR, ADM},
    ("POST", "/api/v1/alerts/{id}/reject"): {OPR, ADM},
    ("POST", "/api/v1/alerts/{id}/close"): {OPR, ADM},
    ("POST", "/api/v1/alerts/{id}/urge"): {OPR, ADM},
    ("POST", "/api/v1/alerts/close"): {OPR, ADM},
    ("POST", "/api/v1/incidents/{id}/file"): {OPR, ADM},
    ("POST", "/api/v1/incidents/{id}/dispatch"): {OPR, ADM},
    ("POST", "/api/v1/incidents/{id}/dispose"): {OPR, ADM},
    ("POST", "/api/v1/incidents/{id}/verify"): {OPR, ADM},
    ("POST", "/api/v1/incidents/{id}/reject"): {OPR, ADM},
    ("POST", "/api/v1/incidents/{id}/close"): {OPR, ADM},
    ("POST", "/api/v1/incidents/{id}/urge"): {OPR, ADM},
    # delivery
    ("GET", "/api/v1/alerts/stream"): {PLT, OPR, ADM},
    ("GET", "/api/v1/webhooks"): {ADM},
    ("POST", "/api/v1/webhooks"): {ADM},
    ("DELETE", "/api/v1/webhooks/{id}"): {ADM},
    ("GET", "/api/v1/webhooks/dead-letters"): {OPR, ADM},
    ("POST", "/api/v1/webhooks/dead-letters/{id}/replay"): {OPR, ADM},
    # health
    # an installer commissioning a cabinet checks its health before leaving
    ("GET", "/api/v1/health"): {MNT, OPR, INS, ADM},
    ("GET", "/api/v1/devices/{id}/readings"): {MNT, OPR, INS, ADM},
    # ingest
    ("GET", "/api/v1/quarantine"): {MNT, ADM},
    # access
    ("POST", "/api/v1/tokens"): {ADM},
    ("GET", "/api/v1/tokens"): {ADM},
    ("DELETE", "/api/v1/tokens/{id}"): {ADM},
    ("GET", "/api/v1/audit"): {ADM},
}


def served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (aiohttp adds HEAD beside each GET)."""
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method != hdrs.METH_HEAD and r.resource is not None}  # fmt: skip


@dataclass
class Api:
    url: str
    routes: set[tuple[str, str]]
    tokens: dict[Role, str]
    store: RegistryStore


@pytest.fixture
async def api(registry_url: str) -> AsyncIterator[Api]:
    store = await RegistryStore.open(registry_url)
    tokens = {
        role: (await issue(store, TokenRequest(name=f"{role}-t", role=role), SYSTEM)).token
        for role in Role
    }
    app = build_app(store=store)
    try:
        async with serving(app, "127.0.0.1", 0) as base:
            yield Api(base, served(app), tokens, store)
    finally:
        await store.close()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def _status(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> int:
    body = {} if method in ("POST", "PATCH", "PUT") else None
    # only the status: a streaming endpoint (SSE) answers its headers and keeps going
    async with http.request(method, url, json=body, headers=headers, allow_redirects=False) as r:
        return r.status


async def test_every_route_of_the_app_has_a_row_and_every_row_a_route(api: Api) -> None:
    assert sorted(api.routes - EXPECTED.keys()) == [], "routes the table does not list"
    assert sorted(EXPECTED.keys() - api.routes) == [], "rows the app does not serve"


async def test_every_route_times_every_role(api: Api) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for (method, path), allowed in sorted(EXPECTED.items()):
            url = api.url + _concrete(path)
            status = await _status(http, method, url, {})
            if allowed == PUBLIC:
                assert status not in (401, 403), (method, path, status)
                continue
            assert status == 401, (method, path, "no token", status)
            for role in Role:
                headers = {"Authorization": f"Bearer {api.tokens[role]}"}
                status = await _status(http, method, url, headers)
                if role in allowed:
                    assert status not in (401, 403), (method, path, role, status)
                else:
                    assert status == 403, (method, path, role, status)


async def test_tokens_bad_revoked_cookie(api: Api) -> None:
    async with aiohttp.ClientSession() as http:
        devices = api.url + "/api/v1/devices"
        assert await _status(http, "GET", devices, {"Authorization": "Bearer nope"}) == 401
        assert await _status(http, "GET", devices, {"Authorization": "Basic abc"}) == 401
        # the browser dashboard's cookie carries the same token
        assert await _status(http, "GET", devices, {"Cookie": f"{COOKIE}={api.tokens[OPR]}"}) == 200
        admin = {"Authorization": f"Bearer {api.tokens[ADM]}"}
        async with http.post(api.url + "/api/v1/tokens", json={"name": "crew 7", "role": "maintenance"},
                             headers=admin) as r:  # fmt: skip
            assert r.status == 201
            issued = await r.json()
        assert len(issued["token"]) >= 40
        crew = {"Authorization": f"Bearer {issued['token']}"}
        assert await _status(http, "GET", devices, crew) == 200
        async with http.get(api.url + "/api/v1/tokens", headers=admin) as r:
            listed = await r.json()
        assert "token" not in listed[-1] and listed[-1]["name"] == "crew 7"  # never shown again
        async with http.delete(f"{api.url}/api/v1/tokens/{issued['id']}", headers=admin) as r:
            assert r.status == 200
        assert await _status(http, "GET", devices, crew) == 401
        async with http.post(api.url + "/api/v1/tokens", json={"name": "x", "role": "king"},
                             headers=admin) as r:  # fmt: skip
            assert r.status == 422 and (await r.json())["errors"][0]["loc"] == "role"
    async with api.store.transaction() as s:
        from sqlalchemy import select

        from device_registry.db.tables import ApiToken

        hashes = list(await s.scalars(select(ApiToken.sha256)))
    assert issued["token"] not in hashes and all(len(h) == 64 for h in hashes)


ROUTE_MODULES = [
    "device_registry.http.access",
    "device_registry.inventory.routes",
    "device_registry.alerts.routes",
    "device_registry.health.routes",
    "device_registry.delivery.routes",
    "device_registry.ingest.routes",
]


@pytest.mark.parametrize("name", ROUTE_MODULES)
def test_every_declared_route_is_in_its_rooms_routes(name: str) -> None:
    """A handler declared with ``@route`` but left out of its room's ``ROUTES`` would never be
    served, and no other test would notice (the role table compares what is served)."""
    import importlib

    from device_registry.http.routing import Route

    module = importlib.import_module(name)
    declared = {v for v in vars(module).values() if isinstance(v, Route)}
    assert declared - set(module.ROUTES) == set(), f"declared in {name} but not in its ROUTES"


def test_a_new_token_never_looks_like_an_option() -> None:
    """`gridwatch ... --token $T` with a token starting with '-' was refused by argparse
    ("expected one argument"): one token in 64 did. 2,000 draws find a regression almost surely."""
    from device_registry.http.auth import new_token

    assert not any(new_token().startswith("-") for _ in range(2000))
