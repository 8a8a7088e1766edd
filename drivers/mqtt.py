"""MQTT sensor driver: devices that push JSON to a local broker (smoke detectors, cameras).

Each device's topic is its profile's ``topic`` with ``{device}`` replaced by the device's
``address`` (its id when blank). Profile points pick values out of the payload by dotted path
(``data.level``, ``objects.0.score``). A payload that doesn't parse, or matches none of the
points, is counted against the device and reported as a failed outcome, never raised. A device
silent for longer than ``SILENT_FACTOR`` x its interval is reported STALE once per interval.
Camera profiles (``events: true``) also hand on the payload's ``event`` object, when it has
one, as a detection event; a payload without one (periodic stats) is readings only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import aiomqtt

from drivers.base import PollOutcome, Sample, SampleSink
from drivers.codec import scale_places, scaled_value
from drivers.errors import BadConfig, PayloadError, UnknownPoint
from drivers.health import BusState, DeviceStats
from gridwatch.ground.backoff import Backoff
from gridwatch.ground.contract import BusHealth, DeviceHealth, Quality, Value
from gridwatch.ground.gatewayconf import MqttSensorBus, ResolvedDevice
from gridwatch.ground.profiles import MqttPoint, MqttProfile

logger = logging.getLogger(__name__)

SILENT_FACTOR = 2.0  # a push sensor may be late by up to one interval before it is stale
RECONNECT_MAX_S = 30.0
_MISSING = object()


def lookup(payload: Any, path: str) -> Any:
    """The value at a dotted path (list items by index); ``_MISSING`` when absent."""
    node = payload
    for key in path.split("."):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node


def judge(raw: Any, point: MqttPoint) -> tuple[Value, Quality]:
    """Scale and range-check one JSON value; anything but a number/bool/string is invalid."""
    if isinstance(raw, bool | str):
        return raw, Quality.GOOD
    if not isinstance(raw, int | float) or (isinstance(raw, float) and not math.isfinite(raw)):
        return None, Quality.INVALID
    if (point.scale, point.offset) != (1.0, 0.0):
        value = scaled_value(
            raw, point.scale, point.offset, scale_places(point.scale, point.offset)
        )
    else:
        value = raw
    rng = point.range
    if rng and (
        (rng.min is not None and value < rng.min) or (rng.max is not None and value > rng.max)
    ):
        return None, Quality.OUT_OF_RANGE
    return value, Quality.GOOD


class MqttDevice:
    """One pushing device: payload decoding, liveness and counters."""

    def __init__(self, device: ResolvedDevice) -> None:
        if not isinstance(device.profile, MqttProfile):
            raise BadConfig("not an MQTT profile", device_id=device.id)
        self.id = device.id
        self.profile = device.profile
        self.topic = device.profile.topic.replace("{device}", device.entry.address or device.id)
        self.interval = device.interval_s
        self.stats = DeviceStats(self.id)
        self.payload_errors = 0
        self.last_seen = 0.0  # loop time; set when the driver starts
        self.stale_reported = 0.0

    def on_message(self, payload: bytes, now: float) -> PollOutcome:
        self.last_seen = now
        ts = time.time_ns() // 1_000_000
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._bad(ts, f"payload is not JSON: {exc}")
        samples = self._samples(doc, ts)
        if not any(s.quality is not Quality.INVALID for s in samples):
            return self._bad(ts, "payload matches none of the profile's points")
        self.stats.ok(ts, 0.0)
        has_event = self.profile.events and isinstance(doc, dict) and "event" in doc
        events = [_event(doc["event"], self.id)] if has_event else []
        return PollOutcome(self.id, ts, samples, ok=True, events=events)

    def _samples(self, doc: Any, ts: int) -> list[Sample]:
        out = []
        for name, point in self.profile.points.items():
            raw = lookup(doc, point.path)
            if raw is _MISSING:
                if self.profile.events:
                    continue  # an event carries only the fields of its kind
                out.append(Sample(self.id, name, None, point.unit, ts, Quality.INVALID))
                continue
            value, quality = judge(raw, point)
            out.append(Sample(self.id, name, value, point.unit, ts, quality))
        return out

    def _bad(self, ts: int, why: str) -> PollOutcome:
        self.payload_errors += 1
        self.stats.failed(str(PayloadError(why, device_id=self.id)))
        samples = [Sample(self.id, n, None, p.unit, ts, Quality.INVALID)
                   for n, p in self.profile.points.items()]  # fmt: skip
        return PollOutcome(self.id, ts, samples, ok=False, error=why)

    def check_silence(self, now: float) -> PollOutcome | None:
        """A STALE outcome when silent too long, at most once per interval."""
        silent = now - self.last_seen
        if silent < self.interval * SILENT_FACTOR or now - self.stale_reported < self.interval:
            return None
        self.stale_reported = now
        why = f"silent for {silent:.0f}s (expected every {self.interval:g}s)"
        self.stats.failed(why)
        ts = time.time_ns() // 1_000_000
        samples = [Sample(self.id, n, None, p.unit, ts, Quality.STALE)
                   for n, p in self.profile.points.items()]  # fmt: skip
        return PollOutcome(self.id, ts, samples, ok=False, error=why)


def _event(body: Any, device: str) -> dict[str, object]:
    event = dict(body) if isinstance(body, dict) else {"value": body}
    event.setdefault("device", device)
    return event


class MqttDriver:
    """The :class:`drivers.base.Driver` for one local broker and the devices that push to it."""

    def __init__(self, bus: MqttSensorBus, devices: Sequence[ResolvedDevice]) -> None:
        self.bus = bus
        self.devices = {d.id: MqttDevice(d) for d in devices}
        self.ready = asyncio.Event()  # set while subscribed (tests and health wait on it)
        self.state = BusState()
        self._waits = Backoff(0.5, RECONNECT_MAX_S)  # between reconnects to the sensor broker
        self.by_topic: dict[str, list[MqttDevice]] = {}
        for dev in self.devices.values():
            self.by_topic.setdefault(dev.topic, []).append(dev)

    async def run(self, sink: SampleSink) -> None:
        now = asyncio.get_running_loop().time()
        for dev in self.devices.values():
            dev.last_seen = dev.stale_reported = now
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen(sink), name=f"mqtt {self.bus.id} listen")
            tg.create_task(self._watch(sink), name=f"mqtt {self.bus.id} liveness")

    async def _listen(self, sink: SampleSink) -> None:
        while True:
            try:
                await self._session(sink)
            except aiomqtt.MqttError as exc:
                self.ready.clear()
                self.state.down(f"sensor broker {self.bus.host}:{self.bus.port} unreachable")
                level = logging.ERROR if self._waits.attempt == 0 else logging.DEBUG
                logger.log(level, "bus %s: broker %s:%d: %s", self.bus.id, self.bus.host,
                           self.bus.port, exc)  # fmt: skip
                await asyncio.sleep(self._waits.next())  # pacing, not a wait for an event

    async def _session(self, sink: SampleSink) -> None:
        loop = asyncio.get_running_loop()
        async with aiomqtt.Client(self.bus.host, self.bus.port,
                                  identifier=f"gridwatch-{self.bus.id}-{id(self):x}") as client:  # fmt: skip
            for topic in self.by_topic:
                await client.subscribe(topic, qos=1)
            logger.info("bus %s: listening to %d topic(s) on %s:%d", self.bus.id,
                        len(self.by_topic), self.bus.host, self.bus.port)  # fmt: skip
            self.ready.set()
            self.state.up()
            self._waits.reset()  # connected: the next outage is logged and paced afresh
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else (
                    str(message.payload).encode())  # fmt: skip
                for dev in self._devices_for(message.topic):
                    _deliver(sink, dev.on_message(payload, loop.time()))

    def _devices_for(self, topic: aiomqtt.Topic) -> list[MqttDevice]:
        exact = self.by_topic.get(topic.value)
        if exact is not None:
            return exact
        return [d for t, ds in self.by_topic.items() if topic.matches(t) for d in ds]

    async def _watch(self, sink: SampleSink) -> None:
        loop = asyncio.get_running_loop()
        period = (
            max(0.05, min(d.interval for d in self.devices.values()) / 4) if self.devices else 1
        )
        while True:
            await asyncio.sleep(period)  # a periodic check, not a wait for an event
            now = loop.time()
            for dev in self.devices.values():
                outcome = dev.check_silence(now)
                if outcome is not None:
                    _deliver(sink, outcome)

    async def write(self, device: str, point: str, value: float | int | bool) -> None:
        raise UnknownPoint(f"MQTT sensors take no commands ({point!r})", device_id=device)

    def health(self) -> list[DeviceHealth]:
        return [d.stats.snapshot() for d in self.devices.values()]

    def bus_health(self) -> BusHealth:
        bus = self.bus
        return self.state.snapshot(bus.id, bus.type, f"{bus.host}:{bus.port}", list(self.devices))


def _deliver(sink: SampleSink, outcome: PollOutcome) -> None:
    """A failure downstream of one outcome must not end the bus's session."""
    try:
        sink(outcome)
    except Exception:
        logger.exception("%s: outcome not handled", outcome.device)
