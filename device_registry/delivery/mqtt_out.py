"""Publishes the centre's own platform messages (lifecycle, escalation) on the MQTT platform topic
tree at QoS 1, from a persisted cursor: a restart resumes where the broker last acknowledged.

The device transitions (``alert``) are published by the bridge as it ingests them, on the fast
path; this publisher skips them so each message is on the tree once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import aiomqtt

from device_registry.alerts.store import OpsStore
from device_registry.delivery.feed import FeedSignal
from gridwatch.ground.contract import Topics

logger = logging.getLogger(__name__)

CURSOR = "mqtt-platform"
SKIPPED = frozenset({"alert"})


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = None
    client_id: str = "gridwatch-registry-platform"


class PlatformPublisher:
    def __init__(self, ops: OpsStore, signal: FeedSignal, target: MqttTarget) -> None:
        self.ops, self.signal, self.target = ops, signal, target
        self.topics = Topics(target.prefix)
        self.published = 0
        self.connected = False

    async def run(self) -> None:
        if await self.ops.cursor(CURSOR) is None:  # first start: from now on, not the history
            await self.ops.set_cursor(CURSOR, await self.ops.last_seq())
        failing = False
        while True:
            try:
                async with self._client() as client:
                    self.connected = True
                    if failing:
                        logger.info("platform publisher: broker is back")
                    failing = False
                    await self._pump(client)
            except aiomqtt.MqttError as exc:
                logger.log(logging.DEBUG if failing else logging.ERROR,
                           "platform publisher: broker unavailable: %s", exc)  # fmt: skip
                failing = True
            finally:
                self.connected = False
            await asyncio.sleep(1.0)

    def _client(self) -> aiomqtt.Client:
        t = self.target
        return aiomqtt.Client(t.host, t.port, username=t.username, password=t.password,
                              identifier=t.client_id, timeout=5)  # fmt: skip

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            cursor = await self.ops.cursor(CURSOR) or 0
            for event in await self.ops.feed(cursor):
                if event.kind not in SKIPPED:
                    topic = self.topics.platform(event.kind, event.district, event.category,
                                                 event.severity)  # fmt: skip
                    payload = json.dumps(event.payload, separators=(",", ":"))
                    await client.publish(topic, payload, qos=1)  # returns on the PUBACK
                    self.published += 1
                await self.ops.set_cursor(CURSOR, event.seq)
            await self.signal.wait()
