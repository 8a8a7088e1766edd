"""One MQTT session of the bridge: subscribe at QoS 1, receive in batches, acknowledge by hand.

Why aiomqtt and not paho with our own loop glue: aiomqtt already ties paho to asyncio (socket
callbacks, cancellation, awaited PUBACKs for our publishes). What it lacks is manual
acknowledgement, which paho has; ``_ManualAck`` reaches into the paho client in that one place.

The session is persistent (fixed client id, no clean start, a session expiry on MQTT 5), so
messages received but not yet acknowledged when the bridge dies are delivered again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_bridge.core import Raw
from cloud_bridge.errors import BrokerError, ProtocolUnsupported

logger = logging.getLogger(__name__)

MqttVersion = Literal["5", "3.1.1"]
_SESSION_EXPIRY_S = 7 * 24 * 3600
_UNSUPPORTED = {
    "Unsupported protocol version",
    "Connection Refused: unacceptable protocol version.",
}


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    version: MqttVersion = "5"
    share_group: str | None = None
    receive_maximum: int = 1000
    """MQTT 5: unacknowledged messages the broker may send us at once (our memory bound)."""
    keepalive: int = 30


@dataclass(frozen=True, slots=True)
class Inbound(Raw):
    mid: int
    qos: int


class _ManualAck:
    """paho's manual acknowledgement, which aiomqtt does not expose (private ``_client``)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho: paho.Client = client._client
        self._paho.manual_ack_set(True)  # before connecting: paho must not PUBACK on receipt

    def ack(self, mid: int, qos: int) -> None:
        self._paho.ack(mid, qos)


class MqttSession:
    """``async with MqttSession(settings, filters) as s``: connected and subscribed."""

    def __init__(self, settings: MqttSettings, filters: Sequence[str]) -> None:
        self.settings = settings
        self.filters = [self._shared(f) for f in filters]
        self._client = _client(settings)
        self._acker = _ManualAck(self._client)
        self._messages = self._client.messages

    def _shared(self, topic_filter: str) -> str:
        group = self.settings.share_group
        return f"$share/{group}/{topic_filter}" if group else topic_filter

    async def __aenter__(self) -> MqttSession:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttCodeError as exc:
            if str(exc.rc) in _UNSUPPORTED or exc.rc in (1, 132):
                raise ProtocolUnsupported(f"broker refused MQTT {self.settings.version}") from exc
            raise BrokerError(f"connect to {self._where()} refused: {exc}") from exc
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"connect to {self._where()} failed: {exc}") from exc
        try:
            granted = await self._client.subscribe([(f, 1) for f in self.filters])
        except aiomqtt.MqttError as exc:
            await self._client.__aexit__(None, None, None)
            raise BrokerError(f"subscribe failed: {exc}") from exc
        logger.info("bridge subscribed on %s (MQTT %s): %s granted %s", self._where(),
                    self.settings.version, self.filters, [str(g) for g in granted])  # fmt: skip
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._client.__aexit__(et, e, tb)
        except aiomqtt.MqttError as exc:
            logger.debug("disconnect from %s: %s", self._where(), exc)

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def receive(self, max_messages: int) -> list[Inbound]:
        """Wait for one message, then take whatever else is already queued (up to the bound)."""
        out: list[Inbound] = []
        try:
            while True:
                m = await anext(self._messages)
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                out.append(Inbound(m.topic.value, payload, m.mid, m.qos))
                if len(out) >= max_messages or len(self._messages) == 0:
                    return out
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"lost {self._where()}: {exc}") from exc

    def ack(self, messages: Sequence[Inbound]) -> None:
        for m in messages:
            if m.qos > 0:
                self._acker.ack(m.mid, m.qos)

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Returns once the broker has the message (PUBACK)."""
        try:
            await self._client.publish(topic, payload, qos=qos)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc


def _client(s: MqttSettings) -> aiomqtt.Client:
    if s.version == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = _SESSION_EXPIRY_S
        props.ReceiveMaximum = s.receive_maximum
        return aiomqtt.Client(
            s.host, s.port, identifier=s.client_id, username=s.username, password=s.password,
            protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
            keepalive=s.keepalive, max_inflight_messages=100,
        )  # fmt: skip
    return aiomqtt.Client(
        s.host, s.port, identifier=s.client_id, username=s.username, password=s.password,
        protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, keepalive=s.keepalive,
        max_inflight_messages=100,
    )  # fmt: skip


__all__ = ["Inbound", "MqttSession", "MqttSettings", "MqttVersion"]
