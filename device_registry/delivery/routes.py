"""The delivery endpoints: webhooks and their dead letters, and the live alert stream (SSE)."""

from __future__ import annotations

import functools

from aiohttp import web

from device_registry.alerts.views import DeadLetterView, ReplayView, WebhookRequest, WebhookView
from device_registry.delivery.requests import DeadLetterQuery, LastEventId, StreamQuery
from device_registry.delivery.runtime import OPS
from device_registry.http.auth import PRINCIPAL, Role, revoked_among, roles, token_key
from device_registry.http.routing import NumericId, Route, parse, route
from device_registry.http.state import STORE, now_ms
from gridwatch.ground.contract import PlatformAlert, PlatformLifecycle

ADMIN = roles(Role.ADMIN)


@route("GET", "/api/v1/alerts/stream", roles(Role.PLATFORM, Role.OPERATOR),
       "Live alert messages (Server-Sent Events: id = feed seq, event = kind, data = the "
       "message); resumes after Last-Event-ID", media="text/event-stream",
       shows=PlatformAlert | PlatformLifecycle)  # fmt: skip
async def stream(request: web.Request, query: StreamQuery) -> web.StreamResponse:
    last = request.headers.get("Last-Event-ID")
    start = query.since if last is None else parse("Last-Event-ID", LastEventId, {"seq": last}).seq
    revoked = functools.partial(revoked_among, request.app[STORE])
    return await request.app[OPS].hub.stream(request, query.district, query.category, start,
                                             token_key(request), revoked)  # fmt: skip


@route("GET", "/api/v1/webhooks", ADMIN, "Webhook subscriptions")
async def list_webhooks(request: web.Request) -> list[WebhookView]:
    return await request.app[OPS].store.webhook_views()


@route("POST", "/api/v1/webhooks", ADMIN, "Subscribe a URL to alert messages (HMAC-signed)",
       status=201)  # fmt: skip
async def add_webhook(request: web.Request, body: WebhookRequest) -> WebhookView:
    ops = request.app[OPS]
    body = body.model_copy(update={"secret": ops.dispatcher.secrets.seal(body.secret)})
    view = await ops.store.add_webhook(body, request[PRINCIPAL].name, now_ms())
    ops.signal.notify()  # the dispatcher starts its worker now, not at the next poll
    return view


@route("DELETE", "/api/v1/webhooks/{id}", ADMIN, "Stop a webhook")
async def delete_webhook(request: web.Request, path: NumericId) -> dict[str, bool]:
    await request.app[OPS].store.delete_webhook(path.id)
    request.app[OPS].signal.notify()
    return {"deleted": True}


@route("GET", "/api/v1/webhooks/dead-letters", roles(Role.OPERATOR),
       "Messages a webhook did not take after every retry")  # fmt: skip
async def list_dead_letters(request: web.Request, query: DeadLetterQuery) -> list[DeadLetterView]:
    return await request.app[OPS].store.dead_letters(query.webhook, query.all != "true")


@route("POST", "/api/v1/webhooks/dead-letters/{id}/replay", roles(Role.OPERATOR),
       "Try a dead letter once more")  # fmt: skip
async def replay_dead_letter(request: web.Request, path: NumericId) -> ReplayView:
    error = await request.app[OPS].dispatcher.replay(path.id)
    return ReplayView(id=path.id, delivered=error is None, error=error or "")


ROUTES: tuple[Route, ...] = (
    stream, list_webhooks, add_webhook,
    # fixed paths before /webhooks/{id}
    list_dead_letters, replay_dead_letter, delete_webhook,
)  # fmt: skip
