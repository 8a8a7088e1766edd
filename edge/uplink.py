"""The uplink: drains the outbox to the central broker over MQTT, QoS 1.

On every connection it takes a new session number, publishes a retained Birth on the status topic
and leaves a retained Death as its last will, so the centre marks the gateway's devices stale the
moment the connection drops. A message is deleted from the outbox only after its PUBACK. A lost
connection is retried with jittered exponential backoff capped at one second, so the uplink is back
within about a second of the broker's return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt
from aiomqtt import ProtocolVersion
from aiomqtt.exceptions import MqttConnectError

from edge.outbox import Outbox
from edge.pipeline import Pipeline
from gridwatch import __version__
from gridwatch.ground.contract import Birth, Death, DeviceInfo, Topics
from gridwatch.ground.gatewayconf import MqttUplink
from gridwatch.ground.watch import Watch

logger = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 1.0
WINDOW = 200  # messages in flight at once
# CONNACK codes for "unsupported protocol version" in MQTT 3.1.1 (1) and MQTT 5 (132)
_UNSUPPORTED_PROTOCOL = {1, 132}


async def _first_failure(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run jobs together until one ends; then cancel the rest and re-raise its error."""
    tasks = [asyncio.create_task(j) for j in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        t.result()


def _code(exc: MqttConnectError) -> int | None:
    rc = exc.rc
    return rc if isinstance(rc, int) or rc is None else int(rc.value)


class Uplink:
    def __init__(
        self,
        cfg: MqttUplink,
        gateway_id: str,
        outbox: Outbox,
        pipeline: Pipeline,
        topics: Topics,
        config_version: int,
        clock: Callable[[], float],
    ) -> None:
        self.cfg, self.gateway_id, self.outbox, self.pipeline = cfg, gateway_id, outbox, pipeline
        self.topics, self.config_version, self.clock = topics, config_version, clock
        self.wakeup = asyncio.Event()
        self.connected = False
        self.reconnects = 0
        self.published = 0
        self._failing = False
        self.mqtt5 = cfg.protocol != "3.1.1"
        self._protocol_known = cfg.protocol != "auto"  # auto: learnt at the first connection
        # configuration pushes and commands from the centre: (topic leaf, payload)
        self.on_down: Callable[[str, bytes], Coroutine[Any, Any, None]] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.watch = Watch()  # changes on connect, failure and every acknowledged window

    async def wait_until(self, predicate: Callable[[Uplink], bool], within_s: float) -> None:
        await self.watch.until(lambda: predicate(self), within_s)

    def notify(self) -> None:
        """Called when something was queued: wake the sender."""
        self.wakeup.set()

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                session = self.outbox.next_session()
            except sqlite3.Error as exc:  # disk full: no new session can be recorded yet
                logger.error("uplink waits: cannot record a new session: %s", exc)
                await asyncio.sleep(1.0)
                continue
            try:
                async with self._client(session) as client:
                    await self._on_connected(client, session)
                    attempt = 0
                    await _first_failure(self._drain_forever(client), self._read_down(client))
            except MqttConnectError as exc:
                if _code(exc) in _UNSUPPORTED_PROTOCOL and self._try_other_protocol():
                    continue
                self._on_failure(exc)
            except aiomqtt.MqttError as exc:
                # some 3.1.1-only brokers drop an MQTT 5 CONNECT without any CONNACK
                if not self._protocol_known:
                    self._try_other_protocol()
                self._on_failure(exc)
            finally:
                self.connected = self.pipeline.uplink_up = False
            delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)

    def _try_other_protocol(self) -> bool:
        """In auto mode, until a connection succeeds, alternate between MQTT 5 and 3.1.1."""
        if self.cfg.protocol != "auto" or self._protocol_known:
            return False
        self.mqtt5 = not self.mqtt5
        logger.info("uplink: trying MQTT %s with %s", "5" if self.mqtt5 else "3.1.1", self.cfg.host)
        return True

    def _client(self, session: int) -> aiomqtt.Client:
        c = self.cfg
        death = Death(gateway=self.gateway_id, session=session).model_dump_json()
        tls = None
        if c.tls:
            tls = ssl.create_default_context(cafile=c.ca_file)
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username or self.gateway_id,
            password=c.password(),
            identifier=f"gridwatch-edge-{self.gateway_id}",
            protocol=ProtocolVersion.V5 if self.mqtt5 else ProtocolVersion.V311,
            will=aiomqtt.Will(self.topics.status(self.gateway_id), death, qos=1, retain=True),
            keepalive=c.keepalive_s,
            timeout=5,
            max_inflight_messages=WINDOW,
            tls_context=tls,
        )
        # a window of publishes in flight is the design, not a backlog worth a warning each
        client.pending_calls_threshold = WINDOW
        return client

    async def _on_connected(self, client: aiomqtt.Client, session: int) -> None:
        birth = Birth(
            gateway=self.gateway_id, session=session, ts=int(self.clock() * 1000),
            software=f"gridwatch {__version__}", config_version=self.config_version,
            devices=sorted(self.pipeline.devices),
            device_info=[DeviceInfo(device=d.id, profile=d.profile.id, interval_s=d.interval_s,
                                    location=d.location)
                         for d in self.pipeline.devices.values()],
        )  # fmt: skip
        await client.publish(
            self.topics.status(self.gateway_id), birth.model_dump_json(), qos=1, retain=True
        )
        if self.on_down is not None:
            await client.subscribe(self.topics.config(self.gateway_id), qos=1)
            await client.subscribe(self.topics.command(self.gateway_id), qos=1)
        self.pipeline.session = session
        self.connected = self.pipeline.uplink_up = True
        self._protocol_known = True
        if self._failing:
            logger.info(
                "uplink to %s:%d restored (session %d)", self.cfg.host, self.cfg.port, session
            )
        else:
            logger.info(
                "uplink connected to %s:%d (session %d)", self.cfg.host, self.cfg.port, session
            )
        self._failing = False
        self.watch.changed()

    def _on_failure(self, exc: Exception) -> None:
        if self.connected or not self._failing:
            what = "lost" if self.connected else "cannot connect"
            logger.error("uplink to %s:%d %s: %s", self.cfg.host, self.cfg.port, what, exc)
            self.reconnects += 1
        else:
            logger.debug("uplink still down: %s", exc)
        self._failing = True
        self.watch.changed()

    async def _read_down(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            parsed = self.topics.parse_gateway_topic(str(msg.topic))
            if parsed is None or self.on_down is None or not isinstance(msg.payload, bytes):
                continue
            # a slow command must not hold up the next message
            task = asyncio.create_task(
                self.on_down(parsed[1], msg.payload), name=f"down:{parsed[1]}"
            )
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _drain_forever(self, client: aiomqtt.Client) -> None:
        while True:
            self.wakeup.clear()
            batch = self.outbox.peek(WINDOW)
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=1.0)
                continue
            results = await asyncio.gather(
                *(client.publish(m.topic, m.payload, qos=1) for m in batch),
                return_exceptions=True,
            )
            done = [
                m.id
                for m, r in zip(batch, results, strict=True)
                if not isinstance(r, BaseException)
            ]
            try:
                self.outbox.ack(done)
            except sqlite3.Error as exc:  # disk full: they go again; the bridge drops repeats
                logger.error("outbox cannot delete %d acknowledged messages: %s", len(done), exc)
                await asyncio.sleep(1.0)
                continue
            self.published += len(done)
            self.watch.changed()
            for r in results:
                if isinstance(r, BaseException):
                    raise r
