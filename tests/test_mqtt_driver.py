"""The MQTT sensor driver against a real mosquitto of the test's own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from drivers import DRIVERS, UnknownPoint
from drivers.mqtt import MqttDriver, judge
from gridwatch.ground.contract import Quality
from gridwatch.ground.profiles import MqttPoint
from tests._drivers_helpers import Broker, Outcomes, gateway


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def devices_on(broker: Broker) -> MqttDriver:
    bus = {"type": "mqtt", "id": "local", "host": "127.0.0.1", "port": broker.port}
    devices = gateway([bus], [
        {"id": "sm-1", "profile": "smoke-detector-mqtt", "bus": "local", "address": "A17"},
        {"id": "sm-quiet", "profile": "smoke-detector-mqtt", "bus": "local", "interval_s": 0.2},
        {"id": "cam-1", "profile": "camera-mqtt", "bus": "local", "address": "cam-01"},
    ])  # fmt: skip
    driver = DRIVERS["mqtt"](devices[0].bus, devices)
    assert isinstance(driver, MqttDriver)
    return driver


class Running:
    """The driver running against the broker, plus a publisher."""

    def __init__(self, broker: Broker) -> None:
        self.driver = devices_on(broker)
        self.sink = Outcomes()
        self.broker = broker

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.driver.run(self.sink))
        self.pub = aiomqtt.Client("127.0.0.1", self.broker.port)
        await self.pub.__aenter__()
        async with asyncio.timeout(10):
            await self.driver.ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pub.__aexit__(None, None, None)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def send(self, topic: str, payload: object) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.pub.publish(topic, data, qos=1)

    async def next_outcome(self, device: str) -> object:
        before = self.sink.count(device)
        await self.sink.wait_for(lambda: self.sink.count(device) > before, 5)
        return self.sink.outcomes(device)[-1]


def values(outcome: object) -> dict[str, tuple[object, Quality]]:
    return {s.point: (s.value, s.quality) for s in outcome.samples}  # type: ignore[attr-defined]


async def test_payload_fields_become_samples(broker: Broker) -> None:
    async with Running(broker) as r:
        waiting = asyncio.create_task(r.next_outcome("sm-1"))
        await r.send("sensors/smoke/A17/up",
                     {"data": {"obscuration": 0.31, "alarm": False, "battery": 2.95}})  # fmt: skip
        out = await waiting
    assert out.ok  # type: ignore[attr-defined]
    assert values(out) == {"obscuration": (0.31, Quality.GOOD), "alarm": (False, Quality.GOOD),
                           "battery": (2.95, Quality.GOOD)}  # fmt: skip


async def test_bad_payloads_are_counted_never_raised(broker: Broker) -> None:
    async with Running(broker) as r:
        topic = "sensors/smoke/A17/up"
        bad = [b"{not json", b"\xff\xfe", {"unrelated": 1}, [1, 2]]
        for payload in bad:
            waiting = asyncio.create_task(r.next_outcome("sm-1"))
            await r.send(topic, payload)
            out = await waiting
            assert not out.ok  # type: ignore[attr-defined]
            assert {q for _, q in values(out).values()} == {Quality.INVALID}
        waiting = asyncio.create_task(r.next_outcome("sm-1"))
        await r.send(topic, {"data": {"obscuration": 99, "alarm": True}})
        out = await waiting
    assert out.ok  # type: ignore[attr-defined]
    assert values(out) == {"obscuration": (None, Quality.OUT_OF_RANGE),
                           "alarm": (True, Quality.GOOD), "battery": (None, Quality.INVALID)}  # fmt: skip
    assert r.driver.devices["sm-1"].payload_errors == len(bad)
    health = {h.device: h for h in r.driver.health()}
    assert health["sm-1"].reads_failed == len(bad) and health["sm-1"].online


async def test_camera_detections_become_events(broker: Broker) -> None:
    async with Running(broker) as r:
        waiting = asyncio.create_task(r.next_outcome("cam-1"))
        event = {"type": "waterlogging", "score": 0.91, "zone": "lane-2"}
        await r.send("cameras/cam-01/events", {"event": event, "stats": {"depth_cm": 18}})
        out = await waiting
        waiting = asyncio.create_task(r.next_outcome("cam-1"))
        await r.send("cameras/cam-01/events", {"event": {"type": "dumping", "score": 0.7}})
        second = await waiting
    assert out.events == [{**event, "device": "cam-1"}]  # type: ignore[attr-defined]
    assert values(out)["score"] == (0.91, Quality.GOOD)
    assert values(out)["water_depth"][0] == pytest.approx(0.18)
    assert values(second) == {"score": (0.7, Quality.GOOD)}  # no depth in this kind of event


async def test_a_silent_device_goes_stale_then_recovers(broker: Broker) -> None:
    async with Running(broker) as r:
        await r.sink.wait_for(lambda: r.sink.count("sm-quiet") >= 2, 5)
        stale = r.sink.outcomes("sm-quiet")
        waiting = asyncio.create_task(r.next_outcome("sm-quiet"))
        await r.send("sensors/smoke/sm-quiet/up", {"data": {"obscuration": 0.2}})
        await r.sink.wait_for(lambda: any(o.ok for o in r.sink.outcomes("sm-quiet")), 5)
        await waiting
    assert all(not o.ok and {s.quality for s in o.samples} == {Quality.STALE} for o in stale)
    assert all(s.value is None for o in stale for s in o.samples)
    assert "silent" in stale[0].error
    assert r.sink.count("sm-1") == 0  # 30 s interval: not stale within this test


async def test_reconnects_after_the_broker_restarts(broker: Broker) -> None:
    async with Running(broker) as r:
        broker.stop()
        await r.sink.wait_for(lambda: not r.driver.ready.is_set(), 5)
        broker.start()  # same port
        async with asyncio.timeout(10):
            await r.driver.ready.wait()
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            waiting = asyncio.create_task(r.next_outcome("sm-1"))
            await pub.publish("sensors/smoke/A17/up", b'{"data": {"obscuration": 0.4}}', qos=1)
            out = await waiting
    assert values(out)["obscuration"] == (0.4, Quality.GOOD)


async def test_commands_are_refused(broker: Broker) -> None:
    driver = devices_on(broker)
    with pytest.raises(UnknownPoint):
        await driver.write("sm-1", "alarm", True)


@pytest.mark.parametrize(("raw", "scale", "offset", "expected"), [
    (3, 0.1, 0.0, 0.3),  # not 0.30000000000000004
    (7, 0.01, 0.0, 0.07),
    (12.5, 0.01, 0.0, 0.125),
    (0.1, 3.0, 0.0, 0.3),
    (2.95, 1.0, 0.0, 2.95),
    (18, 0.01, 0.0, 0.18),
    (5895, 0.001, 1.0, 6.895),
])  # fmt: skip
def test_scaled_payload_values_carry_no_float_noise(
    raw: float, scale: float, offset: float, expected: float
) -> None:
    value, quality = judge(raw, MqttPoint(path="x", scale=scale, offset=offset))
    assert quality is Quality.GOOD and repr(value) == repr(expected)
