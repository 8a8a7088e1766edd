"""End to end: a water level crosses its line at a Modbus sensor and the city platform hears it.

Real mosquitto and VictoriaMetrics; the central platform as its own process (`gridwatch central
run`, as production runs it); the edge agent and a simulated Modbus field in this process.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridwatch.ground.contract import PlatformAlert, TelemetryBatch
from gridwatch.top.sim.modbus import SimField
from tests.conftest import ADMIN_TOKEN
from tests.fieldkit import Listener, gateway_config, listen, running
from tests.services import Mosquitto, Victoria, central_run, eventually


def get_json(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def central(mosquitto: Mosquitto, victoria: Victoria, prefix: str, tmp_path: Path) -> Iterator[str]:
    with central_run(mosquitto, victoria, prefix, tmp_path, start_within_s=20) as url:
        yield url


def platform(seen: Listener) -> list[PlatformAlert]:
    unique = {
        (p["alert_id"], p["state"]): p for t, p, _ in seen.messages if "/platform/alert/" in t
    }
    return [PlatformAlert.model_validate(p) for p in unique.values()]


async def test_flood_alert_reaches_the_city_platform_and_telemetry_the_store(
    central: str, mosquitto: Mosquitto, victoria: Victoria, prefix: str, tmp_path: Path
) -> None:
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix)
    gw = cfg.gateway.id
    started = int(time.time() * 1000)
    async with (
        SimField(devices, update_s=3600) as field,
        listen(mosquitto.port, f"{prefix}/#") as seen,
        running(cfg, devices),
    ):
        await field.set_value("wl-002", "level", 1.0)
        await field.set_value("wl-001", "level", 1.0)
        await seen.wait_for(lambda s: s.on("telemetry"))
        await field.set_value("wl-001", "level", 2.9)  # the rain arrives
        await seen.wait_for(lambda s: len(platform(s)) >= 1, within_s=20)
        await field.set_value("wl-001", "level", 2.4)  # inside the hysteresis band: still active
        await field.set_value("wl-001", "level", 1.1)
        await seen.wait_for(lambda s: any(a.state == "cleared" for a in platform(s)), within_s=20)
        await seen.wait_for(lambda s: len(s.on("telemetry")) >= 6)
        sent = {
            (r.ts, r.value)
            for p in seen.on("telemetry")
            for r in TelemetryBatch.model_validate(p).readings
            if r.device == "wl-001" and r.point == "level"
        }
        # the bridge writes the store, then the registry, then acknowledges: once the registry has
        # seen the newest reading, the store holds every one before it. Asked while the gateway
        # runs: stopped cleanly, it sends its Death and its devices read stale (issue 12)
        newest = max(ts for ts, _ in sent)
        devices_api = await eventually(
            lambda: get_json(f"{central}/api/v1/devices?gateway={gw}"),
            lambda ds: any(d["device"] == "wl-001" and (d["last_seen"] or 0) >= newest for d in ds),
        )
    alerts_api = await asyncio.to_thread(get_json, f"{central}/api/v1/alerts?state=all")

    # exactly one raise and one clear, on the district/category/severity topic
    got = platform(seen)
    assert [(a.state, a.device) for a in got] == [("raised", "wl-001"), ("cleared", "wl-001")]
    assert got[0].alert_id == got[1].alert_id and got[0].value == 2.9 and got[0].threshold == 2.5
    topics = {t for t, _, _ in seen.messages if "/platform/alert/" in t}
    assert topics == {f"{prefix}/platform/alert/310104/040401/major"}
    assert any(a["alert_id"] == got[0].alert_id for a in alerts_api)

    # the telemetry points are in VictoriaMetrics with the values and timestamps the edge read
    def stored_levels() -> set[tuple[int, float]]:
        match = f'gridwatch_value{{gateway="{gw}",device="wl-001",point="level"}}'
        return {
            (t, v)
            for s in victoria.export(match)
            for t, v in zip(s["timestamps"], s["values"], strict=True)
        }

    # VictoriaMetrics makes fresh samples searchable within a moment, not at once
    stored = await eventually(stored_levels, lambda got: sent <= got)
    assert sent
    assert {2.9, 1.1} <= {v for _, v in stored}

    # the registry knows when the device was last seen, and its last value
    wl1 = next(d for d in devices_api if d["device"] == "wl-001")
    assert wl1["last_seen"] >= started and wl1["status"] == "online"
    assert wl1["values"]["level"]["value"] == 1.1
    assert wl1["last_seen"] == newest
