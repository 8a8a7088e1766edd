"""The uplink: drains the outbox to the central broker over MQTT, QoS 1.

On every connection it takes a new session number, publishes a retained Birth on the status topic
and leaves a retained Death as its last will, so the centre marks the gateway's devices stale the
moment the connection drops. A clean stop (SIGTERM, Ctrl-C) publishes that Death itself and waits
for its PUBACK (at most two seconds) before it disconnects: a broker drops the will of a client
that says goodbye, and the gateway would read "online" until its health reports went missing. A
message is deleted from the outbox only after its PUBACK. A lost
connection is retried by ``gridwatch.ground.mqttsession`` with the one jittered exponential backoff
capped at one second, so the uplink is back within about a second of the broker's return, or on
the next broker of ``mqtt.endpoints`` when there are several; with ``protocol: auto`` it falls
back to MQTT 3.1.1 when the broker refuses (or ignores) MQTT 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt

from edge.outbox import Outbox
from edge.pipeline import Pipeline
from gridwatch import __version__
from gridwatch.ground.backoff import Backoff
from gridwatch.ground.contract import Birth, Death, DeviceInfo, Topics
from gridwatch.ground.gatewayconf import MqttUplink
from gridwatch.ground.mqttsession import Endpoint, MqttSession, SessionSettings, first_failure

BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 1.0

logger = logging.getLogger(__name__)

WINDOW = 200  # messages in flight at once


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
        self.published = 0
        self._session = 0  # the session number of the current (or next) connection
        # configuration pushes and commands from the centre: (topic leaf, payload)
        self.on_down: Callable[[str, bytes], Coroutine[Any, Any, None]] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.mqtt = MqttSession(self._settings(), "uplink", will=self._will,
                                farewell=self._farewell)  # fmt: skip
        self.watch = self.mqtt.watch  # changes on connect, failure and every acknowledged window

    @property
    def connected(self) -> bool:
        """Connected and the Birth of this session sent (what the centre sees as online)."""
        return self.mqtt.state.connected and self.pipeline.uplink_up

    @property
    def reconnects(self) -> int:
        """Outages of the connection so far."""
        return self.mqtt.state.outages

    async def wait_until(self, predicate: Callable[[Uplink], bool], within_s: float) -> None:
        await self.watch.until(lambda: predicate(self), within_s)

    def notify(self) -> None:
        """Called when something was queued: wake the sender."""
        self.wakeup.set()

    async def run(self) -> None:
        await self.mqtt.run(self._serve)

    def _settings(self) -> SessionSettings:
        c = self.cfg
        return SessionSettings(
            endpoints=tuple(Endpoint(b.host, b.port, bool(b.tls)) for b in c.brokers()),
            client_id=f"gridwatch-edge-{self.gateway_id}",
            username=c.username or self.gateway_id, password=c.password(), ca_file=c.ca_file, protocol=c.protocol, persistent=False, keepalive_s=c.keepalive_s,
            max_inflight=WINDOW, backoff_first_s=BACKOFF_FIRST_S, backoff_cap_s=BACKOFF_CAP_S,
        )  # fmt: skip

    async def _will(self) -> aiomqtt.Will:
        """A new session number for each connection, and its Death as the last will."""
        waits = Backoff(first_s=1.0, cap_s=5.0)
        while True:
            try:
                self._session = self.outbox.next_session()
                break
            except sqlite3.Error as exc:  # disk full: no new session can be recorded yet
                logger.error("uplink waits: cannot record a new session: %s", exc)
                await asyncio.sleep(waits.next())
        return aiomqtt.Will(self.topics.status(self.gateway_id), self._death(), qos=1, retain=True)

    def _death(self) -> str:
        return Death(gateway=self.gateway_id, session=self._session).model_dump_json()

    async def _farewell(self, client: aiomqtt.Client) -> None:
        """A clean stop: the Death the will would have carried, retained, acknowledged."""
        self.pipeline.uplink_up = False
        await client.publish(self.topics.status(self.gateway_id), self._death(), qos=1,
                             retain=True)  # fmt: skip
        logger.info("uplink: stopped; session %d ended with its Death", self._session)

    async def _serve(self, client: aiomqtt.Client) -> None:
        try:
            await self._on_connected(client, self._session)
            await first_failure(self._drain_forever(client), self._read_down(client))
        finally:
            self.pipeline.uplink_up = False

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
        self.pipeline.uplink_up = True
        logger.info("uplink: session %d on %s", session, self.mqtt.state.endpoint)
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
