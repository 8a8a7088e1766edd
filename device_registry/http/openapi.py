"""The OpenAPI 3.1 document of the registry API, generated from the routes the app serves.

Each ``Route`` (``routing.py``) says its method, path, roles, and through its handler's signature
its path, query and body models and its answer; this module turns those into paths, parameters,
request bodies, responses (errors are ``ProblemView`` as ``application/problem+json``) and the
roles: ``x-roles`` on every operation (empty: public) and bearer or cookie security on every one
that needs a token. Nothing here is written per endpoint, so the document cannot drift from what
is served.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from device_registry.http.auth import COOKIE
from device_registry.http.problems import MEDIA as PROBLEM
from device_registry.http.problems import ProblemView
from device_registry.http.routing import Route

_REF = "#/components/schemas/{model}"
_PLACEHOLDER = re.compile(r"\{(\w+)(?::[^{}]+)?\}")
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]


def path_of(route: Route) -> str:
    """The route's path as OpenAPI writes it: ``{name}``, without aiohttp's regex."""
    return _PLACEHOLDER.sub(r"{\1}", route.path)


def document(routes: Iterable[Route]) -> dict[str, Any]:
    routes = list(routes)
    schemas = _Schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(path_of(r), {})[r.method.lower()] = _operation(r, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "gridwatch device registry", "version": "1",
                 "description": "Every operation lists the roles that may call it in `x-roles` "
                 "(`admin` may call everything; an empty list: public, no token)."},
        "paths": paths,
        "components": {
            "schemas": schemas.defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An API token: `Authorization: Bearer <token>`."},
                "cookie": {"type": "apiKey", "in": "cookie", "name": COOKIE,
                           "description": "The same token, as the dashboard sends it."},
            },
        },
    }  # fmt: skip


class _Schemas:
    """JSON Schemas of every model the routes use, with one shared ``components.schemas``."""

    def __init__(self, routes: list[Route]) -> None:
        inputs: list[tuple[Any, JsonSchemaMode, TypeAdapter[Any]]] = [
            ("problem", "serialization", TypeAdapter(ProblemView))
        ]
        for r in routes:
            for part, model in r.models.items():
                inputs.append(((r, part), "validation", TypeAdapter(model)))
            answer = r.shows if r.raw else r.returns
            if answer is not None:
                inputs.append(((r, "answer"), "serialization", TypeAdapter(answer)))
        found, defs = TypeAdapter.json_schemas(inputs, ref_template=_REF)
        self.of = {key: schema for (key, _mode), schema in found.items()}
        self.defs: dict[str, Any] = defs.get("$defs", {})

    def model(self, r: Route, part: str) -> dict[str, Any]:
        """The flat object schema of a path or query model (its properties are parameters)."""
        schema = self.of[(r, part)]
        if "$ref" in schema:
            schema = self.defs[schema["$ref"].rsplit("/", 1)[1]]
        return schema


def _operation(r: Route, schemas: _Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": getattr(r.handler, "__name__", "op"),
        "summary": r.summary,
        "x-roles": sorted(role.value for role in r.roles),
        "parameters": _parameters(r, schemas),
        "responses": _responses(r, schemas),
    }
    op["security"] = _SECURITY if r.roles else []
    if "body" in r.models:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": schemas.of[(r, "body")]}}}  # fmt: skip
    elif r.body_media != "application/json":
        op["requestBody"] = {"required": True,
                             "content": {r.body_media: {"schema": {"type": "string"}}}}  # fmt: skip
    return op


def _parameters(r: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    declared = schemas.model(r, "path") if "path" in r.models else {"properties": {}}
    for name in _PLACEHOLDER.findall(r.path):
        schema = declared["properties"].get(name, {"type": "string"})
        out.append({"name": name, "in": "path", "required": True, "schema": schema})
    if "query" in r.models:
        query = schemas.model(r, "query")
        required = set(query.get("required", []))
        for name, schema in query["properties"].items():
            param = {"name": name, "in": "query", "required": name in required,
                     "schema": {k: v for k, v in schema.items() if k != "description"}}  # fmt: skip
            if "description" in schema:
                param["description"] = schema["description"]
            out.append(param)
    return out


def _responses(r: Route, schemas: _Schemas) -> dict[str, Any]:
    key = (r, "answer")
    content = {"schema": schemas.of[key]} if key in schemas.of else {}
    ok: dict[str, Any] = {
        "description": "OK",
        "content": {r.media: content or {"schema": {"type": "string"}}},
    }
    if r.headers:
        ok["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                         for name, text in r.headers}  # fmt: skip
    problem = {"description": "A problem (RFC 9457)",
               "content": {PROBLEM: {"schema": schemas.of["problem"]}}}  # fmt: skip
    out: dict[str, Any] = {str(r.status): ok}
    if r.roles:
        out["401"] = {**problem, "description": "No token, or an unknown or revoked one"}
        out["403"] = {**problem, "description": "The token's role may not call this"}
    if r.models or not r.raw:
        out["422"] = {**problem, "description": "The path, query string or body is invalid"}
    if _PLACEHOLDER.search(r.path):
        out["404"] = {**problem, "description": "No such thing"}
    out["default"] = problem
    return out
