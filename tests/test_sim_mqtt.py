"""The simulator's MQTT sensors and cameras, received by the MQTT driver on a real mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from drivers.mqtt import MqttDriver
from gridwatch.ground.contract import Quality
from gridwatch.ground.gatewayconf import ResolvedDevice
from gridwatch.ground.profiles import MqttPoint
from gridwatch.top.sim import MqttField
from gridwatch.top.sim.mqtt import put, to_wire
from tests._drivers_helpers import Outcomes, gateway
from tests.fieldkit import listen
from tests.services import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("value", "scale", "offset", "wire"), [
    (0.02, 0.01, 0.0, 2),  # metres -> centimetres, without the float noise
    (0.123, 0.01, 0.0, 12.3),
    (2.95, 1.0, 0.0, 2.95),
    (20.0, 0.5, 10.0, 20),
    (True, 0.01, 0.0, True),
    ("on", 1.0, 0.0, "on"),
    (None, 1.0, 0.0, None),
])  # fmt: skip
def test_values_go_on_the_wire_unscaled(value: object, scale: float, offset: float,
                                        wire: object) -> None:  # fmt: skip
    point = MqttPoint(path="x", scale=scale, offset=offset)
    assert to_wire(value, point) == wire  # type: ignore[arg-type]
    assert type(to_wire(value, point)) is type(wire)  # type: ignore[arg-type]


def test_dotted_paths_build_documents() -> None:
    doc: dict[str, object] = {}
    put(doc, "event.score", 0.9)
    put(doc, "stats.depth_cm", 2)
    put(doc, "event.zone", "lane-2")
    put(doc, "flat", 1)
    assert doc == {"event": {"score": 0.9, "zone": "lane-2"}, "stats": {"depth_cm": 2}, "flat": 1}


def field_devices(broker: Mosquitto, prefix: str, interval: float) -> list[ResolvedDevice]:
    bus = {"type": "mqtt", "id": "local", "host": "127.0.0.1", "port": broker.port}
    return gateway([bus], [
        {"id": "sm-1", "profile": "smoke-detector-mqtt", "bus": "local",
         "address": f"{prefix}-sm1", "interval_s": interval},
        {"id": "sm-2", "profile": "smoke-detector-mqtt", "bus": "local",
         "address": f"{prefix}-sm2", "interval_s": interval},
        {"id": "cam-1", "profile": "camera-mqtt", "bus": "local", "address": f"{prefix}-cam1",
         "interval_s": interval},
    ])  # fmt: skip


@asynccontextmanager
async def driver_on(devices: list[ResolvedDevice]) -> AsyncIterator[tuple[MqttDriver, Outcomes]]:
    driver = MqttDriver(devices[0].bus, devices)  # type: ignore[arg-type]
    sink = Outcomes()
    task = asyncio.create_task(driver.run(sink))
    try:
        async with asyncio.timeout(10):
            await driver.ready.wait()
        yield driver, sink
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_sensors_publish_good_readings(mosquitto: Mosquitto, prefix: str) -> None:
    devices = field_devices(mosquitto, prefix, 0.1)
    async with driver_on(devices) as (driver, sink), MqttField(devices):
        await sink.wait_for(lambda: all(sink.count(d.id) >= 5 for d in devices), 10)
    for device in ("sm-1", "sm-2"):
        outs = sink.outcomes(device)
        assert all(o.ok for o in outs), device
        for o in outs:
            got = {s.point: (s.value, s.quality) for s in o.samples}
            assert got["alarm"] == (0, Quality.GOOD)
            assert 0.25 <= got["obscuration"][0] <= 0.35  # type: ignore[operator]
            assert got["battery"] == (2.95, Quality.GOOD)
    cam = sink.outcomes("cam-1")
    assert all(o.ok and not o.events for o in cam)  # no detection before the event
    assert all({s.point for s in o.samples} == {"water_depth"} for o in cam)
    assert all(0.01 <= o.samples[0].value <= 0.03 for o in cam)  # type: ignore[operator]
    assert all(h.online and h.reads_failed == 0 for h in driver.health())


async def test_camera_detections_appear_update_and_leave(mosquitto: Mosquitto, prefix: str) -> None:
    # the profile's flood: 20 s in, 20 s up, 30 s held, 20 s down; at 200x it lasts 0.35 s
    devices = [d for d in field_devices(mosquitto, prefix, 0.02) if d.id == "cam-1"]
    async with driver_on(devices) as (_driver, sink), MqttField(devices, speedup=200):

        def events() -> list[dict[str, object]]:
            return [e for o in sink.outcomes("cam-1") for e in o.events]

        await sink.wait_for(lambda: any(e["state"] == "leave" for e in events()), 10)
    seen = events()
    states = [e["state"] for e in seen]
    assert states[0] == "appear" and states[-1] == "leave"
    assert set(states[1:-1]) == {"update"}
    assert {e["id"] for e in seen} == {"cam-1-1"}
    assert all(e["type"] == "water_depth" and e["device"] == "cam-1" for e in seen)
    during = [o for o in sink.outcomes("cam-1") if o.events and o.events[0]["state"] == "update"]
    for o in during:
        got = {s.point: (s.value, s.quality) for s in o.samples}
        assert got["water_depth"][1] is Quality.GOOD and got["water_depth"][0] >= 0.12  # type: ignore[operator]
        assert got["score"][1] is Quality.GOOD


async def test_a_killed_sensor_goes_stale_the_rest_keep_reporting(
    mosquitto: Mosquitto, prefix: str
) -> None:
    devices = field_devices(mosquitto, prefix, 0.1)
    async with driver_on(devices) as (_driver, sink), MqttField(devices) as field:
        field.kill("sm-2")
        field.set_value("sm-1", "obscuration", 5.5)
        await sink.wait_for(
            lambda: any(not o.ok for o in sink.outcomes("sm-2")) and sink.count("sm-1") >= 8, 10
        )
    stale = [o for o in sink.outcomes("sm-2") if not o.ok]
    assert {s.quality for s in stale[0].samples} == {Quality.STALE}
    assert sink.outcomes("sm-1")[-1].samples[0].value == 5.5


async def test_gridwatch_sim_command_publishes(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg = {
        "gateway": {"id": "gw-sim"},
        "buses": [{"type": "mqtt", "id": "local", "host": "127.0.0.1", "port": mosquitto.port}],
        "devices": [{"id": "sm-9", "profile": "smoke-detector-mqtt", "bus": "local",
                     "address": f"{prefix}-sm9", "interval_s": 0.2}],
    }  # fmt: skip
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    async with listen(mosquitto.port, f"sensors/smoke/{prefix}-sm9/up") as heard:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridwatch.top.cli", "sim", "-c", str(tmp_path / "gw.yaml"),
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(30):
                while b"sim: publishing" not in (line := await proc.stderr.readline()):
                    assert line, "gridwatch sim exited before it published"
            await heard.wait_for(lambda h: len(h.messages) >= 2, 10)
        finally:
            proc.terminate()
            await proc.communicate()
    _topic, payload, _retained = heard.messages[0]
    assert set(payload) == {"data"} and set(payload["data"]) == {"alarm", "obscuration", "battery"}
