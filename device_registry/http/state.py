"""What every room's handlers reach through the app: typed keys, set by the composition root."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from device_registry.db.store import RegistryStore
from device_registry.health.centre import BridgeReport, Link

STORE = web.AppKey("store", RegistryStore)
HealthPart = Callable[[], dict[str, Any]]
"""A function reporting one part of the hosting process (e.g. the bridge) for ``/health``; a
callable, so that the registry need not import what reports."""
HEALTH_PARTS = web.AppKey("health_parts", dict[str, HealthPart])
BridgeProbe = Callable[[], BridgeReport]
"""A bridge in the hosting process (``central run``), reporting its dependencies live."""
BRIDGES = web.AppKey("bridges", list[BridgeProbe])
DB_LINK = web.AppKey("db_link", Link)
"""How this process's pings of its database went (``/health``)."""


def now_ms() -> int:
    """The centre's clock, epoch ms."""
    return time.time_ns() // 1_000_000
