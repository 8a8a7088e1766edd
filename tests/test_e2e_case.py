"""End to end, the case of issue 13: ponding on 漕溪北路 becomes a case of the city's workflow and
is closed by its own sensor (自动核查).

A ponding-depth gauge (Modbus) under a storm-water inlet on 漕溪北路 (grid cell 310104014024001,
area class A), attached to the inlet's cover, a city component (0103 雨水井盖). The water rises
past the catalogue's filing condition (0406 road waterlogging: over 15 cm held 5 minutes) -> the
centre files a case with event class 0406, the cover's 16-digit id and the drainage department
-> dispatches it -> the department reports disposal over the API -> the water stays below the
line for the verification window -> the sensor verifies -> the centre closes. In the variant the
water comes back during the window -> the case is re-dispatched. Every step is read off the MQTT
platform topic, as a city platform would.

Real mosquitto and VictoriaMetrics; the central platform as its own process (`gridwatch central
run`) under a drill (`--escalation-scale`: every time of the workflow shortened the same way);
the edge agent and the simulated Modbus gauge in this process.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_registry.alerts.operations import Policy
from gridwatch.ground.contract import PlatformLifecycle
from gridwatch.ground.gatewayconf import GatewayConfig, ResolvedDevice, load_gateway
from gridwatch.top.sim.modbus import SimField
from tests.conftest import ADMIN_TOKEN
from tests.fieldkit import Listener, listen, running
from tests.services import Mosquitto, Victoria, central_run, free_port

DISTRICT, STREET, CELL = "310104", "310104014", "310104014024001"  # 徐家汇街道, 漕溪北路: area A
COVER = "3101040103000017"  # 310104 + 0103 雨水井盖 (storm-water cover) + serial
PONDING = Policy().catalogue.lookup("0406", DISTRICT)
assert PONDING is not None and PONDING.closure.verify_window_s
WINDOW_S = 6.0
"""The verification window in this drill (the catalogue's is half an hour)."""
SCALE = WINDOW_S / PONDING.closure.verify_window_s
DRY, WET = -0.40, 0.22  # metres against the road surface: down the shaft, 22 cm on the road


def call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def central(mosquitto: Mosquitto, victoria: Victoria, prefix: str, tmp_path: Path) -> Iterator[str]:
    # a generous start deadline: the machine the suite runs on may be busy
    with central_run(mosquitto, victoria, prefix, tmp_path,
                     "--escalation-scale", f"{SCALE:.6f}") as url:  # fmt: skip
        yield url


def inlet_gateway(
    tmp_path: Path, mqtt_port: int, prefix: str
) -> tuple[GatewayConfig, list[ResolvedDevice]]:
    """A street cabinet on 漕溪北路 with one ponding-depth gauge, on this test's ports."""
    where = {"district": DISTRICT, "street": STREET, "grid": CELL}
    cfg = {
        "version": 1,
        "gateway": {"id": "gw-xh-01", "location": where},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "prefix": prefix, "batch_linger_s": 0.05},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "health_interval_s": 3600,
        "buses": [{"type": "modbus_tcp", "id": "cabinet-tcp", "host": "127.0.0.1",
                   "port": free_port(), "timeout_s": 0.4}],
        "devices": [{"id": "pd-001", "profile": "ponding-depth", "bus": "cabinet-tcp",
                     "unit_id": 1, "interval_s": 0.5, "location": where}],
    }  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return load_gateway(path)


def steps(seen: Listener) -> list[PlatformLifecycle]:
    return [PlatformLifecycle.model_validate(p) for t, p, _ in seen.messages
            if "/platform/lifecycle/" in t]  # fmt: skip


def step(seen: Listener, action: str, nth: int = 1) -> PlatformLifecycle | None:
    done = [s for s in steps(seen) if s.action == action]
    return done[nth - 1] if len(done) >= nth else None


def register(central: str, cfg: GatewayConfig) -> None:
    """The installer registers the cabinet's gateway (its bus as the gauge is wired) and the
    gauge, attached to the cover it sits under, before it is switched on."""
    bus = cfg.buses[0].model_dump(mode="json", exclude_none=True)
    where = cfg.gateway.location.model_dump(mode="json", exclude_none=True)
    call(f"{central}/api/v1/gateways", "POST",
         {"id": cfg.gateway.id, "location": where, "buses": [bus]})  # fmt: skip
    dev = call(f"{central}/api/v1/devices", "POST", {
        "gateway": cfg.gateway.id, "id": "pd-001", "profile": "ponding-depth",
        "bus": "cabinet-tcp", "unit_id": 1, "location": where, "component_id": COVER,
        "dept_competent": {"code": "310104SW", "name": "徐汇区水务局"},
        "dept_maintainer": {"code": "310104PS01", "name": "徐汇区排水管理所"}})  # fmt: skip
    assert dev["component_id"] == COVER


async def flood_and_dispatch(
    central: str, field: SimField, seen: Listener, gw: str
) -> PlatformLifecycle:
    """The gauge reports, the water rises: the centre files and dispatches a case. Returns the
    dispatch as the platform heard it."""
    await field.set_value("pd-001", "water_depth", DRY)
    await seen.wait_for(lambda s: s.on("telemetry"))
    await field.set_value("pd-001", "water_depth", WET)  # the storm arrives
    await seen.wait_for(lambda s: step(s, "dispatch") is not None, within_s=30)
    dispatched = step(seen, "dispatch")
    assert dispatched is not None
    return dispatched


async def test_ponding_is_filed_dispatched_disposed_verified_by_its_sensor_and_closed(
    central: str, mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices = inlet_gateway(tmp_path, mosquitto.port, prefix)
    gw = cfg.gateway.id
    await asyncio.to_thread(register, central, cfg)
    async with (
        SimField(devices, update_s=3600) as field,
        listen(mosquitto.port, f"{prefix}/#") as seen,
        running(cfg, devices),
    ):
        dispatched = await flood_and_dispatch(central, field, seen, gw)
        alert_id = dispatched.alert_id
        await field.set_value("pd-001", "water_depth", DRY)  # the crew clears the inlet
        disposed = await asyncio.to_thread(call, f"{central}/api/v1/alerts/{alert_id}/dispose",
                                           "POST", {"note": "排水所三班已疏通雨水口"})  # fmt: skip
        assert disposed["stage"] == "disposed"
        await seen.wait_for(lambda s: step(s, "close") is not None, within_s=WINDOW_S + 30)
        case = await asyncio.to_thread(call, f"{central}/api/v1/alerts/{alert_id}")

    got = steps(seen)
    admin = "admin (from environment)"  # the token this test acts with, by its name
    assert [(s.action, s.stage, s.actor) for s in got] == [
        ("open", "reported", "centre"),
        ("file", "filed", "centre"),
        ("dispatch", "dispatched", "centre"),
        ("dispose", "disposed", admin),
        ("verify", "verified", "sensor"),
        ("close", "closed", "centre"),
    ]
    # the case as the city's platform sees it at every step: the event class, the cover, the
    # drainage department, the core area's time limit
    for s in got:
        assert (s.category, s.class_code, s.component_id, s.area_class) == (
            "0406", "0406", COVER, "A",
        ), s  # fmt: skip
    assert dispatched.department is not None
    assert dispatched.department.model_dump() == PONDING.department.model_dump()
    assert "排水" in dispatched.department.zh
    assert dispatched.time_limit_min == PONDING.limit_min("A")
    opened, filed = got[0], got[1]
    assert filed.ts - opened.ts >= 0 and filed.note.startswith("filed by the centre")
    topics = {t.removeprefix(prefix) for t, _, _ in seen.messages if "/platform/lifecycle/" in t}
    assert topics == {f"/platform/lifecycle/{DISTRICT}/0406/major"}
    # the sensor verified only after the water had stayed below the line for the whole window
    cleared = [
        p for t, p, _ in seen.messages if "/platform/alert/" in t and p["state"] == "cleared"
    ]
    verified = got[4]
    assert cleared and verified.ts - max(cleared[0]["ts"], got[3].ts) >= WINDOW_S * 1000
    assert "stayed clear" in verified.note
    # and the registry's view of the case agrees, with every step's who and when
    assert (case["stage"], case["stage_zh"], case["verified_by"], case["closed_by"]) == (
        "closed", "结案", "sensor", "centre",
    )  # fmt: skip
    assert case["component_id"] == COVER and case["department"]["code"] == PONDING.department.code
    assert [a["action"] for a in case["actions"]] == [
        "file", "dispatch", "dispose", "verify", "close",
    ]  # fmt: skip


async def test_ponding_back_during_the_window_re_dispatches_the_case(
    central: str, mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices = inlet_gateway(tmp_path, mosquitto.port, prefix)
    gw = cfg.gateway.id
    await asyncio.to_thread(register, central, cfg)
    async with (
        SimField(devices, update_s=3600) as field,
        listen(mosquitto.port, f"{prefix}/#") as seen,
        running(cfg, devices),
    ):
        dispatched = await flood_and_dispatch(central, field, seen, gw)
        alert_id = dispatched.alert_id
        await field.set_value("pd-001", "water_depth", DRY)
        await asyncio.to_thread(call, f"{central}/api/v1/alerts/{alert_id}/dispose", "POST",
                                {"note": "pump ran"})  # fmt: skip
        await seen.wait_for(lambda s: any(
            "/platform/alert/" in t and p["state"] == "cleared" for t, p, _ in s.messages))  # fmt: skip
        await field.set_value("pd-001", "water_depth", WET)  # the rain comes back in the window
        await seen.wait_for(lambda s: step(s, "reject") is not None, within_s=30)
        case = await asyncio.to_thread(call, f"{central}/api/v1/alerts/{alert_id}")

    rejected = step(seen, "reject")
    assert rejected is not None and rejected.alert_id == alert_id
    assert (rejected.stage, rejected.actor, rejected.dispatch_count) == ("dispatched", "sensor", 2)
    assert rejected.note.startswith("re-dispatched: the sensor reports the condition again")
    assert rejected.department == dispatched.department and rejected.component_id == COVER
    assert rejected.due_at is not None and rejected.due_at > (dispatched.due_at or 0)
    assert step(seen, "verify") is None and step(seen, "close") is None
    # the water's return is its own alert, in the case's incident, not a second case
    reraised = [s for s in steps(seen) if s.action == "open" and s.alert_id != alert_id]
    assert [s.incident_id for s in reraised] == [dispatched.incident_id]
    assert not [s for s in steps(seen) if s.action == "file" and s.alert_id != alert_id]
    assert (case["stage"], case["dispatch_count"]) == ("dispatched", 2)
