"""The inventory's wiring: on app start-up ``installer_ctx`` bootstraps the admin token and builds
the registry, its command sender and its downlink session (with the broker access); the routes reach
them through ``INSTALLERS``."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from device_registry.errors import BrokerUnavailable
from device_registry.http import auth
from device_registry.http.state import HEALTH_PARTS, STORE
from device_registry.inventory.commands import Commands
from device_registry.inventory.configgen import Profiles, Uplink
from device_registry.inventory.downlink import BrokerSettings, Downlink
from device_registry.inventory.provisioning import DynsecAccess, NoBrokerAccess
from device_registry.inventory.registry import Registry
from gridwatch.ground.gatewayconf import default_profiles_dir
from gridwatch.ground.profiles import load_profiles

logger = logging.getLogger(__name__)

_STOP_S = 3.0


@dataclass(frozen=True)
class InstallerSettings:
    uplink: Uplink = field(default_factory=Uplink)
    """What generated configs tell gateways about the broker."""
    broker: BrokerSettings | None = None
    """The registry's own broker session (configs, commands); None: none (nothing is pushed)."""
    dynsec: bool = False
    """Whether that session may drive mosquitto's dynamic-security plugin."""
    profiles_dir: Path | None = None
    announce: Callable[[str], None] = print
    """Where a freshly generated admin token is shown, once."""


@dataclass
class Installers:
    registry: Registry
    commands: Commands
    downlink: Downlink | None


INSTALLERS = web.AppKey("installers", Installers)


def _now() -> int:
    return time.time_ns() // 1_000_000


def installer_ctx(settings: InstallerSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context (after the store's): admin bootstrap, registry, downlink task."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[STORE]
        token = await auth.bootstrap_admin(store)
        if token is not None:
            settings.announce(
                f"gridwatch registry: admin API token (shown once, keep it): {token}\n"
                f"  or start with {auth.ADMIN_TOKEN_ENV} set to choose your own"
            )
        profiles = _profiles(settings.profiles_dir)
        store.profiles = profiles  # device views show each value's decimals from its profile
        downlink: Downlink | None = None
        pushed: Callable[[str], None] = lambda _gw: None  # noqa: E731 - nothing to push to
        registry = Registry(
            store, NoBrokerAccess(), settings.uplink, profiles, lambda gw: pushed(gw)
        )
        if settings.broker is not None:
            downlink = Downlink(settings.broker, _config_source(registry), registry.pending_pushes,
                                registry.record_ack, lambda r: commands.record(r), _now)  # fmt: skip
            pushed = downlink.push
            if settings.dynsec:
                registry.broker = DynsecAccess(downlink, settings.broker.prefix)
        commands = Commands(store, profiles, _sender(downlink))
        app[INSTALLERS] = Installers(registry, commands, downlink)
        tasks: list[asyncio.Task[None]] = []
        if downlink is not None:
            tasks.append(asyncio.create_task(downlink.run(), name="registry-downlink"))
            state = downlink.session.state
            app[HEALTH_PARTS]["registry downlink"] = lambda: {
                **state.report(), "failing": state.failing, "dropped": downlink.dropped,
            }  # fmt: skip
            if settings.dynsec and settings.broker and settings.broker.username:
                downlink.on_connect = _central_role(downlink, registry, settings.broker.username)
        yield
        for t in tasks:
            t.cancel()
        if tasks:  # a broker that does not answer our DISCONNECT must not hold up the shutdown
            _, stuck = await asyncio.wait(tasks, timeout=_STOP_S)
            for t in stuck:
                logger.warning("registry: %s did not stop within %.0fs", t.get_name(), _STOP_S)

    return ctx


def _profiles(folder: Path | None) -> Callable[[], Profiles]:
    return functools.cache(lambda: load_profiles(folder or default_profiles_dir()))


def _sender(downlink: Downlink | None) -> Any:
    async def send(gateway: str, cmd: Any) -> None:
        if downlink is None:
            raise BrokerUnavailable("this registry has no broker session (--mqtt-host)")
        await downlink.command(gateway, cmd)

    return send


def _config_source(registry: Registry) -> Any:
    async def config_of(gateway: str) -> tuple[int, dict[str, Any] | None]:
        doc = await registry.config_document(gateway)
        return (int(doc["version"]) if doc else 0), doc

    return config_of


def _central_role(
    downlink: Downlink, registry: Registry, username: str
) -> Callable[[], Awaitable[None]]:
    """On every connect, before the session serves requests: the registry's own user may use
    the whole gateway tree (granting it drops the session once; the next connect finds it)."""

    async def setup() -> None:
        try:
            assert isinstance(registry.broker, DynsecAccess)
            await registry.broker.ensure_central(username)
        except BrokerUnavailable as exc:
            logger.error("broker: %s", exc)

    return setup
