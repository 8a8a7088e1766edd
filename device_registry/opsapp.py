"""Wiring of alert operations, delivery, health, metrics and the dashboard into the registry app.

``install`` adds the routes and a ``cleanup_ctx`` that starts the delivery tasks once the store is
open (webhook dispatcher, escalation clock, and the MQTT platform publisher when a broker is
given) and stops them, last-started first, on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from device_registry import dashboard, opsapi
from device_registry.api import STORE
from device_registry.auth import public
from device_registry.delivery.escalator import escalate_forever
from device_registry.delivery.feed import FeedSignal
from device_registry.delivery.mqtt_out import MqttTarget, PlatformPublisher
from device_registry.delivery.sse import SseHub
from device_registry.delivery.webhooks import RetryPolicy, WebhookDispatcher
from device_registry.opsapi import OPS, History, Ops
from device_registry.opsstore import OpsStore
from gridwatch import metrics


@dataclass
class Delivery:
    """Settings of the delivery side; the defaults suit production."""

    mqtt: MqttTarget | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_s: float = 1.0
    escalate_every_s: float = 5.0
    heartbeat_s: float = 15.0
    history: History | None = None
    extra_metrics: list[metrics.Spec] = field(default_factory=list)
    """Metrics of other parts of the hosting process (the bridge in ``central run``)."""


def install(app: web.Application, delivery: Delivery | None = None) -> None:
    d = delivery or Delivery()
    app.add_routes(opsapi.routes())
    dashboard.install(app)
    registry = metrics.registry_of(*_metrics(app), *d.extra_metrics)
    app.router.add_get("/metrics", public(metrics.handler(registry)))

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with _running(app, d):
            yield

    app.cleanup_ctx.append(ctx)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    if OPS in app:
        await app[OPS].hub.close()


@contextlib.asynccontextmanager
async def _running(app: web.Application, d: Delivery) -> AsyncIterator[None]:
    store = OpsStore(app[STORE])
    signal = FeedSignal(d.poll_s)
    store.ops.on_feed.append(signal.notify)
    async with aiohttp.ClientSession() as session:
        ops = Ops(store, signal, SseHub(store, signal, d.heartbeat_s),
                  WebhookDispatcher(store, signal, session, d.retry), session, d.history)  # fmt: skip
        app[OPS] = ops
        jobs: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("webhooks", ops.dispatcher.run()),
            ("escalation", escalate_forever(store, d.escalate_every_s)),
        ]
        if d.mqtt is not None:
            ops.publisher = PlatformPublisher(store, signal, d.mqtt)
            jobs.append(("platform-publisher", ops.publisher.run()))
        tasks = [asyncio.create_task(job, name=name) for name, job in jobs]
        try:
            yield
        finally:
            for task in reversed(tasks):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            store.ops.on_feed.remove(signal.notify)


def _metrics(app: web.Application) -> list[metrics.Spec]:
    def part(read: Any) -> Any:
        # zero until the delivery side is up (a scrape may come first)
        return lambda: read(app[OPS]) if OPS in app else 0

    return [
        metrics.counter("gridwatch_webhook_deliveries", "Webhook messages delivered",
                        part(lambda o: o.dispatcher.delivered)),
        metrics.counter("gridwatch_webhook_failed_attempts", "Webhook POSTs that failed",
                        part(lambda o: o.dispatcher.failed_attempts)),
        metrics.counter("gridwatch_webhook_dead_letters", "Webhook messages dead-lettered",
                        part(lambda o: o.dispatcher.dead)),
        metrics.gauge("gridwatch_sse_clients", "Open alert streams",
                      part(lambda o: o.hub.clients)),
        metrics.counter("gridwatch_platform_published", "Lifecycle and escalation messages "
                        "published on the MQTT platform tree",
                        part(lambda o: o.publisher.published if o.publisher else 0)),
    ]  # fmt: skip
