"""The embedded MQTT broker (amqtt, in-process) for running with no broker configured.

A zero-install default for the demo and a trial on one machine: MQTT 3.1.1 only (so no shared
subscriptions), slower than mosquitto, anonymous, loopback only, nothing kept across a restart.
Its defaults would bind 0.0.0.0:1883 and load chatty logging and $SYS plugins, so the listener
and the plugin list are given explicitly.

Two things amqtt 0.12 does not do by itself, done here:

- **Retained messages go only to the subscriptions they match.** On every CONNECT, amqtt 0.12
  sends the new client the retained messages of every topic filter that *any* client holds (the
  loop meant to refresh a resumed session's own subscriptions walks the broker's whole
  subscription table), so a subscriber to ``foo/bar`` received every gateway's Birth and config,
  and a second gateway received the first one's config. :class:`EmbeddedBroker` sends retained
  messages to a session only for filters that session holds, and only what it may receive.
- **Per-gateway topic scoping by client id** (:func:`allowed`, through :class:`GatewayScope`):
  gateway ``G`` connects as ``gridwatch-edge-G`` and may publish (its last will included:
  :class:`GatewayWill`), subscribe and receive only under ``P/gw/G/#``; a gateway's ``config``
  and ``cmd`` topics reach only that gateway and the centre, whose clients (``B`` and ``B-*``,
  ``B`` the bridge id) may do everything. Client ids are
  taken on trust (no authentication): this contains a misconfigured gateway, not an attacker;
  :data:`LIMITS` says so at start-up. Field gateways belong on mosquitto with dynamic security
  (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from cloud_bridge.config import BridgeConfig
from cloud_bridge.errors import BrokerError
from device_registry.inventory.provisioning import EDGE_CLIENT_PREFIX
from gridwatch.ground.contract import DEFAULT_PREFIX, Topics

logger = logging.getLogger(__name__)

DOWNLINK_LEAVES = frozenset({"config", "cmd"})
"""A gateway's topics that carry the centre's orders to it: nobody else's to read."""
DEFAULT_CENTRE = BridgeConfig.client_id

LIMITS = (
    "embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d is for a demo or a trial on this machine, "
    "not for gateways in the field. It does NOT authenticate: clients are anonymous and any "
    "program on this machine may connect under any client id, a gateway's or the centre's. It "
    "does NOT encrypt (no TLS). It does NOT persist: retained configs, sessions and queued "
    "messages are gone when it stops, and messages for a disconnected client are not kept. It "
    "enforces, by client id: a gateway (%s<id>) publishes (its last will too), subscribes and "
    "receives only under %s/gw/<id>/#; a gateway's config and cmd topics reach only that "
    "gateway and the centre (client ids %s and %s-*); a retained message goes only to "
    "subscriptions it matches. Other "
    "client ids may publish anywhere and read all but gateways' config and cmd. Use mosquitto "
    "(--mqtt-host) with dynamic security for a district (docs/security.md)."
)


class Scope:
    """Whose topic is what, for one prefix and one centre (the bridge id ``centre``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX, centre: str = DEFAULT_CENTRE) -> None:
        self.topics = Topics(prefix)
        self.prefix = self.topics.prefix
        self.centre = centre

    def is_centre(self, client_id: str) -> bool:
        return client_id == self.centre or client_id.startswith(f"{self.centre}-")

    def gateway_of(self, client_id: str) -> str | None:
        """The gateway a client id belongs to (None: not a gateway's)."""
        gateway = client_id.removeprefix(EDGE_CLIENT_PREFIX)
        return gateway if gateway and gateway != client_id else None


def allowed(scope: Scope, client_id: str, topic: str, action: Action) -> bool:
    """May ``client_id`` publish to, subscribe to (``topic`` is then a filter) or receive
    ``topic``? Pure: the table in tests/test_embedded_broker.py is its specification."""
    if scope.is_centre(client_id):
        return True
    where = scope.topics.parse_gateway_topic(topic)  # (gateway, leaf) of P/gw/G/leaf...
    gateway = scope.gateway_of(client_id)
    if gateway is not None:  # a filter too: "P/gw/G/#" parses as (G, "#"), "P/gw/+/x" as ("+", x)
        return where is not None and where[0] == gateway
    if action is Action.RECEIVE and where is not None:
        return where[1] not in DOWNLINK_LEAVES
    return True


class GatewayScope(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's topic check (subscribe, publish and each delivery) answered by :func:`allowed`."""

    @dataclass
    class Config:
        prefix: str = DEFAULT_PREFIX
        centre: str = DEFAULT_CENTRE

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.scope = Scope(context.config.prefix, context.config.centre)

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or topic is None or action is None:
            return False
        return allowed(self.scope, str(session.client_id or ""), topic, action)


class GatewayWill(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """Refuses the CONNECT of a gateway whose last will would publish outside its tree: amqtt
    publishes a will without the topic check, so a gateway could announce another's Death."""

    Config = GatewayScope.Config

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.scope = Scope(context.config.prefix, context.config.centre)

    async def authenticate(self, *, session: Any) -> bool | None:
        client_id, topic = str(session.client_id or ""), session.will_topic
        if not session.will_flag or topic is None:
            return None  # no opinion: the anonymous plugin decides
        if allowed(self.scope, client_id, topic, Action.PUBLISH):
            return None
        logger.warning("embedded broker: refused %s, whose last will names %s, outside its "
                       "tree", client_id, topic)  # fmt: skip
        return False


class Subscriptions(dict[str, Any]):
    """amqtt's table of subscriptions, iterated over a copy.

    amqtt 0.12's broadcast loop walks ``_subscriptions.items()`` and awaits inside the walk (its
    topic filter plugins), so a SUBSCRIBE or UNSUBSCRIBE arriving meanwhile raised "dictionary
    changed size during iteration" and the message being broadcast reached nobody after it. A
    copy of the pairs makes the walk see the table as it was when the message arrived.
    """

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return list(super().items())


class EmbeddedBroker(Broker):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt's broker, sending retained messages only where they belong (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = Subscriptions(getattr(self, "_subscriptions"))  # noqa: B009

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        # amqtt calls this after a SUBSCRIBE (the filter is then the session's) and, on CONNECT,
        # for every filter in its table, everyone's included: only the session's own count
        topic_filter, qos = subscription
        holders = self._subscriptions.get(topic_filter, [])
        if not any(held.client_id == session.client_id for held, _ in holders):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = [
            handler.mqtt_publish(m.topic, m.data, min(qos, m.qos or qos), retain=True)
            for m in list(self._retained_messages.values())
            if self._matches(m.topic, topic_filter)
            and await self._topic_filtering(session, topic=m.topic, action=Action.RECEIVE)
        ]
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, Exception):  # the client went away meanwhile: its loss
                logger.debug("retained message to %s not sent: %r", session.client_id, result)


def broker_config(host: str, port: int, scope: Scope | None = None) -> dict[str, Any]:
    scope = scope or Scope()
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 1000}
        },
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            f"{__name__}.GatewayScope": {"prefix": scope.prefix, "centre": scope.centre},
            f"{__name__}.GatewayWill": {"prefix": scope.prefix, "centre": scope.centre},
        },
    }


@asynccontextmanager
async def embedded_broker(
    host: str = "127.0.0.1", port: int = 1883, scope: Scope | None = None
) -> AsyncIterator[str]:
    """Run an amqtt broker while the block runs; yields ``host:port``."""
    scope = scope or Scope()
    # amqtt logs every connection and state transition at INFO: keep the demo's console readable
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    broker = EmbeddedBroker(broker_config(host, port, scope))
    try:
        await broker.start()
    except OSError as exc:
        raise BrokerError(f"embedded broker cannot listen on {host}:{port}: {exc}") from exc
    logger.warning(LIMITS, host, port, EDGE_CLIENT_PREFIX, scope.prefix, scope.centre,
                   scope.centre)  # fmt: skip
    try:
        yield f"{host}:{port}"
    finally:
        await broker.shutdown()
