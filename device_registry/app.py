"""Composition root of ``gridwatch registry serve``: the registry API alone, on its own store.

``build_app`` is also what ``gridwatch central run`` mounts, on the store it shares with the
bridge. Standing alone, the app owns its store through ``cleanup_ctx`` (opened on start-up,
disposed last on shutdown).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from device_registry.api import HEALTH_PARTS, STORE, HealthPart, json_errors, routes
from device_registry.db import default_url
from device_registry.errors import RegistryError
from device_registry.store import RegistryStore

logger = logging.getLogger(__name__)


def build_app(
    db_url: str | None = None,
    store: RegistryStore | None = None,
    health_parts: dict[str, HealthPart] | None = None,
) -> web.Application:
    """The API on its own store (``db_url``) or on one the caller owns (``store``)."""
    if (db_url is None) == (store is None):
        raise ValueError("give build_app a db_url or a store, not both")
    app = web.Application(middlewares=[json_errors])
    app.add_routes(routes())
    app[HEALTH_PARTS] = health_parts or {}

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        if store is not None:
            app[STORE] = store
            yield
            return
        assert db_url is not None
        app[STORE] = await RegistryStore.open(db_url)
        yield
        await app[STORE].close()

    app.cleanup_ctx.append(store_ctx)
    return app


@asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``app`` while the block runs; yields its base URL (port 0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise RegistryError(f"registry API cannot listen on {host}:{port}: {exc}") from exc
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{bound_host}:{bound_port}"
        logger.info("registry API on %s (OpenAPI: %s/api/v1/openapi.json)", url, url)
        yield url
    finally:
        await runner.cleanup()


def db_url_from(args: argparse.Namespace) -> str:
    url: str = args.db_url or default_url(args.data_dir)
    return url


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serving(build_app(db_url_from(args)), args.http_host, args.http_port):
        await stop.wait()
    logger.info("registry stopped")


def main(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(args))
    except RegistryError as exc:
        logger.error("%s", exc)
        return 1
    return 0
