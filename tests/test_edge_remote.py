"""Configuration pushes and commands, down the tree to a running edge agent."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from gridwatch.ground.contract import Command, ConfigPush, Topics
from gridwatch.top.sim.modbus import SimField
from tests.fieldkit import gateway_config, listen, running
from tests.services import Mosquitto


async def push(port: int, topic: str, message: ConfigPush | Command, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.publish(topic, message.model_dump_json(), qos=1, retain=retain)


def readings_of(seen: Any, device: str) -> list[dict[str, Any]]:
    return [r for b in seen.on("telemetry") for r in b["readings"] if r["device"] == device]


def polls_of(seen: Any, device: str) -> int:
    return len({r["ts"] for r in readings_of(seen, device)})


async def test_config_push_is_applied_without_restart_and_acknowledged(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices, path = gateway_config(tmp_path, mosquitto.port, prefix)
    doc = yaml.safe_load(path.read_text())
    topics = Topics(prefix)
    gw = cfg.gateway.id
    async with (
        SimField(devices, update_s=3600) as field,
        listen(mosquitto.port, f"{prefix}/#") as seen,
    ):
        await field.set_value("wl-002", "level", 2.0)
        async with running(cfg, devices) as agent:
            await seen.wait_for(lambda s: s.on("telemetry"))
            # v2: wl-002's warning line lowered to 1.5 m, sd-002 removed
            doc["devices"] = [d for d in doc["devices"] if d["id"] != "sd-002"]
            wl2 = next(d for d in doc["devices"] if d["id"] == "wl-002")
            wl2["rules"] = [
                {
                    "id": "level_high",
                    "kind": "threshold",
                    "point": "level",
                    "above": 1.5,
                    "hysteresis": 0.1,
                    "category": "040401",
                }
            ]
            await push(
                mosquitto.port,
                topics.config(gw),
                ConfigPush(gateway=gw, version=2, config=doc, ts=0),
                retain=True,
            )
            await seen.wait_for(lambda s: s.on("config/ack") and s.on("alert"))
            ack = seen.on("config/ack")[0]
            assert ack["version"] == 2 and ack["accepted"] and ack["errors"] == []
            assert seen.on("alert")[0]["device"] == "wl-002"  # the new rule judges the old value
            assert "sd-002" not in agent.pipeline.devices
            # a broken v3 is rejected with the reason; v2 keeps running
            bad = {
                **doc,
                "devices": [
                    *doc["devices"],
                    {"id": "x", "profile": "no-such", "bus": "cabinet-tcp"},
                ],
            }
            await push(
                mosquitto.port,
                topics.config(gw),
                ConfigPush(gateway=gw, version=3, config=bad, ts=0),
                retain=True,
            )
            await seen.wait_for(lambda s: len(s.on("config/ack")) >= 2)
        rejected = seen.on("config/ack")[-1]
        assert rejected["version"] == 3 and not rejected["accepted"]
        assert rejected["errors"] == ["devices -> 3 -> profile: unknown profile (got 'no-such')"]
        # a restart comes back with the pushed v2 (stored beside the outbox), not the file's v1
        async with running(cfg, devices) as again:
            assert again.cfg.version == 2 and "sd-002" not in again.pipeline.devices


async def test_command_runs_on_the_device_and_its_result_comes_back(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix)
    topics = Topics(prefix)
    gw = cfg.gateway.id
    async with (
        SimField(devices, update_s=3600),
        listen(mosquitto.port, f"{prefix}/#") as seen,
        running(cfg, devices),
    ):
        await seen.wait_for(lambda s: s.on("status"))
        # a command that waited too long (the gateway was offline) is answered, not run
        late_id = uuid.uuid4().hex
        await push(mosquitto.port, topics.command(gw),
                   Command(id=late_id, device="sd-001", point="sounder", value=True, ts=0,
                           expires_at=1))  # fmt: skip
        await seen.wait_for(lambda s: len(s.on("cmd/result")) >= 1)
        polled = polls_of(seen, "sd-001")
        await seen.wait_for(lambda s: polls_of(s, "sd-001") >= polled + 2)
        assert not any(r["point"] == "sounder" and r["value"] is True
                       for r in readings_of(seen, "sd-001"))  # fmt: skip
        ok_id, bad_id = uuid.uuid4().hex, uuid.uuid4().hex
        await push(
            mosquitto.port,
            topics.command(gw),
            Command(id=ok_id, device="sd-001", point="sounder", value=True, ts=0),
        )
        await push(
            mosquitto.port,
            topics.command(gw),
            Command(id=bad_id, device="sd-001", point="obscuration", value=1, ts=0),
        )
        await seen.wait_for(lambda s: len(s.on("cmd/result")) >= 3)
        await seen.wait_for(
            lambda s: any(
                r["point"] == "sounder" and r["value"] is True for r in readings_of(s, "sd-001")
            )
        )
    results = {r["id"]: r for r in seen.on("cmd/result")}
    assert results[late_id]["ok"] is False and results[late_id]["expired"] is True
    assert results[ok_id]["ok"] is True and results[ok_id]["expired"] is False
    assert results[bad_id]["ok"] is False and "obscuration" in results[bad_id]["error"]
    assert json.dumps(results)  # plain JSON for the platform


async def test_a_cleared_config_says_once_that_the_gateway_was_retired(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The registry clears the retained config when it retires a gateway: the edge reads that
    as retired, in one WARNING that says what to do, never as an unreadable push (ERROR)."""
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix)
    gw, topic = cfg.gateway.id, Topics(prefix).config(cfg.gateway.id)
    caplog.set_level(logging.INFO, logger="edge")

    def retired() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "was retired at the centre" in r.getMessage()]

    said = asyncio.Event()
    handler = logging.Handler()
    handler.emit = lambda record: said.set() if "was retired" in record.getMessage() else None  # type: ignore[method-assign]
    logging.getLogger("edge.remote").addHandler(handler)
    async with SimField(devices, update_s=3600), running(cfg, devices) as agent:
        await agent.uplink.mqtt.watch.until(lambda: agent.uplink.mqtt.state.connected, 10)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
            await c.publish(topic, b"", qos=1, retain=True)  # what `gateway retire` sends
        try:
            await asyncio.wait_for(said.wait(), 10)
        finally:
            logging.getLogger("edge.remote").removeHandler(handler)
        await agent.remote.handle("config", b"")  # cleared again (a resubscribe): no repeat
        assert agent.remote.current.version == cfg.version
    [warning] = retired()
    assert warning.levelno == logging.WARNING
    assert f"register it again (gridwatch gateway add {gw})" in warning.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and "edge" in r.name]
