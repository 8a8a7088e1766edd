"""Every endpoint x every role: allowed, 403, or (no token) 401 — on SQLite and PostgreSQL.

The roles live on the handlers (``@requires``); ``EXPECTED`` is the table they must add up to,
and every route of the app, whoever wrote it, must have declared its roles.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from device_registry import RegistryStore
from device_registry.http.app import build_app, serving
from device_registry.http.auth import (
    ALL_ROLES,
    COOKIE,
    PUBLIC,
    SYSTEM,
    Role,
    TokenRequest,
    access_table,
    issue,
)

INS, MNT, OPR, PLT, ADM = Role.INSTALLER, Role.MAINTENANCE, Role.OPERATOR, Role.PLATFORM, Role.ADMIN
READERS = {INS, MNT, OPR, PLT, ADM}

EXPECTED: dict[tuple[str, str], set[Role]] = {
    ("GET", "/health"): set(),
    ("GET", "/api/v1/openapi.json"): set(),
    ("GET", "/api/v1/gateways"): READERS,
    ("POST", "/api/v1/gateways"): {INS, ADM},
    ("GET", "/api/v1/gateways/{id}"): READERS,
    ("PATCH", "/api/v1/gateways/{id}"): {INS, ADM},
    ("POST", "/api/v1/gateways/{id}/retire"): {INS, ADM},
    ("POST", "/api/v1/gateways/{id}/credentials"): {INS, ADM},
    ("GET", "/api/v1/gateways/{id}/config"): {INS, MNT, ADM},
    ("GET", "/api/v1/devices"): READERS,
    ("POST", "/api/v1/devices"): {INS, ADM},
    ("GET", "/api/v1/devices/{id}"): READERS,
    ("PATCH", "/api/v1/devices/{id}"): {INS, MNT, ADM},
    ("POST", "/api/v1/devices/{id}/retire"): {INS, ADM},
    ("POST", "/api/v1/devices/import"): {INS, ADM},
    ("POST", "/api/v1/devices/{id}/commands"): {OPR, ADM},
    ("GET", "/api/v1/commands/{id}"): {OPR, MNT, INS, ADM},
    ("GET", "/api/v1/profiles"): READERS,
    ("GET", "/api/v1/alerts"): {OPR, MNT, PLT, ADM},
    ("GET", "/api/v1/quarantine"): {MNT, ADM},
    ("POST", "/api/v1/tokens"): {ADM},
    ("GET", "/api/v1/tokens"): {ADM},
    ("DELETE", "/api/v1/tokens/{id}"): {ADM},
    ("GET", "/api/v1/audit"): {ADM},
}


@dataclass
class Api:
    url: str
    app_routes: dict[tuple[str, str], frozenset[Role] | None]
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
            yield Api(base, access_table(app), tokens, store)
    finally:
        await store.close()


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def _status(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> int:
    body = {} if method in ("POST", "PATCH", "PUT") else None
    # only the status: a streaming endpoint (SSE) answers its headers and keeps going
    async with http.request(method, url, json=body, headers=headers) as r:
        return r.status


async def test_every_endpoint_declares_roles_and_mine_match_the_table(api: Api) -> None:
    undeclared = sorted(k for k, roles in api.app_routes.items() if roles is None)
    assert undeclared == [], "endpoints without @requires/@public are refused to everyone"
    for key, roles in EXPECTED.items():
        assert key in api.app_routes, key
        assert set(api.app_routes[key] or ()) == roles, key


async def test_every_endpoint_times_every_role(api: Api) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for (method, path), allowed in sorted(api.app_routes.items()):
            url = api.url + _concrete(path)
            status = await _status(http, method, url, {})
            if allowed == PUBLIC:
                assert status not in (401, 403), (method, path)
                continue
            assert status == 401, (method, path, "no token")
            for role in ALL_ROLES:
                headers = {"Authorization": f"Bearer {api.tokens[role]}"}
                status = await _status(http, method, url, headers)
                if role in (allowed or ()):
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
            assert r.status == 422 and (await r.json())["problems"][0]["field"] == "role"
    async with api.store.transaction() as s:
        from sqlalchemy import select

        from device_registry.db.tables import ApiToken

        hashes = list(await s.scalars(select(ApiToken.sha256)))
    assert issued["token"] not in hashes and all(len(h) == 64 for h in hashes)


async def test_the_openapi_document_describes_every_endpoint_of_the_table(api: Api) -> None:
    async with aiohttp.ClientSession() as http, http.get(api.url + "/api/v1/openapi.json") as r:
        spec = await r.json()
    missing = [(m, p) for m, p in EXPECTED if m.lower() not in spec["paths"].get(p, {})]
    assert missing == []
    assert {"GatewayCreate", "DeviceCreate", "CommandRequest"} <= set(spec["components"]["schemas"])
