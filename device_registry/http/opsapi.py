"""REST endpoints of alert operations, delivery and health; the dashboard's data.

Thin handlers: parse, call ``OpsStore`` / ``healthops`` / the dispatcher, answer with a view. Who may
call what is declared here with ``auth.requires`` (the single role x endpoint table).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from device_registry.alerts.lifecycle import Action, Refused
from device_registry.alerts.store import AlertFilter, OpsStore, stages
from device_registry.delivery.feed import FeedSignal
from device_registry.delivery.mqtt_out import PlatformPublisher
from device_registry.delivery.sse import SseHub
from device_registry.delivery.webhooks import WebhookDispatcher
from device_registry.health.store import HealthFilter, health_report
from device_registry.http.api import STORE, BadQuery, _int, _json, _query
from device_registry.http.auth import (
    PRINCIPAL,
    Handler,
    Role,
    requires,
    revoked_among,
    token_key,
)
from device_registry.http.opsviews import (
    ActionRequest,
    ReadingPoint,
    ReadingsView,
    ReplayView,
    WebhookRequest,
)
from gridwatch.ground.contract import Value

History = Callable[[str, str, str, int], Awaitable[list[tuple[int, Value, str]]]]
"""(gateway, device, point, since epoch ms) -> (ts, value, quality), oldest first."""


@dataclass
class Ops:
    """What the handlers reach: built at start-up by ``delivery_ctx``."""

    store: OpsStore
    signal: FeedSignal
    hub: SseHub
    dispatcher: WebhookDispatcher
    session: aiohttp.ClientSession
    history: History | None = None
    publisher: PlatformPublisher | None = None


OPS = web.AppKey("ops", Ops)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def routes() -> list[web.RouteDef]:
    # fixed paths before /alerts/{id}: aiohttp tries resources in the order they were added
    return [
        web.get("/api/v1/alerts/stream", stream),
        web.get("/api/v1/alerts/lifecycle", list_alert_ops),
        web.get("/api/v1/alerts/{id}", get_alert),
        *(web.post(f"/api/v1/alerts/{{id}}/{a.value}", _acting(_act, a)) for a in OPERATOR_ACTIONS),
        *(
            web.post(f"/api/v1/incidents/{{id}}/{a.value}", _acting(_act_on_incident, a))
            for a in OPERATOR_ACTIONS
        ),
        web.get("/api/v1/webhooks", list_webhooks),
        web.post("/api/v1/webhooks", add_webhook),
        web.delete("/api/v1/webhooks/{id}", delete_webhook),
        web.get("/api/v1/webhooks/dead-letters", list_dead_letters),
        web.post("/api/v1/webhooks/dead-letters/{id}/replay", replay_dead_letter),
        web.get("/api/v1/health", get_health),
        web.get("/api/v1/devices/{id}/readings", get_readings),
    ]


def _actor(request: web.Request) -> str:
    principal = request.get(PRINCIPAL)
    return "anonymous" if principal is None else principal.name


async def _body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise BadQuery(f"invalid body: {exc.errors(include_url=False)}") from None


# ---- alerts ---------------------------------------------------------------------------------


@requires(Role.OPERATOR, Role.PLATFORM, Role.MAINTENANCE)
async def list_alert_ops(request: web.Request) -> web.Response:
    q = _query(request, {"stage", "district", "category", "incident", "limit"})
    try:
        chosen = stages(q["stage"].split(",")) if "stage" in q else AlertFilter().stages
    except ValueError:
        raise BadQuery("stage must be among open,acknowledged,resolved,closed,cleared") from None
    f = AlertFilter(chosen, q.get("district"), q.get("category"), q.get("incident"),
                    _int(q.get("limit"), "limit", 1000, 1, 10000))  # fmt: skip
    return _json(await request.app[OPS].store.alerts(f, now_ms()))


@requires(Role.OPERATOR, Role.PLATFORM, Role.MAINTENANCE)
async def get_alert(request: web.Request) -> web.Response:
    _query(request, set())
    view, steps = await request.app[OPS].store.alert(request.match_info["id"], now_ms())
    return web.json_response(
        {**view.model_dump(mode="json"), "actions": [s.model_dump(mode="json") for s in steps]}
    )


async def _act(request: web.Request, action: Action) -> web.Response:
    _query(request, set())
    body = await _body(request, ActionRequest)
    assert isinstance(body, ActionRequest)
    ops = request.app[OPS].store
    try:
        view = await ops.act(request.match_info["id"], action, _actor(request), body.note, now_ms())
    except Refused as exc:
        return web.json_response({"error": "conflict", "detail": str(exc)}, status=409)
    return _json(view)


async def _act_on_incident(request: web.Request, action: Action) -> web.Response:
    _query(request, set())
    body = await _body(request, ActionRequest)
    assert isinstance(body, ActionRequest)
    done = await request.app[OPS].store.act_on_incident(
        request.match_info["id"], action, _actor(request), body.note, now_ms()
    )
    return _json(done)


OPERATOR_ACTIONS = (Action.ACK, Action.RESOLVE, Action.CLOSE)


def _acting(
    act: Callable[[web.Request, Action], Awaitable[web.Response]], action: Action
) -> Handler:
    """The operator's endpoint for ``action`` on one alert or one incident."""

    @requires(Role.OPERATOR)
    async def handler(request: web.Request) -> web.Response:
        return await act(request, action)

    return handler


@requires(Role.PLATFORM, Role.OPERATOR)
async def stream(request: web.Request) -> web.StreamResponse:
    q = _query(request, {"district", "category", "since"})
    last = request.headers.get("Last-Event-ID") or q.get("since")
    start = None if last is None else _int(last, "Last-Event-ID/since", 0, 0, 2**62)
    hub = request.app[OPS].hub
    revoked = functools.partial(revoked_among, request.app[STORE])
    return await hub.stream(request, q.get("district"), q.get("category"), start,
                            token_key(request), revoked)  # fmt: skip


# ---- webhooks -------------------------------------------------------------------------------


@requires(Role.ADMIN)
async def list_webhooks(request: web.Request) -> web.Response:
    _query(request, set())
    return _json(await request.app[OPS].store.webhook_views())


@requires(Role.ADMIN)
async def add_webhook(request: web.Request) -> web.Response:
    _query(request, set())
    body = await _body(request, WebhookRequest)
    assert isinstance(body, WebhookRequest)
    ops = request.app[OPS]
    view = await ops.store.add_webhook(body, _actor(request), now_ms())
    ops.signal.notify()  # the dispatcher starts its worker now, not at the next poll
    return _json(view, status=201)


@requires(Role.ADMIN)
async def delete_webhook(request: web.Request) -> web.Response:
    _query(request, set())
    await request.app[OPS].store.delete_webhook(_int(request.match_info["id"], "id", 0, 0, 2**62))
    request.app[OPS].signal.notify()
    return web.json_response({"deleted": True})


@requires(Role.ADMIN, Role.OPERATOR)
async def list_dead_letters(request: web.Request) -> web.Response:
    q = _query(request, {"webhook", "all"})
    hook = None if "webhook" not in q else _int(q["webhook"], "webhook", 0, 0, 2**62)
    pending_only = q.get("all", "false") != "true"
    return _json(await request.app[OPS].store.dead_letters(hook, pending_only))


@requires(Role.ADMIN, Role.OPERATOR)
async def replay_dead_letter(request: web.Request) -> web.Response:
    _query(request, set())
    dead_id = _int(request.match_info["id"], "id", 0, 0, 2**62)
    error = await request.app[OPS].dispatcher.replay(dead_id)
    return _json(ReplayView(id=dead_id, delivered=error is None, error=error or ""))


# ---- health and history ---------------------------------------------------------------------


@requires(Role.MAINTENANCE, Role.OPERATOR)
async def get_health(request: web.Request) -> web.Response:
    q = _query(request, {"district", "grid", "gateway", "profile", "unhealthy"})
    f = HealthFilter(q.get("district"), q.get("grid"), q.get("gateway"), q.get("profile"),
                     unhealthy_only=q.get("unhealthy") == "true")  # fmt: skip
    return _json(await health_report(request.app[STORE], f, now_ms()))


@requires(Role.MAINTENANCE, Role.OPERATOR, Role.INSTALLER)
async def get_readings(request: web.Request) -> web.Response:
    q = _query(request, {"point", "since"})
    if "point" not in q:
        raise BadQuery("point is required")
    history = request.app[OPS].history
    if history is None:
        return web.json_response(
            {"error": "not available", "detail": "this process has no telemetry history"},
            status=501,
        )
    dev = await request.app[STORE].device(request.match_info["id"])
    since = _int(q.get("since"), "since", now_ms() - 3_600_000, 0, 2**62)
    rows = await history(dev.gateway, dev.device, q["point"], since)
    points = [ReadingPoint(ts=ts, value=v, quality=qual) for ts, v, qual in rows[-5000:]]
    return _json(ReadingsView(device=dev.id, point=q["point"], readings=points))
