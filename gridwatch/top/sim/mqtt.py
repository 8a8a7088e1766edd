"""Simulated MQTT sensors and cameras: JSON payloads pushed to a local broker.

Each device on an ``mqtt`` bus publishes to its profile's ``topic`` (``{device}`` replaced by
the device's ``address``, its id when blank) every interval. The payload holds each point that
has a ``sim:`` block at the point's dotted ``path``, as the raw number the device would send
(the driver applies scale and offset, so the simulator applies their inverse).

Cameras (``events: true``) report detections. A detection is present while the point whose
``sim:`` block has an event is more than halfway up its ``event_rise``; its ``event`` object
then carries a track ``id``, a ``type`` (that point's name) and a ``state``: ``appear`` on the
first payload, ``update`` while it lasts, ``leave`` once when it is gone. Points under
``event.`` are only sent with a detection; the others (``stats.``) in every payload::

    async with MqttField(devices, speedup=10) as field:
        await field.publish_now("cam-1")
        field.kill("sm-2")                       # goes silent: the driver marks it stale
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import aiomqtt

from gridwatch.ground.backoff import Backoff
from gridwatch.ground.contract import Value
from gridwatch.ground.gatewayconf import MqttSensorBus, ResolvedDevice
from gridwatch.ground.profiles import MqttPoint, MqttProfile
from gridwatch.top.sim.behaviour import PointAnimator
from gridwatch.top.sim.served import Served

logger = logging.getLogger(__name__)

RECONNECT_MAX_S = 5.0
Endpoint = tuple[str, int]


def to_wire(value: Value, point: MqttPoint) -> Value:
    """The raw JSON value that the driver turns back into ``value``."""
    if isinstance(value, bool | str) or value is None:
        return value
    raw = (value - point.offset) / point.scale if (point.scale, point.offset) != (1, 0) else value
    raw = round(raw, 6)  # drop the float noise of the inverse scaling
    return int(raw) if float(raw).is_integer() else raw


def put(doc: dict[str, Any], path: str, value: Value) -> None:
    """Set ``value`` at a dotted path, making the dicts on the way."""
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


class SimSensor:
    """One pushing device: what it publishes at a given time, and its detection track."""

    def __init__(self, device: ResolvedDevice, rng: random.Random) -> None:
        assert isinstance(device.profile, MqttProfile)
        profile = device.profile
        self.id = device.id
        self.topic = profile.topic.replace("{device}", device.entry.address or device.id)
        self.interval = device.interval_s
        self.points = profile.points
        self.animators = {n: PointAnimator(b, rng) for n, b in profile.sim.items()}
        self.events = profile.events
        self.event_point = next(
            (n for n, b in profile.sim.items() if b.event_at_s is not None and b.event_rise), None
        )
        self.pinned: dict[str, Value] = {}
        self.alive = True
        self.track = 0
        self.tracking = False
        self.published = 0

    def payload(self, t: float, ts_ms: int) -> dict[str, Any]:
        """The document published at ``t`` seconds of sim time (advances the track)."""
        values: dict[str, Value] = {n: a.value(t) for n, a in self.animators.items()}
        values.update(self.pinned)
        state = self._detection(values) if self.events else None
        doc: dict[str, Any] = {}
        for name, value in values.items():
            path = self.points[name].path
            if self.events and state is None and path.startswith("event."):
                continue
            put(doc, path, to_wire(value, self.points[name]))
        if state is not None:
            event = doc.setdefault("event", {})
            event.update(id=f"{self.id}-{self.track}", type=self.event_point, state=state,
                         ts=ts_ms)  # fmt: skip
        return doc

    def _detection(self, values: dict[str, Value]) -> str | None:
        present = False
        if self.event_point is not None:
            b = self.animators[self.event_point].b
            value = values.get(self.event_point)
            if isinstance(value, int | float) and not isinstance(value, bool):
                present = (value - b.base) / b.event_rise >= 0.5
        if present and not self.tracking:
            self.track += 1
            self.tracking = True
            return "appear"
        if present:
            return "update"
        if self.tracking:
            self.tracking = False
            return "leave"
        return None


class MqttField(Served):
    """Publishes for every device of ``devices`` on an ``mqtt`` bus; an async context manager.

    One client per broker, reconnecting when the broker goes away. ``speedup`` runs the
    profiles' event timelines faster; ``update_s`` overrides each device's interval.
    """

    def __init__(
        self,
        devices: Sequence[ResolvedDevice],
        *,
        speedup: float = 1.0,
        update_s: float | None = None,
        seed: int = 0,
        qos: int = 1,
    ) -> None:
        rng = random.Random(seed)
        self.speedup, self.update_s, self.qos = speedup, update_s, qos
        self.sensors: dict[str, SimSensor] = {}
        self.by_broker: dict[Endpoint, list[SimSensor]] = {}
        self._broker_of: dict[str, Endpoint] = {}
        for d in devices:
            if isinstance(d.bus, MqttSensorBus):
                sensor = SimSensor(d, rng)
                self.sensors[d.id] = sensor
                self.by_broker.setdefault((d.bus.host, d.bus.port), []).append(sensor)
                self._broker_of[d.id] = (d.bus.host, d.bus.port)
        self.clients: dict[Endpoint, aiomqtt.Client] = {}
        self.connected: dict[Endpoint, asyncio.Event] = {k: asyncio.Event() for k in self.by_broker}
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    async def start(self, within_s: float = 10.0) -> None:
        """Connect to every broker (waiting up to ``within_s``) and start publishing."""
        self._t0 = asyncio.get_running_loop().time()
        for endpoint, sensors in self.by_broker.items():
            name = f"sim mqtt {endpoint[0]}:{endpoint[1]}"
            self._tasks.append(asyncio.create_task(self._session(endpoint, sensors), name=name))
        async with asyncio.timeout(within_s):
            for endpoint, sensors in self.by_broker.items():
                await self.connected[endpoint].wait()
                logger.info("sim: publishing for %d device(s) to %s:%d", len(sensors), *endpoint)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _session(self, endpoint: Endpoint, sensors: list[SimSensor]) -> None:
        waits = Backoff(0.1, RECONNECT_MAX_S)
        while True:
            try:
                async with aiomqtt.Client(*endpoint, identifier=f"gridwatch-sim-{id(self):x}",
                                          max_inflight_messages=1000) as client:  # fmt: skip
                    self.clients[endpoint] = client
                    self.connected[endpoint].set()
                    waits.reset()
                    async with asyncio.TaskGroup() as tg:
                        for s in sensors:
                            tg.create_task(self._publish_every(client, s), name=f"sim {s.id}")
            except aiomqtt.MqttError as exc:
                self.connected[endpoint].clear()
                self.clients.pop(endpoint, None)
                logger.warning("sim: broker %s:%d: %s", *endpoint, exc)
                await asyncio.sleep(waits.next())  # reconnect pacing, not a wait for an event

    async def _publish_every(self, client: aiomqtt.Client, sensor: SimSensor) -> None:
        loop = asyncio.get_running_loop()
        period = self.update_s or sensor.interval
        due = loop.time()
        while True:
            if sensor.alive:
                await self._publish(client, sensor)
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _publish(self, client: aiomqtt.Client, sensor: SimSensor) -> None:
        t = (asyncio.get_running_loop().time() - self._t0) * self.speedup
        doc = sensor.payload(t, time.time_ns() // 1_000_000)
        await client.publish(sensor.topic, json.dumps(doc), qos=self.qos)
        sensor.published += 1

    # --- what tests steer -------------------------------------------------------------

    async def publish_now(self, device_id: str) -> None:
        """Publish the device's current payload at once (besides its own schedule)."""
        sensor = self.sensors[device_id]
        await self._publish(self._client(device_id), sensor)

    async def publish_raw(self, device_id: str, payload: bytes) -> None:
        """Publish any bytes on the device's topic (a broken firmware, say)."""
        await self._client(device_id).publish(self.sensors[device_id].topic, payload, qos=self.qos)

    def _client(self, device_id: str) -> aiomqtt.Client:
        client = self.clients.get(self._broker_of[device_id])
        if client is None:
            raise ConnectionError(f"sim: no broker connection for {device_id}")
        return client

    def set_value(self, device_id: str, point: str, value: Value) -> None:
        """Pin ``point`` to ``value`` (engineering units) until :meth:`release`."""
        self.sensors[device_id].pinned[point] = value

    def release(self, device_id: str, point: str) -> None:
        self.sensors[device_id].pinned.pop(point, None)

    def kill(self, device_id: str) -> None:
        """The device stops publishing."""
        self.sensors[device_id].alive = False

    def revive(self, device_id: str) -> None:
        self.sensors[device_id].alive = True
