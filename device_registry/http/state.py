"""What every room's handlers reach through the app: typed keys, set by the composition root."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from device_registry.db.store import RegistryStore

STORE = web.AppKey("store", RegistryStore)
HealthPart = Callable[[], dict[str, Any]]
"""A function reporting one part of the hosting process (e.g. the bridge) for ``/health``; a
callable, so that the registry need not import what reports."""
HEALTH_PARTS = web.AppKey("health_parts", dict[str, HealthPart])


def now_ms() -> int:
    """The centre's clock, epoch ms."""
    return time.time_ns() // 1_000_000
