"""Composition root of ``gridwatch registry serve``: the registry API alone, on its own store.

``build_app`` is also what ``gridwatch central run`` mounts, on the store it shares with the
bridge. It adds every room's routes (each room's ``routes.py`` declares its own), the OpenAPI
document generated from them, ``/metrics`` and the dashboard's pages, behind two middlewares:
``problems`` outermost (whatever is raised becomes one problem+json answer), then ``auth``.

Its cleanup contexts run in order on start-up and in reverse on shutdown: the store (owned when
standing alone: opened first, disposed last), the inventory (admin bootstrap, registry, downlink
session), then the delivery side (webhooks, escalation, platform publisher, under the lease).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from aiohttp import web
from prometheus_client import CollectorRegistry

from device_registry.alerts import routes as alerts
from device_registry.db.engine import default_url
from device_registry.db.store import RegistryStore
from device_registry.delivery import routes as delivery_routes
from device_registry.delivery.runtime import Delivery, delivery_ctx, delivery_metrics, end_streams
from device_registry.errors import RegistryError
from device_registry.health import routes as health
from device_registry.health.centre import Link
from device_registry.health.store import Judgements
from device_registry.http import access, dashboard
from device_registry.http.auth import AUTH_STORE, PUBLIC, Role, authenticate, roles
from device_registry.http.limits import CONNECTION_LOG, ServerLimits
from device_registry.http.openapi import document
from device_registry.http.problems import problem_answers
from device_registry.http.routing import Route, add_routes, route
from device_registry.http.state import (
    BRIDGES,
    DB_LINK,
    HEALTH_PARTS,
    STORE,
    BridgeProbe,
    HealthPart,
)
from device_registry.ingest import routes as ingest
from device_registry.inventory import routes as inventory
from device_registry.inventory.configgen import Uplink
from device_registry.inventory.downlink import BrokerSettings
from device_registry.inventory.wiring import InstallerSettings, installer_ctx
from gridwatch.ground import metrics, sdnotify

__all__ = ["Delivery", "InstallerSettings", "build_app", "serving"]

logger = logging.getLogger(__name__)

ROUTES: web.AppKey[tuple[Route, ...]] = web.AppKey("routes")
"""Every route the app serves, as declared: what the OpenAPI document is generated from."""
DEFAULT_LIMITS = ServerLimits()


def build_app(
    db_url: str | None = None,
    store: RegistryStore | None = None,
    health_parts: dict[str, HealthPart] | None = None,
    installers: InstallerSettings | None = None,
    delivery: Delivery | None = None,
    bridges: list[BridgeProbe] | None = None,
) -> web.Application:
    """The API on its own store (``db_url``) or on one the caller owns (``store``); ``bridges``:
    those running in this process, whose dependencies ``/health`` reports live."""
    if (db_url is None) == (store is None):
        raise ValueError("give build_app a db_url or a store, not both")
    d = delivery or Delivery()
    app = web.Application(
        middlewares=[problem_answers, authenticate], client_max_size=ServerLimits.client_max_size
    )
    app[AUTH_STORE] = lambda: app[STORE]
    app[HEALTH_PARTS] = dict(health_parts or {})  # the rooms add theirs as they start
    app[BRIDGES] = list(bridges or [])
    app[DB_LINK] = Link()
    app[health.JUDGEMENTS] = Judgements()
    if d.history is not None:
        app[health.HISTORY] = d.history
    registry = metrics.registry_of(*delivery_metrics(app), *d.extra_metrics)
    served: tuple[Route, ...] = (
        *access.ROUTES, *inventory.ROUTES,
        # the stream's fixed path before the alerts' /alerts/{id}
        *delivery_routes.ROUTES, *alerts.ROUTES, *health.ROUTES, *ingest.ROUTES,
        openapi, _metrics(registry), *_PAGES,
    )  # fmt: skip
    app[ROUTES] = served
    add_routes(app, served)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        if store is not None:
            app[STORE] = store
            yield
            return
        assert db_url is not None
        app[STORE] = await RegistryStore.open(db_url)
        yield
        await app[STORE].close()

    app[inventory.IMPORTS] = set()
    app.on_shutdown.append(inventory.stop_imports)  # before the store closes
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(installer_ctx(installers or InstallerSettings()))
    app.cleanup_ctx.append(delivery_ctx(d))
    app.on_shutdown.append(end_streams)
    return app


@route("GET", "/api/v1/openapi.json", PUBLIC, "This document")
async def openapi(request: web.Request) -> dict[str, Any]:
    served: tuple[Route, ...] = request.app[ROUTES]
    return _document(served)


@functools.cache
def _document(served: tuple[Route, ...]) -> dict[str, Any]:
    # generating it takes most of a second (every model's JSON Schema): once per set of routes
    return document(served)


def _metrics(registry: CollectorRegistry) -> Route:
    return route("GET", "/metrics", PUBLIC, "Prometheus metrics of this process",
                 media=metrics.CONTENT_TYPE)(metrics.handler(registry))  # fmt: skip


_PAGES = (
    route("GET", "/", PUBLIC, "Redirects to the dashboard", media="text/html")(dashboard.root),
    route("GET", "/dashboard", PUBLIC, "The dashboard page", media="text/html")(dashboard.page),
    # a name of plain characters only: anything else (a NUL, a slash) is no asset, 404
    route("GET", "/static/{name:[A-Za-z0-9._-]+}", PUBLIC, "The dashboard's scripts and styles",
          media="application/octet-stream")(dashboard.asset),
    route("GET", "/dashboard/messages", PUBLIC, "The dashboard's words in the page's language "
          "(Chinese first)")(dashboard.messages),
    route("GET", "/api/v1/map", roles(Role.INSTALLER, Role.MAINTENANCE, Role.OPERATOR,
          Role.PLATFORM), "The devices' positions and grid cells for the dashboard's map")(
          dashboard.map_data),
)  # fmt: skip


@asynccontextmanager
async def serving(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None,
    limits: ServerLimits = DEFAULT_LIMITS,
) -> AsyncIterator[str]:  # fmt: skip
    """Serve ``app`` while the block runs; yields its base URL (port 0 picks a free one)."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=limits.keepalive_s,
        shutdown_timeout=limits.shutdown_s, logger=CONNECTION_LOG,
    )  # fmt: skip
    await runner.setup()
    try:
        try:
            site = web.TCPSite(runner, host, port, ssl_context=tls, backlog=limits.backlog)
            await site.start()
        except OSError as exc:
            raise RegistryError(f"registry API cannot listen on {host}:{port}: {exc}") from exc
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"{'https' if tls else 'http'}://{bound_host}:{bound_port}"
        logger.info("registry API on %s (OpenAPI: %s/api/v1/openapi.json)", url, url)
        yield url
    finally:
        await runner.cleanup()


def tls_from(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The API's TLS context from ``--tls-cert``/``--tls-key``; None: plain HTTP."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise RegistryError(f"cannot load the API's TLS certificate {cert}: {exc}") from exc
    return ctx


def installer_settings(
    args: argparse.Namespace, mqtt_host: str | None = None, protocol: str | None = None
) -> InstallerSettings:
    """Broker access for the registry's downlink and what generated configs tell gateways."""
    host = mqtt_host or args.mqtt_host
    user = args.broker_admin_user or args.mqtt_username
    # the secrets were read where the options were merged (gridwatch.ground.centralconf)
    own = args.broker_admin_password
    broker = None
    if host is not None:
        broker = BrokerSettings(
            host=host, port=args.mqtt_port, prefix=args.prefix, username=user,
            password=own if own is not None else args.mqtt_password,
            client_id=f"{args.bridge_id}-registry",
            protocol=cast(Any, protocol or args.mqtt_protocol),
        )  # fmt: skip
    uplink = Uplink(
        host=args.gateway_mqtt_host or host or "127.0.0.1",
        port=args.gateway_mqtt_port or args.mqtt_port, prefix=args.prefix,
        tls=bool(args.gateway_mqtt_ca), ca_file=args.gateway_mqtt_ca,
    )  # fmt: skip
    return InstallerSettings(uplink=uplink, broker=broker, dynsec=args.dynsec)


def db_url_from(args: argparse.Namespace) -> str:
    url: str = args.db_url or default_url(args.data_dir)
    return url


def delivery_settings(args: argparse.Namespace) -> Delivery:
    """Standing alone, the registry publishes lifecycle and escalation messages to the broker
    named on its command line (none: webhooks and the stream only)."""
    if not getattr(args, "mqtt_host", None):
        return Delivery()
    target = BrokerSettings(args.mqtt_host, args.mqtt_port, args.prefix, args.mqtt_username,
                            args.mqtt_password, protocol=args.mqtt_protocol,
                            client_id=f"{args.bridge_id}-registry-platform")  # fmt: skip
    return Delivery(mqtt=target)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = build_app(db_url_from(args), installers=installer_settings(args),
                    delivery=delivery_settings(args))  # fmt: skip
    async with serving(app, args.http_host, args.http_port, tls_from(args)) as url:
        sdnotify.notify(READY=1, STATUS=f"registry API on {url}")
        watchdog = asyncio.create_task(sdnotify.keep_alive(), name="watchdog")
        await stop.wait()
        sdnotify.notify(STOPPING=1, STATUS="stopping")
        watchdog.cancel()
    logger.info("registry stopped")


def main(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(args))
    except RegistryError as exc:
        logger.error("%s", exc)
        return 1
    return 0
