"""Publishes the centre's own platform messages (the cases' steps) on the MQTT platform topic tree
at QoS 1, from a persisted cursor: a restart resumes where the broker last acknowledged.

The device transitions (``alert``) are published by the bridge as it ingests them, on the fast
path; this publisher skips them so each message is on the tree once.

The connection is ``gridwatch.ground.mqttsession``'s: it comes back after any broker restart,
and the pump resumes from the cursor (at-least-once: an event published but not yet recorded in
the cursor when the connection dropped goes out again).

It publishes only while this process holds the delivery lease (``leading``, set by
``runtime.py``). A database outage takes the lease away (its lock lives in a database session)
but not the broker session: it stays connected, publishing nothing, until this process holds the
lease again, and is closed only when another process is found to deliver (which connects under
the same client id).
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiomqtt

from device_registry.alerts.store import OpsStore
from device_registry.delivery.feed import FeedSignal
from device_registry.errors import StoreUnavailable
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.ground.contract import Topics
from gridwatch.ground.endpoints import parse_endpoints
from gridwatch.ground.mqttsession import MqttSession, SessionSettings
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)

CURSOR = "mqtt-platform"
SKIPPED = frozenset({"alert"})


class PlatformPublisher:
    def __init__(self, ops: OpsStore, signal: FeedSignal, target: BrokerSettings) -> None:
        """``target``: the registry's broker access, as its downlink's (one settings class for
        the centre's sessions), under a client id of the publisher's own."""
        self.ops, self.signal, self.target = ops, signal, target
        self.topics = Topics(target.prefix)
        self.published = 0
        self.leading = asyncio.Event()
        """This process holds the delivery lease: it may publish."""
        self.outage = Outage(logger, "platform publisher", "registry database",
                             "the broker session stays up, nothing new to publish")  # fmt: skip
        t = target
        self.mqtt = MqttSession(
            SessionSettings(endpoints=parse_endpoints(t.host, t.port, t.tls), client_id=t.client_id,
                            username=t.username, password=t.password, ca_file=t.ca_file,
                            protocol=t.protocol, persistent=False),
            "platform publisher",
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return self.mqtt.state.connected

    async def run(self) -> None:
        while True:  # a database away at start delays the publisher; it does not end it
            with self.outage.guard(StoreUnavailable, catch=StoreUnavailable):
                if await self.ops.cursor(CURSOR) is None:  # first start: from now on
                    await self.ops.set_cursor(CURSOR, await self.ops.last_seq())
                break
            await self.signal.wait()
        await self.mqtt.run(self._pump)

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            await self.leading.wait()
            # a database outage is the registry's, not the broker's: the session stays up (a
            # broker error still ends it, and the session helper reconnects)
            with self.outage.guard(StoreUnavailable, catch=StoreUnavailable):
                await self._publish_new(client)
            await self.signal.wait()

    async def _publish_new(self, client: aiomqtt.Client) -> None:
        cursor = await self.ops.cursor(CURSOR) or 0
        for event in await self.ops.feed(cursor):
            if not self.leading.is_set():  # the lease went meanwhile: another may publish now
                return
            if event.kind not in SKIPPED:
                topic = self.topics.platform(event.kind, event.district, event.category,
                                             event.severity)  # fmt: skip
                payload = json.dumps(event.payload, separators=(",", ":"))
                await client.publish(topic, payload, qos=1)  # returns on the PUBACK
                self.published += 1
            await self.ops.set_cursor(CURSOR, event.seq)
