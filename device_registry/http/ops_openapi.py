"""The OpenAPI description of the alert-operations, delivery and health endpoints (``opsapi``),
merged into the registry's document by ``openapi.py``; schemas come from ``opsviews`` and the
platform messages of the wire contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from device_registry.http.opsviews import (
    ActionRequest,
    ActionView,
    AlertOpsView,
    DeadLetterView,
    HealthReport,
    IncidentActed,
    ReadingsView,
    ReplayView,
    WebhookRequest,
    WebhookView,
)
from gridwatch.ground.contract import PlatformAlert, PlatformEscalation, PlatformLifecycle

_REF = "#/components/schemas/{model}"
MODELS: list[type[BaseModel]] = [
    AlertOpsView, ActionView, ActionRequest, WebhookRequest, WebhookView, DeadLetterView,
    ReplayView, HealthReport, ReadingsView, PlatformAlert, PlatformLifecycle, PlatformEscalation,
    IncidentActed,
]  # fmt: skip


def _ref(name: str, many: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"$ref": _REF.format(model=name)}
    return {"type": "array", "items": schema} if many else schema


def _op(summary: str, roles: str, body: dict[str, Any], ok: int = 200,
        request: str | None = None, params: list[dict[str, Any]] | None = None,
        errors: tuple[int, ...] = (400, 401, 403), media: str = "application/json",
        ) -> dict[str, Any]:  # fmt: skip
    responses: dict[str, Any] = {
        str(ok): {"description": "OK", "content": {media: {"schema": body}}}
    }
    for code in errors:
        responses[str(code)] = {"description": "Error", "content": {
            "application/json": {"schema": _ref("ErrorView")}}}  # fmt: skip
    op: dict[str, Any] = {"summary": summary, "description": f"Roles: {roles}.",
                          "parameters": params or [], "responses": responses}  # fmt: skip
    if request is not None:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": _ref(request)}}}  # fmt: skip
    return op


def _p(name: str, where: str = "query", desc: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "description": desc,
            "schema": {"type": "string"}}  # fmt: skip


def _act(verb: str) -> dict[str, Any]:
    return {"post": _op(f"{verb} an alert (optional note); 409 when its stage does not allow it",
                        "operator, admin", _ref("AlertOpsView"), request="ActionRequest",
                        params=[_p("id", "path")], errors=(400, 401, 403, 404, 409))}  # fmt: skip


def _act_incident(verb: str) -> dict[str, Any]:
    return {"post": _op(f"{verb} every alert of an incident its stage allows (optional note), in "
                        "one step; the others are listed as skipped", "operator, admin",
                        _ref("IncidentActed"), request="ActionRequest", params=[_p("id", "path")],
                        errors=(400, 401, 403, 404))}  # fmt: skip


def paths() -> dict[str, Any]:
    message = {
        "oneOf": [_ref("PlatformAlert"), _ref("PlatformLifecycle"), _ref("PlatformEscalation")]
    }
    return {
        "/api/v1/alerts/lifecycle": {"get": _op(
            "Alerts with stage, incident, time limit and time left (closed ones left out)",
            "operator, platform, maintenance, admin", _ref("AlertOpsView", True),
            params=[_p("stage", desc="comma-separated stages"), _p("district"), _p("category"),
                    _p("incident"), _p("limit")])},
        "/api/v1/alerts/{id}": {"get": _op(
            "One alert with its lifecycle steps (who, what, when, note)",
            "operator, platform, maintenance, admin", _ref("AlertOpsView"),
            params=[_p("id", "path")], errors=(401, 403, 404))},
        "/api/v1/alerts/{id}/ack": _act("Acknowledge"),
        "/api/v1/alerts/{id}/resolve": _act("Resolve"),
        "/api/v1/alerts/{id}/close": _act("Close"),
        "/api/v1/incidents/{id}/ack": _act_incident("Acknowledge"),
        "/api/v1/incidents/{id}/resolve": _act_incident("Resolve"),
        "/api/v1/incidents/{id}/close": _act_incident("Close"),
        "/api/v1/alerts/stream": {"get": _op(
            "Server-sent events: id = feed seq, event = kind, data = the platform message; "
            "resumes after Last-Event-ID", "platform, operator, admin", message,
            params=[_p("district"), _p("category"), _p("since", desc="feed seq to start after")],
            media="text/event-stream")},
        "/api/v1/webhooks": {
            "get": _op("Webhook subscriptions", "admin", _ref("WebhookView", True)),
            "post": _op("Subscribe a URL (HMAC-SHA256 signed POSTs of every platform message "
                        "matching the filters)", "admin", _ref("WebhookView"), ok=201,
                        request="WebhookRequest"),
        },
        "/api/v1/webhooks/{id}": {"delete": _op("Unsubscribe", "admin", {"type": "object"},
                                                params=[_p("id", "path")])},
        "/api/v1/webhooks/dead-letters": {"get": _op(
            "Messages given up on after the last retry (pending replay unless all=true)",
            "operator, admin", _ref("DeadLetterView", True), params=[_p("webhook"), _p("all")])},
        "/api/v1/webhooks/dead-letters/{id}/replay": {"post": _op(
            "Deliver a dead letter once more", "operator, admin", _ref("ReplayView"),
            params=[_p("id", "path")], errors=(401, 403, 404))},
        "/api/v1/health": {"get": _op(
            "Device and gateway health, unhealthy first, with reasons",
            "maintenance, operator, admin", _ref("HealthReport"),
            params=[_p("district"), _p("grid"), _p("gateway"), _p("profile"),
                    _p("unhealthy", desc="true: only what is unhealthy")])},
        "/api/v1/devices/{id}/readings": {"get": _op(
            "Recent readings of one point from the telemetry history (501 when this process "
            "has none)", "maintenance, operator, installer, admin", _ref("ReadingsView"),
            params=[_p("id", "path"), _p("point"), _p("since", desc="epoch ms")],
            errors=(400, 401, 403, 404, 501))},
    }  # fmt: skip


def merge(doc: dict[str, Any]) -> dict[str, Any]:
    for path, item in paths().items():
        doc["paths"].setdefault(path, {}).update(item)
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=_REF)
    doc["components"]["schemas"].update(defs["$defs"])
    return doc
