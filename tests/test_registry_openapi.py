"""The OpenAPI document the registry serves: generated from its routes, every route in it with its
schemas and roles, and valid against the OpenAPI 3.1 schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate

from device_registry.http.access import AuditQuery
from device_registry.http.app import ROUTES, build_app, serving
from device_registry.http.auth import Role, roles
from device_registry.http.openapi import document
from device_registry.http.routing import route
from tests.test_registry_auth import EXPECTED, served

PROBLEM = {"$ref": "#/components/schemas/ProblemView"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document of an app that is built, not started: generating it needs no store."""
    db = tmp_path_factory.mktemp("openapi") / "r.db"
    app = build_app(f"sqlite+aiosqlite:///{db}")
    assert served(app) == set(EXPECTED)  # what is described below is all there is
    return document(app[ROUTES])


async def test_the_served_document_is_the_generated_one(
    tmp_path: Path, spec: dict[str, Any]
) -> None:
    app = build_app(f"sqlite+aiosqlite:///{tmp_path}/r.db")
    async with (
        serving(app, "127.0.0.1", 0) as url,
        aiohttp.ClientSession() as http,
        http.get(url + "/api/v1/openapi.json") as r,
    ):
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == spec


def _op(spec: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = spec["paths"][path][method.lower()]
    return op


async def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on the first problem


async def test_every_route_is_described_with_its_roles(spec: dict[str, Any]) -> None:
    described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert described == set(EXPECTED)
    for (method, path), allowed in EXPECTED.items():
        op = _op(spec, method, path)
        assert set(op["x-roles"]) == {r.value for r in allowed}, (method, path)
        if allowed:
            assert op["security"] == [{"bearer": []}, {"cookie": []}], (method, path)
            for code in ("401", "403"):
                content = op["responses"][code]["content"]
                assert content == {"application/problem+json": {"schema": PROBLEM}}
        else:
            assert op["security"] == [], (method, path)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


# (method, path, request body schema, success status, the answer's schema)
SCHEMAS: list[tuple[str, str, str | None, str, dict[str, Any]]] = [
    ("POST", "/api/v1/gateways", "GatewayCreate", "201",
     {"$ref": "#/components/schemas/IssuedGateway"}),
    ("PATCH", "/api/v1/gateways/{id}", "GatewayPatch", "200",
     {"$ref": "#/components/schemas/GatewayView"}),
    ("POST", "/api/v1/devices", "DeviceCreate", "201", {"$ref": "#/components/schemas/DeviceView"}),
    ("POST", "/api/v1/devices/{id}/commands", "CommandRequest", "202",
     {"$ref": "#/components/schemas/CommandView"}),
    ("GET", "/api/v1/devices", None, "200",
     {"type": "array", "items": {"$ref": "#/components/schemas/DeviceView"}}),
    ("POST", "/api/v1/alerts/{id}/dispose", "ActionRequest", "200",
     {"$ref": "#/components/schemas/AlertOpsView"}),
    ("POST", "/api/v1/alerts/{id}/dispatch", "DispatchRequest", "200",
     {"$ref": "#/components/schemas/AlertOpsView"}),
    ("POST", "/api/v1/alerts/{id}/verify", "EndRequest", "200",
     {"$ref": "#/components/schemas/AlertOpsView"}),
    ("POST", "/api/v1/incidents/{id}/close", "ActionRequest", "200",
     {"$ref": "#/components/schemas/IncidentActed"}),
    ("POST", "/api/v1/alerts/close", "BulkCloseRequest", "200",
     {"$ref": "#/components/schemas/BulkClosed"}),
    ("POST", "/api/v1/webhooks", "WebhookRequest", "201",
     {"$ref": "#/components/schemas/WebhookView"}),
    ("POST", "/api/v1/tokens", "TokenRequest", "201", {"$ref": "#/components/schemas/IssuedToken"}),
    ("GET", "/api/v1/health", None, "200", {"$ref": "#/components/schemas/HealthReport"}),
    ("GET", "/health", None, "200", {"$ref": "#/components/schemas/HealthView"}),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "ok", "answer"), SCHEMAS)
async def test_bodies_answers_and_problems_have_their_schemas(
    spec: dict[str, Any], method: str, path: str, body: str | None, ok: str, answer: dict[str, Any]
) -> None:
    op = _op(spec, method, path)
    if body is not None:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{body}"}
        assert op["responses"]["422"]["content"]["application/problem+json"]["schema"] == PROBLEM
    assert op["responses"][ok]["content"]["application/json"]["schema"] == answer
    known = {f"#/components/schemas/{name}" for name in spec["components"]["schemas"]}
    assert set(_refs(op)) <= known


# (method, path, a query parameter, its JSON type)
QUERY_PARAMS = [
    ("GET", "/api/v1/devices", "limit", "integer"),
    ("GET", "/api/v1/devices", "retired", "string"),
    ("GET", "/api/v1/gateways", "online", "boolean"),
    ("GET", "/api/v1/alerts", "state", "string"),
    ("GET", "/api/v1/alerts/lifecycle", "stage", "string"),
    ("GET", "/api/v1/alerts/stream", "since", "integer"),
    ("GET", "/api/v1/webhooks/dead-letters", "webhook", "integer"),
    ("GET", "/api/v1/devices/{id}/readings", "point", "string"),
    ("GET", "/api/v1/quarantine", "limit", "integer"),
    ("GET", "/api/v1/audit", "target", "string"),
]


@pytest.mark.parametrize(("method", "path", "name", "kind"), QUERY_PARAMS)
async def test_query_parameters_come_from_the_query_models(
    spec: dict[str, Any], method: str, path: str, name: str, kind: str
) -> None:
    params = {p["name"]: p for p in _op(spec, method, path)["parameters"] if p["in"] == "query"}
    schema = params[name]["schema"]
    kinds = [schema.get("type")] + [s.get("type") for s in schema.get("anyOf", [])]
    assert kind in kinds, schema


async def test_path_parameters_are_declared(spec: dict[str, Any]) -> None:
    for path, ops in spec["paths"].items():
        for op in ops.values():
            names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert names == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
    [token_id] = _op(spec, "DELETE", "/api/v1/tokens/{id}")["parameters"]
    assert token_id["schema"]["type"] == "integer"


async def _no_return(request: web.Request, query: AuditQuery):  # type: ignore[no-untyped-def]
    return None


async def _typo(request: web.Request, qeury: AuditQuery) -> None:
    return None


async def _not_a_model(request: web.Request, body: dict[str, int]) -> None:
    return None


@pytest.mark.parametrize(
    ("handler", "words"),
    [
        (_no_return, "annotate what it returns"),
        (_typo, "parameters ['qeury'] are none of"),
        (_not_a_model, "body must be a pydantic model"),
    ],
)
def test_a_route_declared_wrong_is_refused_where_it_is_declared(handler: Any, words: str) -> None:
    with pytest.raises(TypeError, match=re.escape(words)):
        route("GET", "/x", roles(Role.ADMIN), "x")(handler)
