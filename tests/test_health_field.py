"""Device health on a simulated field: Modbus and MQTT devices behind a real edge agent, a real
mosquitto, the bridge and the registry API in this process. A device goes offline (killed), one
goes silent (stops publishing), one reports a low battery: each shows up in ``gridwatch health``
with the right reason, and the time it took is checked against the device's interval."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from cloud_bridge import Bridge, SqliteSink
from device_registry import Changes, RegistryStore
from device_registry.delivery.runtime import Delivery
from device_registry.http.app import build_app, serving
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from drivers import DRIVERS
from drivers.health import CHANGES
from drivers.mqtt import MqttDriver
from edge.app import HEALTH_ON_CHANGE_S
from gridwatch.ground.contract import RECOVERED_POLLS, DeviceHealth, GatewayHealth, new_id
from gridwatch.ground.gatewayconf import GatewayConfig, ResolvedDevice, load_gateway
from gridwatch.top.sim import MqttField
from gridwatch.top.sim.modbus import SimField
from tests._central_helpers import birth, bridge_config, death, now_ms, running
from tests._drivers_helpers import Broker, Outcomes, gateway
from tests._ops_helpers import registry
from tests.fieldkit import CABINET, listen
from tests.fieldkit import running as edge_running
from tests.services import Mosquitto, free_port

INTERVAL_S = 1.0
LAST: list[Any] = []  # the last state seen, for the failure message
HEALTH_S = 0.5  # the gateway's health report period


def field_config(
    tmp: Path, broker: Mosquitto, prefix: str, push: bool = True
) -> tuple[GatewayConfig, list[ResolvedDevice]]:
    cfg = yaml.safe_load(CABINET.read_text())
    cfg["mqtt"].update({"port": broker.port, "prefix": prefix, "batch_linger_s": 0.05})
    cfg["outbox"]["path"] = str(tmp / "outbox.db")
    cfg["health_interval_s"] = HEALTH_S
    cfg["buses"][0].update({"port": free_port(), "timeout_s": 0.4})
    for d in cfg["devices"]:
        d["interval_s"] = INTERVAL_S
    if not push:
        path = tmp / "gateway.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return load_gateway(path)
    cfg["buses"].append({"type": "mqtt", "id": "local", "host": "127.0.0.1", "port": broker.port})
    cfg["devices"] += [
        {"id": f"sm-{i}", "profile": "smoke-detector-mqtt", "bus": "local",
         "address": f"{prefix}-sm{i}", "interval_s": INTERVAL_S, "location": {"grid": "310104014006001"}}
        for i in (1, 2)
    ]  # fmt: skip
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_gateway(path)


@dataclass
class Centre:
    url: str
    token: str

    async def health(self, http: aiohttp.ClientSession, query: str = "") -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with http.get(f"{self.url}/api/v1/health{query}", headers=headers) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "GRIDWATCH_TOKEN": self.token}
        return subprocess.run([sys.executable, "-m", "gridwatch.top.cli", "health", "--url", self.url,
                               *args], capture_output=True, text=True, env=env, timeout=30)  # fmt: skip


@asynccontextmanager
async def centre(tmp: Path, broker: Mosquitto, prefix: str) -> AsyncIterator[Centre]:
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp / 'registry.db'}")
    sink = await SqliteSink.open(tmp / "telemetry.db")
    token = (await issue(store, TokenRequest(name="crew-7", role=Role.MAINTENANCE), SYSTEM)).token
    app = build_app(store=store, delivery=Delivery(poll_s=0.2, history=sink.history))
    cfg = bridge_config("127.0.0.1", broker.port, prefix, tmp / "central")
    try:
        async with running(Bridge(cfg, store, sink)), serving(app, "127.0.0.1", 0) as url:
            yield Centre(url, token)
    finally:
        await sink.close()
        await store.close()


async def within(
    what: str, limit_s: float, check: Callable[[], Any], start: float | None = None
) -> float:
    """Seconds from ``start`` until ``check()`` (another component's state over HTTP) holds; fails
    past the limit. Polling with a deadline: the API has no event to wait on."""
    start = time.monotonic() if start is None else start
    while True:
        if await check():
            return time.monotonic() - start
        assert time.monotonic() - start < limit_s, f"{what}: not within {limit_s} s: {LAST}"
        await asyncio.sleep(0.05)


def device(report: dict[str, Any], dev_id: str) -> dict[str, Any]:
    return next(d for d in report["devices"] if d["device"] == dev_id)


async def test_offline_silent_and_low_battery_show_up_with_their_reasons(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices = field_config(tmp_path, mosquitto, prefix)
    modbus = [d for d in devices if d.bus.type == "modbus_tcp"]
    mqtt = [d for d in devices if d.bus.type == "mqtt"]
    async with (
        centre(tmp_path, mosquitto, prefix) as c,
        aiohttp.ClientSession() as http,
        SimField(modbus, update_s=3600) as field,
        MqttField(mqtt) as push,
        edge_running(cfg, devices),
    ):

        async def all_healthy() -> bool:
            h = await c.health(http)
            seen = all(d["last_seen"] for d in h["devices"])
            return len(h["devices"]) == 6 and seen and h["healthy"]

        await within("the field healthy", 20, all_healthy)
        ok = await asyncio.to_thread(c.cli, "--district", "310104")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        h = await c.health(http)
        assert {(d["device"], d["grid"], d["profile"]) for d in h["devices"]} >= {
            ("wl-002", "310104003019001", "water-level-ultrasonic"),
            ("sm-1", "310104014006001", "smoke-detector-mqtt"),
        }

        t0 = time.monotonic()
        field.kill("wl-002")
        push.kill("sm-2")
        await field.set_value("sd-001", "battery", 2.4)

        def reason(dev: str, text: str, status: str) -> Callable[[], Any]:
            async def check() -> bool:
                d = device(await c.health(http), dev)
                LAST[:] = [d]
                return d["status"] == status and any(text in r for r in d["reasons"])

            return check

        # all four watched at once, each timed from the moment of the faults and bounded by its
        # rule, in the device's expected interval (1 s): a failed read is seen at the next poll
        # (+ the 0.4 s bus timeout) and reported with the next health report (0.5 s); a push
        # device is stale at the edge after two intervals without data; the battery voltage comes
        # with the next reading
        slack = 1.0
        failing, offline, battery, silent = await asyncio.gather(
            within("wl-002 not answering", INTERVAL_S + 0.4 + HEALTH_S + slack,
                   reason("wl-002", "not answering", "offline"), t0),
            within("wl-002 three failures", 3 * INTERVAL_S + 0.4 + HEALTH_S + slack,
                   reason("wl-002", "3 consecutive failed reads", "offline"), t0),
            within("sd-001 battery", INTERVAL_S + slack,
                   reason("sd-001", "battery low: 2.4 V", "online"), t0),
            within("sm-2 silent", 2 * INTERVAL_S + HEALTH_S + slack,
                   reason("sm-2", "no data", "silent"), t0),
        )  # fmt: skip
        print(
            f"health latency: not answering {failing:.2f} s, offline (3 failures) {offline:.2f} s, "
            f"battery {battery:.2f} s, silent {silent:.2f} s (interval {INTERVAL_S} s)"
        )

        bad = await asyncio.to_thread(c.cli, "--district", "310104")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        out = bad.stdout
        assert "wl-002" in out and "offline" in out and "consecutive failed reads" in out
        assert "sm-2" in out and "silent" in out and "battery low: 2.4 V" in out
        assert "wl-001" not in out  # healthy devices are not listed without --all
        cell = await asyncio.to_thread(c.cli, "--grid", "310104003019001")
        assert cell.returncode == 1 and "wl-002" in cell.stdout and "sm-2" not in cell.stdout
        listed = await c.health(http)
        assert {d["device"] for d in listed["devices"][:3]} == {"wl-002", "sd-001", "sm-2"}
        assert all(d["healthy"] for d in listed["devices"][3:])  # unhealthy first
        gone = await asyncio.to_thread(Centre(f"http://127.0.0.1:{free_port()}", "x").cli)
        assert gone.returncode == 3 and "cannot be reached" in gone.stderr


async def test_a_bus_down_is_one_problem_naming_the_bus_and_its_address(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """The simulator behind the cabinet's Modbus TCP endpoint stops: one problem, the bus with
    its address as the edge logs it, its four devices listed under it; not four cards. Back, the
    bus problem goes and the devices' read success is told over the recent polls."""
    cfg, devices = field_config(tmp_path, mosquitto, prefix, push=False)
    bus = cfg.buses[0]
    address = f"{bus.host}:{bus.port}"  # type: ignore[union-attr]
    async with (
        centre(tmp_path, mosquitto, prefix) as c,
        aiohttp.ClientSession() as http,
        edge_running(cfg, devices),
    ):

        async def healthy() -> bool:
            h = await c.health(http)
            LAST[:] = [h["problems"], h["summary"]]
            return len(h["devices"]) == 4 and all(d["last_seen"] for d in h["devices"]) and (
                h["healthy"])  # fmt: skip

        async with SimField(devices, update_s=3600):
            await within("the field healthy", 20, healthy)
        t0 = time.monotonic()

        async def bus_down() -> bool:
            h = await c.health(http)
            LAST[:] = [h["problems"]]
            return [p["kind"] for p in h["problems"]] == ["bus"] and len(
                h["problems"][0]["devices"]) == 4  # fmt: skip

        took = await within("one bus problem", 3 * INTERVAL_S + HEALTH_S + 5, bus_down, t0)
        print(f"bus down seen as one problem after {took:.2f} s (interval {INTERVAL_S} s)")
        (p,) = (await c.health(http))["problems"]
        assert p["reason"] == (f"bus cabinet-tcp ({address}) on gateway gw-xuhui-01 unreachable: "
                               "its 4 devices are not answering")  # fmt: skip
        assert p["address"] == address and p["since"] is not None
        out = await asyncio.to_thread(c.cli)
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stdout.splitlines()
        head = next(i for i, line in enumerate(lines) if line.startswith("bus "))
        assert "unreachable" in lines[head]
        assert {line.split()[0] for line in lines[head + 1 : head + 5]} == {
            f"gw-xuhui-01:{d.id}" for d in devices
        }
        assert lines[-1] == "1 problem: 4 of 4 devices unhealthy; 0 of 1 gateways unhealthy"

        async with SimField(devices, update_s=3600):

            async def recovered() -> bool:
                h = await c.health(http)
                LAST[:] = [h["problems"]]
                kinds = {p["kind"] for p in h["problems"]}
                return "bus" not in kinds and all(d["consecutive_failures"] == 0 and
                                                  d["status"] == "online"
                                                  for d in h["devices"])  # fmt: skip

            await within("the bus back", 30 + 10, recovered)

            async def all_healthy() -> bool:
                h = await c.health(http)
                LAST[:] = [h["problems"]]
                return bool(h["healthy"])

            # the outage is still inside the window of recent polls, yet devices that answer in
            # a row again are healthy: not four "failing reads" problems for minutes
            await within("the devices healthy again", RECOVERED_POLLS * INTERVAL_S + 5,
                         all_healthy)  # fmt: skip
            h = await c.health(http)
            assert all(d["reasons"] == [] for d in h["devices"]), h["devices"]
            assert all(d["success_rate"] < 0.9 for d in h["devices"]), h["devices"]
            out = await asyncio.to_thread(c.cli)
            assert out.returncode == 0, out.stdout + out.stderr
            assert out.stdout.strip().endswith("healthy: 0 of 4 devices unhealthy; 0 of 1 "
                                               "gateways unhealthy")  # fmt: skip


async def test_a_bus_down_and_back_reaches_the_centre_at_once_not_at_the_next_period(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """With a 60 s report period, the edge still reports a bus going down and coming back at
    once: the centre sees each within a few seconds of the edge knowing it."""
    cfg, devices = field_config(tmp_path, mosquitto, prefix, push=False)
    cfg = cfg.model_copy(update={"health_interval_s": 60.0})
    bus_id = cfg.buses[0].id
    async with (
        centre(tmp_path, mosquitto, prefix) as c,
        aiohttp.ClientSession() as http,
        edge_running(cfg, devices) as agent,
    ):

        async def bus_is(up: bool) -> Callable[[], Any]:
            async def check() -> bool:
                h = await c.health(http)
                LAST[:] = [h["problems"], h["summary"]]
                down = [p for p in h["problems"] if p["kind"] == "bus"]
                return (not down and bool(h["healthy"])) if up else bool(down)

            return check

        async def edge_sees(up: bool) -> bool:
            return agent.drivers[bus_id].bus_health().up is up

        async with SimField(devices, update_s=3600):
            await within("the field healthy", 20, await bus_is(True))
        await within("the edge sees the bus down", 20, lambda: edge_sees(False))
        t0 = time.monotonic()
        took = await within("the centre sees the bus down", 5, await bus_is(False), t0)
        print(f"bus down at the centre {took:.2f} s after the edge knew (period 60 s)")
        async with SimField(devices, update_s=3600):
            await within("the edge sees the bus back", 40, lambda: edge_sees(True))
            t0 = time.monotonic()
            took = await within("the centre sees the bus back, its devices healthy",
                                RECOVERED_POLLS * INTERVAL_S + 5, await bus_is(True), t0)  # fmt: skip
            print(f"bus back and healthy at the centre {took:.2f} s after the edge knew")


async def test_gateway_states_retired_never_connected_and_silent(tmp_path: Path) -> None:
    """A retired gateway (and its devices) leaves health; one registered but never connected
    reads 'never connected'; one connected whose agent stopped reporting is silent; the summary
    counts devices and gateways apart; ``gridwatch health`` follows the problems."""
    async with registry(tmp_path) as reg:
        bus = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502}
        for gw in ("gw-old", "gw-new", "gw-quiet"):
            status, body = await reg.call("POST", "/api/v1/gateways", Role.INSTALLER,
                                          {"id": gw, "buses": [bus]})  # fmt: skip
            assert status == 201, body
        now = now_ms()
        long_ago = now - 124_000
        report = GatewayHealth(id=new_id(), gateway="gw-quiet", seq=1, session=1, ts=long_ago,
                               interval_s=30, devices=[DeviceHealth(device="q1", online=True)])  # fmt: skip
        await reg.store.apply(Changes(now=long_ago, status=[birth("gw-quiet", 1, ["q1"])],
                                      health=[report]))  # fmt: skip
        await reg.store.apply(Changes(now=now, status=[birth("gw-old", 1, ["d1", "d2"])]))
        await reg.store.apply(Changes(now=now, status=[death("gw-old", 1)]))

        async def health() -> dict[str, Any]:
            status, body = await reg.call("GET", "/api/v1/health", Role.MAINTENANCE)
            assert status == 200, body
            return body

        h = await health()
        gws = {g["id"]: (g["status"], g["reasons"]) for g in h["gateways"]}
        assert gws["gw-new"] == ("never_connected", ["never connected"])
        assert gws["gw-old"] == ("offline", ["offline (death message)"])
        assert gws["gw-quiet"][0] == "silent"
        assert gws["gw-quiet"][1] == ["connected, but no health report for 124 s (expected every "
                                      "30 s)"]  # fmt: skip
        problems = {p["id"]: p["reason"] for p in h["problems"]}
        assert (
            problems["gw-old"] == "gateway gw-old offline (death message): its 2 devices are stale"
        )
        assert problems["gw-new"] == "gateway gw-new never connected"
        assert len(h["problems"]) == 3  # not one per device
        # q1 has no interval known (a bare birth): its gateway's silence is the finding
        assert h["summary"] == {"devices": 3, "devices_unhealthy": 2, "gateways": 3,
                                "gateways_unhealthy": 3, "devices_unknown": 0,
                                "gateways_unknown": 0}  # fmt: skip

        for gw in ("gw-old", "gw-new", "gw-quiet"):
            status, body = await reg.call("POST", f"/api/v1/gateways/{gw}/retire", Role.INSTALLER)
            assert status == 200, body
        h = await health()
        assert h["gateways"] == [] and h["devices"] == [] and h["problems"] == []
        assert h["healthy"] and h["summary"]["gateways"] == 0
        env = {**os.environ, "GRIDWATCH_TOKEN": reg.tokens[Role.MAINTENANCE]}
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gridwatch.top.cli",
                                      "health", "--url", reg.url], capture_output=True, text=True,
                                      env=env, timeout=30)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().endswith("healthy: 0 of 0 devices unhealthy; 0 of 0 gateways "
                                           "unhealthy")  # fmt: skip


async def test_a_sensor_broker_that_crashes_is_a_bus_down_until_it_is_back(tmp_path: Path) -> None:
    """The MQTT sensor broker is SIGKILLed (a crash, not a stop): the driver's bus state, which
    goes into the gateway's health report, says the bus is down with its address; the broker
    back on the same port, the bus is up again."""
    broker = Broker(tmp_path).start()
    bus = {"type": "mqtt", "id": "local", "host": "127.0.0.1", "port": broker.port}
    devices = gateway([bus], [{"id": "sm-1", "profile": "smoke-detector-mqtt", "bus": "local"}])
    driver = DRIVERS["mqtt"](devices[0].bus, devices)
    assert isinstance(driver, MqttDriver)
    task = asyncio.create_task(driver.run(Outcomes()))
    try:
        async with asyncio.timeout(10):
            await driver.ready.wait()
        assert driver.bus_health().up
        assert broker.proc is not None
        broker.proc.kill()
        broker.proc.wait(10)
        broker.proc = None

        async def bus_down() -> bool:  # the driver has no event for a loss: poll, bounded
            return not driver.bus_health().up

        await within("the bus down", 15, bus_down)
        down = driver.bus_health()
        assert down.error == f"sensor broker 127.0.0.1:{broker.port} unreachable"
        assert down.address == f"127.0.0.1:{broker.port}" and down.devices == ["sm-1"]
        assert down.down_since is not None and down.type == "mqtt"
        broker.start()  # the same port
        async with asyncio.timeout(30):
            await driver.ready.wait()
        assert driver.bus_health().up and driver.bus_health().down_since is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        broker.stop()


async def test_a_flapping_field_makes_at_most_one_extra_report_every_2_s(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """A storm of changes (a flapping bus, many devices failing one after another) does not
    flood the uplink: at most one extra health report every ``HEALTH_ON_CHANGE_S``."""
    cfg, devices = field_config(tmp_path, mosquitto, prefix, push=False)
    cfg = cfg.model_copy(update={"health_interval_s": 3600.0})
    async with (
        listen(mosquitto.port, f"{prefix}/gw/+/health") as heard,
        edge_running(cfg, devices),
    ):
        await heard.wait_for(lambda h: len(h.on("health")) >= 1)
        before = len(heard.on("health"))
        start = time.monotonic()
        while time.monotonic() - start < 2 * HEALTH_ON_CHANGE_S + 0.5:
            CHANGES.changed()
            await asyncio.sleep(0.05)  # the storm's pace: 20 changes a second
        await heard.wait_for(lambda h: len(h.on("health")) > before)
        sent = len(heard.on("health")) - before
        assert 1 <= sent <= 3, sent  # 4.5 s: one at once, then at +2 s and +4 s at the most
