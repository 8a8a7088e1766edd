"""Overload: a bus that cannot keep up sheds polls visibly and boundedly, and the other buses
keep their interval. The whole edge agent runs, against simulated devices and a real broker."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from drivers.modbus import ModbusDriver
from edge.app import EdgeAgent
from gridwatch.ground.contract import GatewayHealth, TelemetryBatch
from gridwatch.ground.gatewayconf import load_gateway
from gridwatch.top.sim import SimField
from tests._drivers_helpers import free_port
from tests.fieldkit import Listener, listen
from tests.fieldkit import agent_running as running
from tests.services import Mosquitto

SLOW_INTERVAL, SLOW_DELAY, SLOW_DEVICES = 0.4, 0.25, 4  # demand 10 polls/s, room for 4
FAST_INTERVAL = 0.3


def config(tmp_path: Path, mqtt_port: int, prefix: str) -> Path:
    slow, fast = free_port(), free_port()
    wl = "water-level-ultrasonic"
    cfg: dict[str, Any] = {
        "gateway": {"id": "gw-overload"},
        "mqtt": {"port": mqtt_port, "prefix": prefix, "batch_linger_s": 0.05},
        "outbox": {"path": str(tmp_path / "outbox.db")},
        "health_interval_s": 0.5,
        "buses": [
            {"type": "modbus_tcp", "id": "slow", "host": "127.0.0.1", "port": slow,
             "timeout_s": 0.35, "max_concurrency": 1},
            {"type": "modbus_tcp", "id": "fast", "host": "127.0.0.1", "port": fast,
             "timeout_s": 0.2, "max_concurrency": 1},
        ],
        "devices": [
            *({"id": f"slow-{u}", "profile": wl, "bus": "slow", "unit_id": u,
               "interval_s": SLOW_INTERVAL} for u in range(1, SLOW_DEVICES + 1)),
            *({"id": f"fast-{u}", "profile": wl, "bus": "fast", "unit_id": u,
               "interval_s": FAST_INTERVAL} for u in (1, 2)),
        ],
    }  # fmt: skip
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def latest_health(seen: Listener) -> GatewayHealth | None:
    reports = seen.on("health")
    return GatewayHealth.model_validate(reports[-1]) if reports else None


def skipped(seen: Listener, prefix: str) -> int:
    health = latest_health(seen)
    if health is None:
        return 0
    return sum(d.polls_skipped for d in health.devices if d.device.startswith(prefix))


async def test_an_overloaded_bus_sheds_polls_the_others_keep_time(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices = load_gateway(config(tmp_path, mosquitto.port, prefix))
    async with SimField(devices) as field, listen(mosquitto.port, f"{prefix}/#") as seen:
        for d in devices:
            if d.bus.id == "slow":
                field.slow(d.id, SLOW_DELAY)
        agent = EdgeAgent(cfg, devices)
        started = time.time()
        async with running(agent):
            await seen.wait_for(lambda s: skipped(s, "slow-") >= 4 * SLOW_DEVICES, 20)
            slow_bus = agent.drivers["slow"]
            fast_bus = agent.drivers["fast"]
            assert isinstance(slow_bus, ModbusDriver) and isinstance(fast_bus, ModbusDriver)
            buffered = len(agent.pipeline.buffer)
            depth = agent.outbox.depth
    health = latest_health(seen)
    assert health is not None
    by_device = {d.device: d for d in health.devices}
    elapsed = health.ts / 1000 - started

    # the slow bus: polls skipped and counted, never queued
    assert slow_bus.transport.peak_waiting <= SLOW_DEVICES - 1  # one waiter per device at most
    for u in range(1, SLOW_DEVICES + 1):
        h = by_device[f"slow-{u}"]
        assert h.polls_skipped > 0 and h.reads_failed == 0
        accounted = h.reads_ok + h.polls_skipped  # every tick was polled or skipped...
        # ...up to the poll under way (waiting for the bus, then reading), whose ticks are
        # counted when it ends
        assert elapsed / SLOW_INTERVAL - 5 <= accounted <= elapsed / SLOW_INTERVAL + 1, h
    served = sum(by_device[f"slow-{u}"].reads_ok for u in range(1, SLOW_DEVICES + 1))
    assert served <= elapsed / SLOW_DELAY + 1  # the bus served at its pace, no faster

    # nothing grows behind the slow bus either
    assert buffered <= cfg.mqtt.batch_max and depth <= 50

    # the fast bus keeps its interval
    assert all(by_device[f"fast-{u}"].polls_skipped == 0 for u in (1, 2))
    times: dict[str, set[int]] = defaultdict(set)
    for payload in seen.on("telemetry"):
        for r in TelemetryBatch.model_validate(payload).readings:
            if r.device.startswith("fast-"):
                times[r.device].add(r.ts)
    for device, stamps in times.items():
        gaps = [(b - a) / 1000 for a, b in zip(sorted(stamps), sorted(stamps)[1:], strict=False)]
        assert len(gaps) >= 8, device
        assert abs(statistics.mean(gaps) - FAST_INTERVAL) <= 0.03, (device, gaps)
        assert max(gaps) <= FAST_INTERVAL + 0.15, (device, gaps)
