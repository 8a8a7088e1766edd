"""Hostile input to the registry API (issue 16 #14, #9): never a 500, always a problem in strict
JSON that does not echo the input back; NaN/Infinity refused coming in and never sent going out.

One real registry (SQLite, real aiohttp server) with an admin token; the table is run against it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import update

from device_registry import Changes
from device_registry.db.tables import Device, LatestReading
from device_registry.delivery.runtime import Delivery
from device_registry.http.auth import Role
from device_registry.http.routing import finite
from gridwatch.ground.contract import Reading
from tests._ops_helpers import Registry, now_ms, registry, smoke
from tests.services import Postgres
from tests.test_registry_auth import EXPECTED

ECHO = "ECHO" * 600
"""A marker: an error answer must not carry the client's input back whole."""
DEEP = ("[" * 1100 + "]" * 1100).encode()
GW = {"id": "gw-h", "name": "hostile"}


def strict_json(text: str) -> Any:
    """``JSON.parse``'s view: RFC 8259 only (no NaN, no Infinity)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def nested(key: str) -> bytes:
    return b'{"' + key.encode() + b'": ' + DEEP + b"}"


# (method, path, content type, body): bodies that were 500s, or could be
BODIES: list[tuple[str, str, str, bytes]] = [
    *[
        ("POST", p, "application/json", nested(k))
        for p, k in [
            ("/api/v1/gateways", "id"),
            ("/api/v1/devices", "gateway"),
            ("/api/v1/tokens", "name"),
            ("/api/v1/webhooks", "url"),
            ("/api/v1/alerts/a1/file", "note"),
            ("/api/v1/incidents/x/file", "note"),
            ("/api/v1/devices/gw-h:d1/commands", "value"),
        ]
    ],
    ("PATCH", "/api/v1/gateways/gw-h", "application/json", nested("labels")),
    ("PATCH", "/api/v1/devices/gw-h:d1", "application/json", nested("labels")),
    ("POST", "/api/v1/gateways", "application/json", DEEP),
    # a lone UTF-16 surrogate: Python's json passes it on, and the database cannot store it
    ("POST", "/api/v1/gateways", "application/json", b'{"id": "gw-s", "name": "\\ud800"}'),
    ("POST", "/api/v1/tokens", "application/json", b'{"name": "\\ud800", "role": "operator"}'),
    (
        "POST",
        "/api/v1/gateways",
        "application/json",
        b'{"id": "gw-s", "location": {"district": "\\ud800"}}',
    ),
    ("POST", "/api/v1/gateways", "application/json", b'{"id": "gw-s", "labels": {"\\ud800": "x"}}'),
    ("POST", "/api/v1/alerts/a1/file", "application/json", b'{"note": "\\udfff"}'),
    # NaN and Infinity are not JSON
    (
        "POST",
        "/api/v1/gateways",
        "application/json",
        b'{"id": "gw-n", "location": {"lat": NaN, "lon": 1}}',
    ),
    (
        "POST",
        "/api/v1/gateways",
        "application/json",
        b'{"id": "gw-n", "location": {"lat": Infinity, "lon": 1}}',
    ),
    (
        "POST",
        "/api/v1/devices/gw-h:d1/commands",
        "application/json",
        b'{"point": "sounder", "value": -Infinity}',
    ),
    ("POST", "/api/v1/devices", "application/json", b'{"gateway": "gw-h", "unit_id": NaN}'),
    # numbers no field can hold
    ("POST", "/api/v1/devices", "application/json", b'{"gateway": "gw-h", "unit_id": 1e999}'),
    (
        "POST",
        "/api/v1/devices",
        "application/json",
        b'{"gateway": "gw-h", "unit_id": 99999999999999999999999999999999}',
    ),
    # not an object, not JSON, not UTF-8, too long
    ("POST", "/api/v1/gateways", "application/json", b"null"),
    ("POST", "/api/v1/gateways", "application/json", b'"' + ECHO.encode() + b'"'),
    ("POST", "/api/v1/gateways", "application/json", b"\xff\xfe\x00garbage"),
    ("POST", "/api/v1/gateways", "application/json", b'{"id": "' + ECHO.encode() + b'"}'),
    (
        "POST",
        "/api/v1/webhooks",
        "application/json",
        b'{"url": "http://x/' + ECHO.encode() + b'", "secret": "s"}',
    ),
    ("POST", "/api/v1/devices/import", "text/csv", b"\xff\xfe" + ECHO.encode()),
    ("POST", "/api/v1/devices/import", "text/csv", b"gateway,id\n" + ECHO.encode() + b",\x00\n"),
    ("POST", "/api/v1/devices/import", "application/json", b"{}"),
]

# (path and query): query strings and paths that were 500s, or could be
QUERIES: list[str] = [
    "/api/v1/devices?limit=NaN",
    "/api/v1/devices?limit=1e999",
    "/api/v1/devices?limit=-1",
    "/api/v1/devices?offset=99999999999999999999999999",
    "/api/v1/devices?limit=1&limit=2",
    f"/api/v1/devices?gateway={ECHO}",
    f"/api/v1/devices?{ECHO}=1",
    "/api/v1/devices?gateway=%00",
    "/api/v1/devices?retired=maybe",
    "/api/v1/gateways?online=perhaps",
    "/api/v1/alerts?state=%ud800",
    "/api/v1/alerts/lifecycle?stage=" + "," * 5000,
    "/api/v1/alerts/stream?since=-1",
    "/api/v1/alerts/stream?since=NaN",
    "/api/v1/devices/gw-h:d1/readings",
    "/api/v1/devices/gw-h:d1/readings?point=x&since=1e999",
    "/api/v1/webhooks/dead-letters?webhook=Infinity",
    "/api/v1/audit?limit=0",
    "/api/v1/quarantine?limit=99999",
    "/api/v1/health?unhealthy=sometimes",
    "/api/v1/tokens/99999999999999999999",
    "/api/v1/tokens/-1",
    "/api/v1/webhooks/1e3",
    "/api/v1/devices/%00",
    "/api/v1/gateways/%00%ff",
    "/api/v1/commands/%00",
    "/api/v1/profiles?x=1",
]


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[Registry]:
    async with registry(tmp_path, Delivery(poll_s=0.2)) as r:
        await r.ingest(smoke("a1"))
        yield r


async def _check(r: aiohttp.ClientResponse, what: str, worst: int = 499) -> tuple[int, Any]:
    text = await r.text()
    assert r.status <= worst, (what, r.status, text[:300])
    assert ECHO not in text, (what, "the input is echoed back")
    body = strict_json(text)
    if r.status >= 400:
        assert r.content_type == "application/problem+json", (what, r.content_type)
        assert {"type", "title", "status", "detail"} <= set(body), (what, body)
        assert body["status"] == r.status
    return r.status, body


@pytest.mark.parametrize(("method", "path", "media", "body"), BODIES,
                         ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(BODIES)])  # fmt: skip
async def test_hostile_bodies_are_problems_never_500(
    reg: Registry, method: str, path: str, media: str, body: bytes
) -> None:
    headers = {**reg.auth(Role.ADMIN), "Content-Type": media}
    async with reg.http.request(method, reg.url + path, data=body, headers=headers) as r:
        status, _ = await _check(r, f"{method} {path}")
    assert status in (404, 409, 415, 422), (method, path, status)


async def test_nan_and_infinity_in_a_body_are_422_naming_the_body(reg: Registry) -> None:
    for raw in (b'{"note": NaN}', b'{"note": Infinity}', b'{"note": -Infinity}'):
        headers = {**reg.auth(Role.OPERATOR), "Content-Type": "application/json"}
        async with reg.http.post(
            reg.url + "/api/v1/alerts/a1/file", data=raw, headers=headers
        ) as r:
            status, problem = await _check(r, raw.decode())
        assert status == 422 and problem["errors"][0]["loc"] == "(body)", problem


async def test_hostile_queries_and_paths_are_answered_never_500(reg: Registry) -> None:
    timeout = aiohttp.ClientTimeout(total=5)  # the stream: its headers, then we leave
    for path in QUERIES:
        async with reg.http.get(reg.url + path, headers=reg.auth(Role.ADMIN), timeout=timeout,
                                skip_auto_headers=()) as r:  # fmt: skip
            if r.content_type == "text/event-stream":
                continue
            await _check(r, path)


@pytest.mark.parametrize(
    "path",
    [
        "/static/app.js%00.png",
        "/static/%2e%2e%2fapp.js",
        "/static/..%2f..%2fetc%2fpasswd",
        "/static/%ff",
    ],
)
async def test_static_names_that_are_no_file_are_404_without_a_token(
    reg: Registry, path: str
) -> None:
    async with reg.http.get(reg.url + path) as r:
        assert r.status == 404, await r.text()


async def test_stored_non_finite_values_are_served_as_null(reg: Registry) -> None:
    """A NaN that reached the store (SQLite keeps it; PostgreSQL's JSON cannot) must not make
    the whole answer unparseable: it is served as null."""
    t = now_ms()
    good = Reading(device="d1", point="level", value=1.5, ts=t)
    await reg.store.apply(Changes(now=t, device_seen={("gw-h", "d1"): t},
                                  latest={("gw-h", "d1", "level"): good}))  # fmt: skip
    async with reg.store.transaction() as s:
        await s.execute(update(LatestReading).values(value=float("nan")))
        await s.execute(update(Device).values(health={"battery": float("inf"), "ok": 1.0}))
    async with reg.http.get(reg.url + "/api/v1/devices/gw-h:d1",
                            headers=reg.auth(Role.OPERATOR)) as r:  # fmt: skip
        assert r.status == 200
        dev = strict_json(await r.text())
    assert dev["values"]["level"]["value"] is None
    assert dev["health"] == {"battery": None, "ok": 1.0}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, 1.5),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        ({"a": [1, math.nan, {"b": math.inf}]}, {"a": [1, None, {"b": None}]}),
        ((math.nan, "x"), [None, "x"]),
        ("NaN", "NaN"),
        (True, True),
        (None, None),
    ],
)
def test_finite_replaces_non_finite_floats_with_null(value: Any, expected: Any) -> None:
    assert finite(value) == expected


async def test_a_database_outage_is_a_503_problem_and_health_says_degraded(
    tmp_path: Path,
) -> None:
    """A crash of the database (immediate stop, not a clean one) under a running API: the API
    answers 503 problems that say so, /health its own view with a 503; never a 500."""
    # not under pytest's tmp dir: that is private to root, and the server runs as `postgres`
    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-pg-outage-"))
    pg = Postgres(workdir).start()
    try:
        url = pg.create_database("outage")
        async with registry(tmp_path, Delivery(poll_s=0.2), db_url=url) as reg:
            status, _ = await reg.call("GET", "/api/v1/devices", Role.OPERATOR)
            assert status == 200
            pg.stop()
            # the token check may be cached a moment; what follows must be 503s, not 500s
            for path in ("/api/v1/devices", "/api/v1/gateways", "/api/v1/alerts/lifecycle"):
                async with reg.http.get(reg.url + path, headers=reg.auth(Role.OPERATOR)) as r:
                    status, problem = await _check(r, path, worst=503)
                assert status == 503, (path, problem)
                assert problem["type"] == "urn:gridwatch:problem:store-unavailable", problem
                # the database's address stays in the log: the caller may not even be known
                assert problem["detail"] == (
                    "the registry's database cannot be reached now; try again later"
                ), problem
            async with reg.http.get(reg.url + "/health") as r:
                assert r.status == 503 and r.content_type == "application/json"
                assert strict_json(await r.text())["status"] == "down"
    finally:
        if (pg.data / "postmaster.pid").exists():
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


SWEEP: list[tuple[str, bytes]] = [
    ("?limit=NaN&since=Infinity", nested("id")),
    ("?%00=%ff", b'{"note": NaN, "name": "\\ud800"}'),
    ("?limit=1e999&limit=2", b"[" * 5000),
    ("?" + "x=1&" * 200, b'{"' + ECHO.encode() + b'": 1}'),
]
"""Query strings and bodies sent to every route of the app."""


async def test_every_route_answers_hostile_input_without_a_500(reg: Registry) -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {**reg.auth(Role.ADMIN), "Content-Type": "application/json"}
    for method, path in sorted(EXPECTED):
        url = reg.url + re.sub(r"\{[^}]+\}", "x1", path)
        for query, body in SWEEP:
            data = body if method in ("POST", "PATCH") else None
            async with reg.http.request(method, url + query, data=data, headers=headers,
                                        timeout=timeout, allow_redirects=False) as r:  # fmt: skip
                if r.content_type in ("text/event-stream", "text/html") or r.status == 302:
                    continue
                if r.content_type.startswith("text/plain") and path == "/metrics":
                    continue
                await _check(r, f"{method} {path}{query[:40]}")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/gateways", {"id": "g" * 65}),
        ("/api/v1/devices", {"gateway": "gw-ok", "id": "d" * 65, "profile": "p", "bus": "b"}),
    ],
)
async def test_ids_the_wire_contract_would_refuse_are_refused_at_registration(
    reg: Registry, path: str, body: dict[str, Any]
) -> None:
    """A gateway or device id longer than the contract's 64 characters registered fine, and then
    every message it sent was quarantined: a gateway that could never report."""
    status, err = await reg.call("POST", path, Role.INSTALLER, body)
    assert status == 422, err
    assert err["errors"][0]["loc"] == "id"


async def test_an_ack_of_a_config_version_never_issued_is_ignored(reg: Registry) -> None:
    """A gateway acknowledging v2**63-1 would make every later version look acknowledged, so it
    would never be republished: only versions the registry issued count."""
    from device_registry.inventory.wiring import INSTALLERS
    from gridwatch.ground.contract import INT64_MAX, ConfigAck

    status, _ = await reg.call("POST", "/api/v1/gateways", Role.INSTALLER, {"id": "gw-ack"})
    assert status == 201
    registry = reg.app[INSTALLERS].registry
    await registry.record_ack(ConfigAck(gateway="gw-ack", version=INT64_MAX, accepted=True,
                                        ts=now_ms()))  # fmt: skip
    status, gw = await reg.call("GET", "/api/v1/gateways/gw-ack", Role.INSTALLER)
    assert (gw["config"]["acknowledged"], gw["config"]["desired"]) == (0, 1)
    await registry.record_ack(ConfigAck(gateway="gw-ack", version=1, accepted=True, ts=now_ms()))
    status, gw = await reg.call("GET", "/api/v1/gateways/gw-ack", Role.INSTALLER)
    assert gw["config"]["acknowledged"] == 1
