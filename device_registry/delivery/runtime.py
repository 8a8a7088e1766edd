"""The delivery side's wiring: ``delivery_ctx`` is a cleanup context (after the store's) that
starts the delivery tasks (webhook dispatcher, escalation clock, and the MQTT platform publisher
when a broker is given) whenever this process holds the delivery lease, and stops them,
last-started first, on shutdown; ``OPS`` is what the delivery routes reach.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from device_registry.alerts.store import OpsStore
from device_registry.delivery.escalator import escalate_forever, escalation_outage
from device_registry.delivery.feed import FeedSignal
from device_registry.delivery.lease import DeliveryLease, Elsewhere
from device_registry.delivery.mqtt_out import PlatformPublisher
from device_registry.delivery.sse import SseHub
from device_registry.delivery.webhooks import RetryPolicy, SecretBox, WebhookDispatcher
from device_registry.health.routes import History
from device_registry.http.state import HEALTH_PARTS, STORE
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.ground import metrics
from gridwatch.ground.mqttsession import SessionState


@dataclass
class Ops:
    """What the delivery handlers reach: built at start-up by ``delivery_ctx``."""

    store: OpsStore
    signal: FeedSignal
    hub: SseHub
    dispatcher: WebhookDispatcher
    session: aiohttp.ClientSession
    publisher: PlatformPublisher | None = None


OPS = web.AppKey("ops", Ops)
LEASE = web.AppKey("lease", DeliveryLease)


@dataclass
class Delivery:
    """Settings of the delivery side; the defaults suit production."""

    mqtt: BrokerSettings | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll_s: float = 1.0
    escalate_every_s: float = 5.0
    lease_retry_s: float = 5.0
    """How often a standby registry process asks for the delivery lease (``lease.py``)."""
    heartbeat_s: float = 15.0
    history: History | None = None
    """The hosting process's telemetry history, for the readings endpoint (none: 501)."""
    extra_metrics: list[metrics.Spec] = field(default_factory=list)
    """Metrics of other parts of the hosting process (the bridge in ``central run``)."""


def delivery_ctx(d: Delivery) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with _running(app, d):
            yield

    return ctx


async def end_streams(app: web.Application) -> None:
    if OPS in app:
        await app[OPS].hub.close()


@contextlib.asynccontextmanager
async def _running(app: web.Application, d: Delivery) -> AsyncIterator[None]:
    store = OpsStore(app[STORE])
    signal = FeedSignal(d.poll_s)
    store.ops.on_feed.append(signal.notify)
    async with aiohttp.ClientSession() as session:
        ops = Ops(store, signal, SseHub(store, signal, d.heartbeat_s),
                  WebhookDispatcher(store, signal, session, d.retry, secrets=SecretBox.from_env()),
                  session)  # fmt: skip
        app[OPS] = ops
        if d.mqtt is not None:
            ops.publisher = publisher = PlatformPublisher(store, signal, d.mqtt)

        clock_outage = escalation_outage()

        def jobs() -> list[tuple[str, Coroutine[Any, Any, None]]]:
            out = [("webhooks", ops.dispatcher.run()),
                   ("escalation", escalate_forever(store, d.escalate_every_s,
                                                   outage=clock_outage))]  # fmt: skip
            return out

        lease = app[LEASE] = DeliveryLease(app[STORE].engine, d.lease_retry_s)
        if ops.publisher is not None:
            # only the process holding the lease publishes: the others' session is down by design
            app[HEALTH_PARTS]["platform publisher"] = lambda: publisher_part(
                lease, publisher.mqtt.state
            )
        leading = asyncio.create_task(_deliver_while_leading(lease, jobs, ops.publisher),
                                      name="delivery")  # fmt: skip
        try:
            yield
        finally:
            leading.cancel()
            await asyncio.gather(leading, return_exceptions=True)
            store.ops.on_feed.remove(signal.notify)


def publisher_part(lease: DeliveryLease, state: SessionState) -> dict[str, Any]:
    """The platform publisher for ``/health``: the holder's session, or a standby's word on
    whether another process delivers (``DeliveryLease.elsewhere``). ``standby``: why this
    process does not publish, in plain words; ``failing`` also when no process is known to."""
    part: dict[str, Any] = {**state.report(), "delivering": lease.held}
    if lease.held:
        return {**part, "failing": state.failing}
    elsewhere = lease.elsewhere
    if elsewhere is Elsewhere.UNKNOWN and lease.database_down:
        # the bridges publish the device alerts themselves, from their spools: only what the
        # registry itself says (lifecycle, escalation) waits, and it is in the database
        return {**part, "failing": True, "waiting": WAITING_FOR_DATABASE}
    return {**part, "failing": elsewhere is not Elsewhere.LIVE, "standby": elsewhere.value}


WAITING_FOR_DATABASE = (
    "waiting for the registry database: device alerts reach the platform through the bridges; "
    "lifecycle and escalation messages go out when the database is back"
)


async def _deliver_while_leading(
    lease: DeliveryLease, jobs: Callable[[], list[tuple[str, Coroutine[Any, Any, None]]]],
    publisher: PlatformPublisher | None = None,
) -> None:  # fmt: skip
    """Run the delivery jobs whenever this process holds the lease; stand by otherwise. The
    platform publisher's broker session outlives a lost lease (``mqtt_out``): it publishes
    again when the lease is back, and goes only when another process delivers."""
    session: asyncio.Task[None] | None = None
    try:
        while True:
            async with lease.holding() as lost:
                if publisher is not None:
                    if session is None or session.done():
                        session = asyncio.create_task(_platform_session(lease, publisher),
                                                      name="platform-publisher")  # fmt: skip
                    publisher.leading.set()
                tasks = [asyncio.create_task(job, name=name) for name, job in jobs()]
                try:
                    await lost
                finally:
                    if publisher is not None:
                        publisher.leading.clear()
                    for task in reversed(tasks):
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
    finally:
        if session is not None:
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)


async def _platform_session(lease: DeliveryLease, publisher: PlatformPublisher) -> None:
    """The publisher's session, from the first time this process holds the lease until another
    process is found to deliver."""
    run = asyncio.create_task(publisher.run())
    other = asyncio.create_task(lease.another_delivers.wait())
    try:
        await asyncio.wait([run, other], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (run, other):
            task.cancel()
        await asyncio.gather(run, other, return_exceptions=True)


def delivery_metrics(app: web.Application) -> list[metrics.Spec]:
    def part(read: Any) -> Any:
        # zero until the delivery side is up (a scrape may come first)
        return lambda: read(app[OPS]) if OPS in app else 0

    return [
        metrics.gauge("gridwatch_delivery_leader",
                      "1 in the registry process that delivers webhooks, platform topics and "
                      "the case clock (one at a time)",
                      lambda: float(app[LEASE].held) if LEASE in app else 0.0),
        metrics.counter("gridwatch_webhook_deliveries", "Webhook messages delivered",
                        part(lambda o: o.dispatcher.delivered)),
        metrics.counter("gridwatch_webhook_failed_attempts", "Webhook POSTs that failed",
                        part(lambda o: o.dispatcher.failed_attempts)),
        metrics.counter("gridwatch_webhook_dead_letters", "Webhook messages dead-lettered",
                        part(lambda o: o.dispatcher.dead)),
        metrics.gauge("gridwatch_sse_clients", "Open alert streams",
                      part(lambda o: o.hub.clients)),
        metrics.counter("gridwatch_platform_published", "Case lifecycle messages published "
                        "on the MQTT platform tree",
                        part(lambda o: o.publisher.published if o.publisher else 0)),
    ]  # fmt: skip
