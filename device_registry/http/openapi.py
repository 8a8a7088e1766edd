"""The OpenAPI 3.1 description of the registry API, with schemas generated from the views."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from device_registry.http import ops_openapi, registration_openapi
from device_registry.http.schemas import (
    AlertView,
    DeviceView,
    ErrorView,
    GatewayView,
    HealthView,
    QuarantineView,
)

_REF = "#/components/schemas/{model}"


def _ref(name: str, many: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": _REF.format(model=name)}
    return {"type": "array", "items": schema} if many else schema


def _op(summary: str, body: dict[str, Any], params: list[dict[str, Any]] | None = None,
        errors: tuple[int, ...] = (400,)) -> dict[str, Any]:  # fmt: skip
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": {"application/json": {"schema": body}}}
    }
    for code in errors:
        responses[str(code)] = {
            "description": "Error",
            "content": {"application/json": {"schema": _ref("ErrorView")}},
        }
    return {"get": {"summary": summary, "parameters": params or [], "responses": responses}}


def _param(name: str, where: str, desc: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": desc,
            "schema": schema or {"type": "string"}}  # fmt: skip


@functools.cache
def openapi_document() -> dict[str, Any]:
    return ops_openapi.merge(_document())


def _document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        DeviceView,
        GatewayView,
        AlertView,
        QuarantineView,
        ErrorView,
        HealthView,
    ]
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template=_REF)
    return registration_openapi.merge(
        {
            "openapi": "3.1.0",
            "info": {"title": "gridwatch device registry", "version": "1"},
            "paths": {
                "/health": _op("Liveness and database check", _ref("HealthView"), errors=(503,)),
                "/api/v1/gateways": _op(
                    "Every gateway with its latest health", _ref("GatewayView", True)
                ),
                "/api/v1/devices": _op(
                    "Devices with status, last_seen and last values with quality",
                    _ref("DeviceView", True),
                    [
                        _param("gateway", "query", "Only this gateway's devices"),
                        _param("district", "query", "Only devices sited in this district"),
                    ],
                ),
                "/api/v1/devices/{id}": _op(
                    "One device, by 'gateway:device' or by a device id unique across gateways",
                    _ref("DeviceView"),
                    [_param("id", "path", "'gateway:device' or a bare device id")],
                    errors=(404, 409),
                ),
                "/api/v1/alerts": _op(
                    "Alerts, newest transition first",
                    _ref("AlertView", True),
                    [
                        _param("state", "query", "active (default) or all", enum=["active", "all"]),
                        _param("limit", "query", "At most this many", type="integer", minimum=1),
                    ],
                ),
                "/api/v1/quarantine": _op(
                    "Messages the bridge refused, newest first",
                    _ref("QuarantineView", True),
                    [_param("limit", "query", "At most this many", type="integer", minimum=1)],
                ),
            },
            "components": {"schemas": defs["$defs"]},
        }
    )
