"""The embedded MQTT broker (amqtt, in-process) for running with no broker configured.

A zero-install default for the demo: MQTT 3.1.1 only (so no shared subscriptions), slower than
mosquitto, anonymous, loopback only. Its defaults would bind 0.0.0.0:1883 and load chatty logging
and $SYS plugins, so the listener and the plugin list are given explicitly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from amqtt.broker import Broker

from cloud_bridge.errors import BrokerError

logger = logging.getLogger(__name__)


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 1000}
        },
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


@asynccontextmanager
async def embedded_broker(host: str = "127.0.0.1", port: int = 1883) -> AsyncIterator[str]:
    """Run an amqtt broker while the block runs; yields ``host:port``."""
    # amqtt logs every connection and state transition at INFO: keep the demo's console readable
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    broker = Broker(broker_config(host, port))
    try:
        await broker.start()
    except OSError as exc:
        raise BrokerError(f"embedded broker cannot listen on {host}:{port}: {exc}") from exc
    logger.info("embedded MQTT 3.1.1 broker (amqtt) on %s:%d", host, port)
    try:
        yield f"{host}:{port}"
    finally:
        await broker.shutdown()
