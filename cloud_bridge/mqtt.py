"""One MQTT lane of the bridge: subscribe at QoS 1, receive in batches, acknowledge by hand.

The connection itself (connect, MQTT 5 / 3.1.1 fallback, subscribe on every connect, reconnect
with the one backoff) is ``gridwatch.ground.mqttsession``'s; this module says how the bridge's
sessions are set up (``session_settings``) and what the bridge does with a connected client
(``Lane``). aiomqtt lacks manual acknowledgement, which paho has: the session helper reaches
into the paho client for it in that one place.

The session is persistent (fixed client id, no clean start, a session expiry on MQTT 5), so
messages received but not yet acknowledged when the bridge dies are delivered again. It owns its
subscriptions (``gridwatch.ground.mqttsession``): its note lives in the data dir, and a resumed
session drops the plain and the shared form (of the current group) of each filter it does not
want now, so a bridge moved into, out of or between share groups takes only what it should.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_bridge.core import Raw
from cloud_bridge.errors import BrokerError
from gridwatch.ground.endpoints import parse_endpoints
from gridwatch.ground.mqttsession import (
    SESSION_EXPIRY_S,
    Protocol,
    SessionSettings,
    Version,
    ack,
    subscriptions_note,
)

logger = logging.getLogger(__name__)

MqttVersion = Version


@dataclass(frozen=True)
class MqttSettings:
    host: str
    """One broker host, or several written ``host[:port],host[:port]`` (tried in turn); on a
    connected ``Lane``, the broker it is on."""
    port: int
    """The port of a broker written without one."""
    client_id: str
    username: str | None = None
    password: str | None = None
    version: Protocol = "auto"
    """What to ask for; on a connected ``Lane``, what the broker speaks."""
    share_group: str | None = None
    receive_maximum: int = 1000
    """MQTT 5: unacknowledged messages the broker may send us at once (our memory bound)."""
    keepalive: int = 30
    session_expiry_s: int = SESSION_EXPIRY_S
    """MQTT 5: how long the broker keeps the session (and queues its share) while we are away."""
    data_dir: Path | None = None
    """Where the session notes its subscriptions; None: no note."""

    def __repr__(self) -> str:  # the password never reaches a log line or a traceback
        return f"MqttSettings({self.client_id}, {self.username}@{self.host}:{self.port})"


def wanted_filters(
    group: str | None, filters: Sequence[str], unshared: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The filters to subscribe to (each of ``filters`` shared by ``group`` if set, those of
    ``unshared`` always plain), and those an earlier configuration of the same client may have
    left in its session: the other form of each (the shared one of the current group only: an
    earlier group's name is known from the note alone)."""
    wanted = [f"$share/{group}/{f}" if group and f not in unshared else f for f in filters]
    forms = {*filters, *(f"$share/{group}/{f}" for f in filters if group)}
    return wanted, sorted(forms - set(wanted))


def session_settings(
    s: MqttSettings, filters: Sequence[str], unshared: Sequence[str] = ()
) -> SessionSettings:
    """A persistent, manually acknowledged session subscribed to ``filters`` at QoS 1 (shared
    by ``share_group`` if set, which needs MQTT 5, except ``unshared``); back within a second
    of the broker's return, like the edge: the broker is the bridge's only input."""
    group = s.share_group
    wanted, may_hold = wanted_filters(group, filters, unshared)
    note = subscriptions_note(s.data_dir, s.client_id) if s.data_dir is not None else None
    return SessionSettings(
        endpoints=parse_endpoints(s.host, s.port), client_id=s.client_id, username=s.username,
        password=s.password, protocol="5" if group and s.version == "auto" else s.version,
        receive_maximum=s.receive_maximum, manual_ack=True,
        subscriptions=tuple((f, 1) for f in wanted), keepalive_s=s.keepalive,
        session_expiry_s=s.session_expiry_s, note_file=note, may_hold=tuple(may_hold),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Inbound(Raw):
    mid: int
    qos: int


class Lane:
    """What the bridge does with one connected session; aiomqtt's errors become ``BrokerError``."""

    def __init__(self, client: aiomqtt.Client, settings: MqttSettings) -> None:
        self.settings = settings
        self._client = client
        self._messages = client.messages

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
            ack(self._client, m.mid, m.qos)

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
        expiry_s: int | None = None,
    ) -> None:  # fmt: skip
        """Returns once the broker has the message (PUBACK). ``expiry_s``: MQTT 5's message
        expiry (the broker drops it, retained or queued, after that long)."""
        props = None
        if expiry_s is not None and self.settings.version == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = expiry_s
        try:
            await self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc


__all__ = ["Inbound", "Lane", "MqttSettings", "MqttVersion", "session_settings", "wanted_filters"]
