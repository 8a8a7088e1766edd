"""The OpenAPI description of the installer endpoints (``registration_api``), merged into the
registry's document by ``openapi.py``. Request bodies are the strict request models' schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from device_registry.http.auth import IssuedToken, TokenRequest, TokenView
from device_registry.inventory.commands import CommandRequest, CommandView
from device_registry.inventory.requests import (
    DeviceCreate,
    DevicePatch,
    GatewayCreate,
    GatewayPatch,
)

_REF = "#/components/schemas/{model}"
MODELS: list[type[BaseModel]] = [
    GatewayCreate, GatewayPatch, DeviceCreate, DevicePatch, CommandRequest, CommandView,
    TokenRequest, TokenView, IssuedToken,
]  # fmt: skip


def _ref(name: str, many: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": _REF.format(model=name)}
    return {"type": "array", "items": schema} if many else schema


def _op(
    summary: str, roles: str, ok: int, body: dict[str, Any] | None = None,
    request: dict[str, Any] | None = None, errors: tuple[int, ...] = (401, 403, 422),
    params: list[dict[str, Any]] | None = None, media: str = "application/json",
) -> dict[str, Any]:  # fmt: skip
    responses: dict[str, Any] = {str(ok): {"description": "OK", "content": {
        "application/json": {"schema": body or {"type": "object"}}}}}  # fmt: skip
    for code in errors:
        responses[str(code)] = {"description": "Error", "content": {
            "application/json": {"schema": _ref("ErrorView")}}}  # fmt: skip
    op: dict[str, Any] = {"summary": summary, "description": f"Roles: {roles}.",
                          "parameters": params or [], "responses": responses}  # fmt: skip
    if request is not None:
        op["requestBody"] = {"required": True, "content": {media: {"schema": request}}}
    return op


def _id(desc: str) -> list[dict[str, Any]]:
    return [{"name": "id", "in": "path", "required": True, "description": desc,
             "schema": {"type": "string"}}]  # fmt: skip


def _q(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}} for n in names
    ]


def paths() -> dict[str, Any]:
    gw, dev = _id("Gateway id"), _id("'gateway:device' or a device id unique across gateways")
    return {
        "/api/v1/gateways": {
            "get": _op("Gateways with location and config state", "every role", 200,
                       _ref("GatewayView", True), errors=(400, 401),
                       params=_q("district", "online", "retired", "limit", "offset")),
            "post": _op("Register a gateway: its MQTT password is in the answer, once",
                        "installer, admin", 201, _ref("GatewayView"), _ref("GatewayCreate"),
                        (400, 401, 403, 409, 422, 503)),
        },
        "/api/v1/openapi.json": {"get": _op("This description", "public", 200, errors=())},
        "/api/v1/gateways/{id}": {
            "get": _op("One gateway: location, devices, health, config desired vs acknowledged",
                       "every role", 200, _ref("GatewayView"), errors=(401, 404), params=gw),
            "patch": _op("Change a gateway (name, location, buses, labels); bumps its config",
                         "installer, admin", 200, _ref("GatewayView"), _ref("GatewayPatch"),
                         (400, 401, 403, 404, 409, 422), gw),
        },
        "/api/v1/gateways/{id}/retire": {"post": _op(
            "Retire a gateway: its broker access ends and its session is cut at once",
            "installer, admin", 200, _ref("GatewayView"), errors=(401, 403, 404, 409, 503),
            params=gw)},
        "/api/v1/gateways/{id}/credentials": {"post": _op(
            "New broker password for a gateway: the old one stops working and its session is "
            "cut; the new one is in the answer, once", "installer, admin", 200,
            _ref("GatewayView"), errors=(401, 403, 404, 409, 503), params=gw)},
        "/api/v1/gateways/{id}/config": {"get": _op(
            "The config document the gateway should run (what is pushed to it)",
            "installer, maintenance, admin", 200, errors=(401, 403, 404, 410), params=gw)},
        "/api/v1/devices": {"post": _op(
            "Register a device on a gateway (validated by generating the gateway's config)",
            "installer, admin", 201, _ref("DeviceView"), _ref("DeviceCreate"),
            (400, 401, 403, 409, 422))},
        "/api/v1/devices/{id}": {"patch": _op(
            "Change a device (profile, bus, unit id, address, location, firmware, labels)",
            "installer, maintenance, admin", 200, _ref("DeviceView"), _ref("DevicePatch"),
            (400, 401, 403, 404, 409, 422), dev)},
        "/api/v1/devices/import": {"post": _op(
            "Register devices from CSV: all or nothing, 422 with a per-line report",
            "installer, admin", 200, request={"type": "string"}, media="text/csv",
            errors=(400, 401, 403, 415, 422))},
        "/api/v1/devices/{id}/retire": {"post": _op(
            "Retire a device (it leaves its gateway's config)", "installer, admin", 200,
            _ref("DeviceView"), errors=(401, 403, 404, 409), params=dev)},
        "/api/v1/devices/{id}/commands": {"post": _op(
            "Write a value to a writable point; the result comes back asynchronously",
            "operator, admin", 202, _ref("CommandView"), _ref("CommandRequest"),
            (400, 401, 403, 404, 409, 422, 503), dev)},
        "/api/v1/commands/{id}": {"get": _op(
            "A command and its result (state sent | ok | failed)",
            "operator, maintenance, installer, admin", 200, _ref("CommandView"),
            errors=(401, 403, 404), params=_id("Command id"))},
        "/api/v1/profiles": {"get": _op("Device profiles devices may use", "every role", 200,
                                        errors=(401,))},
        "/api/v1/tokens": {
            "get": _op("API tokens (never the tokens themselves)", "admin", 200,
                       _ref("TokenView", True), errors=(401, 403)),
            "post": _op("Issue a token: shown once, kept only as its SHA-256", "admin", 201,
                        _ref("IssuedToken"), _ref("TokenRequest")),
        },
        "/api/v1/tokens/{id}": {"delete": _op("Revoke a token", "admin", 200, _ref("TokenView"),
                                              errors=(400, 401, 403, 404), params=_id("Token id"))},
        "/api/v1/audit": {"get": _op("Who changed what, when (newest first)", "admin", 200,
                                     errors=(400, 401, 403), params=_q("target", "limit"))},
    }  # fmt: skip


def schemas() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=_REF)
    found: dict[str, Any] = defs["$defs"]
    return found


def merge(doc: dict[str, Any]) -> dict[str, Any]:
    """Add these paths, the device list's filters, the request schemas and the token schemes."""
    for path, item in paths().items():
        doc["paths"].setdefault(path, {}).update(item)
    listing = doc["paths"].get("/api/v1/devices", {}).get("get")
    if listing is not None:
        listing["parameters"] = [*listing["parameters"],
                                 *_q("grid", "profile", "status", "retired", "limit", "offset")]  # fmt: skip
    doc["components"]["schemas"].update(schemas())
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An API token"},
        "cookie": {"type": "apiKey", "in": "cookie", "name": "gw_token"},
    }
    doc["security"] = [{"bearer": []}, {"cookie": []}]
    return doc
